"""Output files: written atomically with normal permissions, never replacing a file that appeared under
no-overwrite, through symbolic links, cleaned up on SIGTERM/SIGHUP and on a full disk."""

import contextlib
import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import audioldm_tiled.audio as audio_module
import audioldm_tiled.files as files
from audioldm_tiled import save_wav
from audioldm_tiled.audio import open_wav
from audioldm_tiled.cli import main
from audioldm_tiled.files import OutputError, atomic_file
from conftest import child_process

TONE = np.full(1000, 0.25, dtype=np.float32)


def _litter(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".part")]


@pytest.fixture()
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path, umask_027):
    fresh = save_wav(tmp_path / "fresh.wav", TONE)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640
    kept = tmp_path / "kept.wav"
    kept.write_bytes(b"old")
    kept.chmod(0o604)
    save_wav(kept, TONE)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o604 and sf.info(kept).frames == 1000


def test_a_symlink_is_written_through(tmp_path):
    real, link = tmp_path / "real.wav", tmp_path / "link.wav"
    real.write_bytes(b"old")
    link.symlink_to(real)
    save_wav(link, TONE)
    assert link.is_symlink() and sf.info(real).frames == 1000


def test_no_overwrite_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    target = tmp_path / "late.wav"
    with pytest.raises(OutputError, match="appeared while rendering"):
        with open_wav(target, overwrite=False) as writer:
            writer.write(TONE)
            target.write_text("precious")  # another process wins the race
    assert target.read_text() == "precious" and _litter(tmp_path) == []


def test_a_failed_write_leaves_the_existing_file_and_no_litter(tmp_path):
    target = tmp_path / "keep.wav"
    target.write_text("precious")
    with pytest.raises(RuntimeError):
        with open_wav(target) as writer:
            writer.write(TONE)
            raise RuntimeError("the render failed")
    assert target.read_text() == "precious" and _litter(tmp_path) == []


def test_stale_parts_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.wav.{dead.stdout.strip()}.0123abcd.part"
    mine = tmp_path / f".out.wav.{os.getpid()}.0123abcd.part"  # a live process's (this one's): kept
    other = tmp_path / f".other.wav.{dead.stdout.strip()}.0123abcd.part"  # another target's: kept
    for path in (stale, mine, other):
        path.write_bytes(b"RIFF")
    save_wav(tmp_path / "out.wav", TONE)
    assert not stale.exists() and mine.exists() and other.exists()


@contextlib.contextmanager
def _full_disk(tmp_path: Path, monkeypatch, how: str):
    """A folder whose disk fills after about 64 kB, as libsndfile or the OS reports it.

    "libsndfile": a real 64 kB tmpfs where the test may mount one (root); elsewhere libsndfile's own report of a
    failed write ("System error.", code 2) on a disk with no space left, simulated. "oserror": the writer fails
    with ENOSPC past 16 000 samples, as the operating system's write would.
    """
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = how == "libsndfile" and os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode == 0
    real_write = audio_module.WavWriter.write

    def write(self, block):
        if self.frames + len(block) > 16_000:
            if how == "oserror":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise sf.LibsndfileError(2, "Error writing: ")
        real_write(self, block)

    if not mounted:
        monkeypatch.setattr(audio_module.WavWriter, "write", write)
        if how == "libsndfile":
            monkeypatch.setattr(audio_module.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 0})())
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("how", ["libsndfile", "oserror"])
def test_a_full_disk_is_reported_by_name_and_cleaned_up(tmp_path, monkeypatch, how):
    with _full_disk(tmp_path, monkeypatch, how) as folder:
        target = folder / "keep.wav"
        target.write_text("precious")
        with pytest.raises(OutputError, match="no space left on device") as raised:
            with open_wav(target) as writer:
                for _ in range(100):
                    writer.write(np.zeros(16000, dtype=np.float32))
        assert str(target) in str(raised.value)
        assert target.read_text() == "precious" and _litter(folder) == []


def test_the_cli_refuses_a_render_the_disk_cannot_hold_before_loading_a_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: type("U", (), {"free": 50_000})())
    assert main(["x", "-o", str(tmp_path / "a.wav"), "--seconds", "10", "--model", "no/such-model"]) == 1
    assert "no space left on device" in capsys.readouterr().err and not (tmp_path / "a.wav").exists()


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_a_file_sink_failing_while_it_opens_leaves_the_existing_file(tmp_path, monkeypatch, failure):
    """A signal (or an error) after the temporary file is made but before the sink is open: the temporary file
    goes, the file it would have replaced stays."""
    import audioldm_tiled.sinks as sinks

    target = tmp_path / "out.flac"
    target.write_text("precious")

    def failing(*args, **kwargs):
        raise failure("arrived while the file opened")

    monkeypatch.setattr(sinks.sf, "SoundFile", failing)
    sink = sinks.FileSink(target)
    with pytest.raises(failure):
        sink.open(16000, 1, {"prompt": "rain"})
    assert target.read_text() == "precious" and _litter(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_clean_up_like_ctrl_c(tmp_path, sig):
    target = tmp_path / "out.wav"
    target.write_text("precious")
    with child_process([sys.executable, "-m", "audioldm_tiled", "x", "--model", "random:tiny", "--steps", "50",
                        "--seconds", "20", "--quiet", "-o", str(target)], stderr=subprocess.PIPE, text=True) as child:
        deadline = time.monotonic() + 120
        while not _litter(tmp_path) and time.monotonic() < deadline:  # the .part file exists: writing has begun
            time.sleep(0.1)
        assert _litter(tmp_path), "the render never started writing"
        child.send_signal(sig)
        _, err = child.communicate(timeout=120)
    assert child.returncode == 128 + sig and "no output was written" in err
    assert target.read_text() == "precious" and _litter(tmp_path) == []


def test_atomic_file_serves_any_writer(tmp_path):
    with atomic_file(tmp_path / "notes.txt") as tmp:
        tmp.write_text("done")
    assert (tmp_path / "notes.txt").read_text() == "done" and _litter(tmp_path) == []


def test_a_folder_removed_while_writing_is_named(tmp_path):
    import shutil

    from audioldm_tiled.files import OutputError

    folder = tmp_path / "renders"
    folder.mkdir()
    with pytest.raises(OutputError, match=r"the folder of '.*renders/a.wav' was removed while writing it"):
        with atomic_file(folder / "a.wav") as part:
            part.write_bytes(b"audio")
            shutil.rmtree(folder)
