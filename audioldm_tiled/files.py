"""Output files written atomically: every file the library and the command line write goes through ``atomic_file``.

The content goes into a hidden temporary file beside the target, ``.NAME.PID.RANDOM.part`` (with a hash of NAME in
its place where the whole would be longer than the filesystem allows), which takes the mode a new file would get
under the umask (or the mode of the file it replaces). Only when the writing has succeeded is it
moved onto the target: with ``overwrite=False`` by a hard link, which fails if a file has appeared there meanwhile,
so two renders racing for one name cannot both win. A failed, interrupted or refused write removes the temporary
file and leaves an existing target as it was. A symbolic link as target is written through: the file it points to
is replaced, and the link stays.

A process killed with SIGKILL cannot clean up; its ``.part`` file stays. The next write to the same target removes
the ``.part`` files whose process no longer runs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path


class OutputError(OSError):
    """An output file could not be written; the message names the path and why."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def check_output_path(path: str | os.PathLike, overwrite: bool = True, suffix: str | None = ".wav",
                      size: int | None = None) -> Path:
    """Fail now, not after a long render, if ``path`` cannot be written.

    Args:
        path: the file to write.
        overwrite: with False an existing file is an error.
        suffix: the suffix the path must have (case-insensitive), or None for any.
        size: bytes the file will take, when known: refused if its filesystem has less free space.
    """
    path = Path(path)
    if suffix is not None and path.suffix.lower() != suffix:
        raise ValueError(f"output path must end in {suffix}, got {str(path)!r}")
    problem = name_problem(path)
    if problem:
        raise ValueError(problem)
    if path.is_dir():
        raise ValueError(f"output path {str(path)!r} is a directory")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise ValueError(f"output path {str(path)!r} exists, and overwriting was refused (overwrite=False, CLI "
                         "--no-overwrite); choose another path or remove the file")
    folder = target_of(path).parent
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} of the output path does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"folder {str(folder)!r} of the output path is not writable")
    if size is not None:
        free = shutil.disk_usage(folder).free
        if free < size:
            raise OutputError(errno.ENOSPC, f"no space left on device for {str(path)!r}: it needs "
                              f"{format_bytes(size)}, {format_bytes(free)} are free")
    return path


def name_max(folder: Path) -> int:
    """The longest file name, in bytes, that ``folder``'s filesystem takes (255 where it does not say)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def name_problem(path: Path) -> str | None:
    """Why no file can be written at ``path`` whatever the disk holds: a NUL character, or a name longer than its
    filesystem takes; None if neither."""
    if "\0" in str(path):
        return f"output path {str(path)!r} contains a NUL character"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    limit = name_max(folder)
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            return f"output path {str(path)!r}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes long, " \
                   f"more than the {limit} its filesystem takes"
    return None


def format_bytes(count: float) -> str:
    """A byte count the way people read it: 512 B, 3.4 kB, 12.0 MB, 7.9 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block succeeds, its file becomes ``path``.

    Raises:
        OutputError: the target appeared meanwhile (``overwrite=False``), or the disk filled ("no space left on
            device", with the path).
    """
    path = Path(path)
    target = target_of(path)
    _remove_stale_parts(target)
    tmp = target.with_name(f".{_part_stem(target)}.{os.getpid()}.{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, _mode_for(target))
        os.close(fd)
        yield tmp
        commit_file(tmp, path, overwrite)
    except OSError as error:
        _unlink(tmp)
        elsewhere = error.filename is not None and os.fspath(error.filename) not in (str(tmp), str(target))
        if error.errno == errno.ENOSPC and not elsewhere:  # an error that names another file is that file's
            raise OutputError(errno.ENOSPC, f"no space left on device writing {str(path)!r}") from None
        if error.errno == errno.ENOENT and not target.parent.is_dir():
            raise OutputError(errno.ENOENT, f"the folder of {str(path)!r} was removed while writing it") from None
        raise
    except BaseException:
        _unlink(tmp)
        raise


def commit_file(tmp: Path, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Move the finished file ``tmp`` onto ``path`` (through a symbolic link, onto the file it points to); with
    ``overwrite=False`` by a hard link, which fails if a file has appeared there meanwhile."""
    target = target_of(Path(path))
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # fails with EEXIST instead of replacing a file that appeared meanwhile
    except FileExistsError:
        raise OutputError(errno.EEXIST, f"output path {str(path)!r} appeared while rendering, and "
                          "overwriting was refused; the render was not saved") from None
    os.unlink(tmp)


def new_file_mode(path: str | os.PathLike) -> int:
    """The mode a file written to ``path`` gets: that of the file it replaces, or a new file's under the umask."""
    return _mode_for(target_of(Path(path)))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Within the block SIGINT, SIGTERM and SIGHUP are held; when it ends they are raised again, to the handlers
    there were before. For writes that must be whole (a piece of audio, the header that counts it and the state
    after it). Python's handlers are swapped rather than the signals masked: a process-directed signal masked in
    the main thread is delivered to another thread (torch's workers), and Python would still raise it in the main
    one. A no-op outside the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    held = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in arrived:
            signal.raise_signal(signum)


def _part_stem(target: Path) -> str:
    """The target's name in its temporary files' names, or a hash of it where the whole would be too long."""
    if len(os.fsencode(f".{target.name}.{2**22}.{'0' * 8}.part")) <= name_max(target.parent):
        return target.name
    return "~" + hashlib.sha256(os.fsencode(target.name)).hexdigest()[:24]


def target_of(path: Path) -> Path:
    """The file that writing ``path`` replaces: the end of its chain of symbolic links (which may not exist yet)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _mode_for(target: Path) -> int:
    """The mode of the file being replaced, or what a new file gets under the process's umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only set it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_PART = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.part")


def _remove_stale_parts(target: Path) -> None:
    """Remove temporary files for ``target`` left by processes that no longer run (killed with SIGKILL)."""
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        match = _PART.fullmatch(entry.name)
        if match and match["name"] == _part_stem(target) and not process_running(int(match["pid"])):
            _unlink(Path(entry.path))


def process_running(pid: int) -> bool:
    """Whether a process with this id runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
