import numpy as np
import pytest
import soundfile as sf

from audioldm_tiled.audio import open_wav, save_wav
from audioldm_tiled.cli import main


def test_cli_writes_a_wav_of_the_asked_length(tmp_path):
    out = tmp_path / "rain.wav"
    assert main(["rain on a tin roof", "--seconds", "2.5", "-o", str(out), "--model", "random:tiny", "--steps", "2",
                 "--quiet"]) == 0
    info = sf.info(out)
    assert (info.samplerate, info.frames, info.subtype) == (16000, 40000, "PCM_16")
    assert not list(tmp_path.glob(".*part"))


def test_cli_float_output(tmp_path):
    out = tmp_path / "f.wav"
    assert main(["x", "--seconds", "1", "-o", str(out), "--model", "random:tiny", "--steps", "1", "--float",
                 "--quiet"]) == 0
    assert sf.info(out).subtype == "FLOAT"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seconds", "0"], "--seconds"), (["--seconds", "-3"], "--seconds"), (["--seconds", "nan"], "--seconds"),
        (["--seconds", "ten"], "--seconds"), (["--dtype", "fp8"], "--dtype"), (["--device", "tpu"], "--device"),
        (["--model", "random:huge"], "random:ARCH"), (["--memory-budget", "0"], "--memory-budget"),
    ],
)
def test_cli_bad_input_gives_one_clear_error(tmp_path, capsys, args, message):
    code = main(["x", "-o", str(tmp_path / "o.wav"), "--model", "random:tiny", *args])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.wav").exists()


def test_cli_unloadable_model_names_it_and_the_ways_out(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["x", "-o", str(tmp_path / "o.wav"), "--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--model: model folder '{missing}' does not exist" in err
    (tmp_path / "empty").mkdir()
    assert main(["x", "-o", str(tmp_path / "o.wav"), "--model", str(tmp_path / "empty")]) == 2
    assert "has no model_index.json" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    assert main(["x", "-o", str(tmp_path / "o.wav"), "--model", str(broken)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "save_pretrained" in err and "random:audioldm-s" in err
    assert not (tmp_path / "o.wav").exists()


def test_cli_checks_the_output_path_before_loading_anything(tmp_path, capsys):
    assert main(["x", "-o", str(tmp_path / "missing-dir" / "o.wav"), "--model", "no/such-model"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "could not be loaded" not in err


def test_cli_says_before_denoising_that_the_decode_cannot_fit(tmp_path, capsys):
    out = tmp_path / "o.wav"
    assert main(["x", "--seconds", "20", "-o", str(out), "--model", "random:tiny", "--steps", "1",
                 "--memory-budget", "0.0001", "--store", "device"]) == 2
    err = capsys.readouterr().err
    assert "--store disk" in err and "--mode fast" in err and "--memory-budget" in err
    assert "0/1" not in err  # the denoising's progress bar never started
    assert not out.exists() and not list(tmp_path.glob(".*part"))


def test_cli_keeps_a_decode_that_does_not_fit_memory_on_disk(tmp_path, capsys):
    out, store = tmp_path / "o.wav", tmp_path / "store"
    store.mkdir()
    assert main(["x", "--seconds", "20", "-o", str(out), "--model", "random:tiny", "--steps", "1", "--quiet",
                 "--memory-budget", "0.0001", "--store-dir", str(store)]) == 0
    assert sf.info(out).frames == 20 * 16000
    assert list(store.iterdir()) == []
    assert main(["x", "-o", str(out), "--model", "random:tiny", "--store-dir", str(tmp_path / "nowhere")]) == 2
    assert "--store-dir must be a writable directory" in capsys.readouterr().err


def test_failure_mid_write_leaves_no_file_and_keeps_an_existing_one(tmp_path):
    out = tmp_path / "a.wav"
    with pytest.raises(RuntimeError):
        with open_wav(out) as writer:
            writer.write(np.zeros(1000, dtype=np.float32))
            raise RuntimeError("generation failed")
    assert not out.exists() and not list(tmp_path.iterdir())
    save_wav(out, np.full(100, 0.5, dtype=np.float32))
    with pytest.raises(RuntimeError):
        with open_wav(out) as writer:
            writer.write(np.zeros(5000, dtype=np.float32))
            raise RuntimeError("interrupted")
    assert sf.info(out).frames == 100 and len(list(tmp_path.iterdir())) == 1


def test_save_wav_clips_before_integer_conversion(tmp_path):
    out = save_wav(tmp_path / "c.wav", np.array([2.0, -3.0, 0.5], dtype=np.float32))
    data, rate = sf.read(out, dtype="int16")
    assert rate == 16000 and data.tolist() == [32767, -32768, 16384]


def test_cli_timeline_from_at_and_from_a_json_file(tmp_path):
    common = ["--seconds", "3", "--model", "random:tiny", "--steps", "1", "--quiet"]
    out = tmp_path / "at.wav"
    assert main(["--at", "0:light rain", "--at", "1.5:thunderstorm", "-o", str(out), *common]) == 0
    timeline = tmp_path / "timeline.json"
    timeline.write_text('[[0, "light rain"], [1.5, 3, "thunderstorm"]]')
    assert main(["--timeline", str(timeline), "-o", str(tmp_path / "file.wav"), *common]) == 0
    assert sf.info(out).frames == sf.info(tmp_path / "file.wav").frames == 48000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--at", "2:storm", "--at", "1:rain"], "sorted"),
        (["--at", "0:rain", "--at", "9:storm"], "beyond"),
        (["--at", "soon:rain"], "--at"),
        (["--at", "0:"], "empty text"),
        (["x", "--at", "0:rain"], "exactly one of"),
        ([], "exactly one of"),
        (["--timeline", "missing.json"], "--timeline"),
        (["--timeline", "number.json"], "expected a JSON list"),
    ],
)
def test_cli_bad_timeline_fails_before_loading_the_model(tmp_path, capsys, args, message):
    (tmp_path / "number.json").write_text("3")
    args = [str(tmp_path / a) if a.endswith(".json") else a for a in args]
    code = main([*args, "--seconds", "3", "-o", str(tmp_path / "o.wav"), "--model", "no/such-model"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "could not be loaded" not in err and "Traceback" not in err


def test_cli_spectrogram_with_seams_marked(tmp_path):
    pytest.importorskip("matplotlib")
    out, picture = tmp_path / "s.wav", tmp_path / "s.png"
    assert main(["x", "--seconds", "14", "-o", str(out), "--model", "random:tiny", "--steps", "1", "--quiet",
                 "--spectrogram", str(picture), "--mark-seams"]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000


@pytest.mark.parametrize("args, message", [(["--spectrogram", "missing-dir/s.png"], "does not exist"),
                                           (["--spectrogram", "s.jpg"], ".png"), (["--mark-seams"], "--spectrogram")])
def test_cli_spectrogram_path_is_checked_before_loading(tmp_path, capsys, args, message):
    args = [str(tmp_path / a) if a.endswith(("png", "jpg")) else a for a in args]
    assert main(["x", "-o", str(tmp_path / "o.wav"), "--model", "no/such-model", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "could not be loaded" not in err


def test_help_and_argument_errors_answer_before_torch_is_imported():
    """A generous bound instead of a timer: parsing needs no torch, so --help and usage errors never load it."""
    import subprocess
    import sys

    script = ("import sys; from audioldm_tiled.cli import main; "
              "codes = [main(['--help']), main(['x', '-o', 'a.wav', '--device', 'gpu']), "
              "main(['x', '-o', 'a.wav', '--dtype', 'fp8'])]; "
              "print(codes, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[0, 2, 2] False"
    assert "--device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'" in done.stderr
    assert "--dtype: invalid choice: 'fp8'" in done.stderr


def test_auto_device_and_dtype():
    import torch

    from audioldm_tiled.cli import resolve_device, resolve_dtype

    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("mps")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_bench_refuses_bad_arguments_before_running_a_point(capsys):
    assert main(["bench", "decode", "--seconds", "-1"]) == 2
    assert "--seconds must be a positive finite number" in capsys.readouterr().err
    assert main(["bench", "decode", "--steps", "0"]) == 2


def test_cli_loop_continue_and_regenerate(tmp_path):
    common = ["--model", "random:tiny", "--steps", "2", "--quiet"]
    loop = tmp_path / "loop.wav"
    assert main(["rain", "--seconds", "2", "--loop", "-o", str(loop), *common]) == 0
    assert sf.info(loop).frames == 32000
    source = tmp_path / "field.wav"
    recording = (0.2 * np.sin(np.arange(40000) / 7)).astype(np.float32)
    sf.write(source, recording, 16000, subtype="PCM_16")
    stored, _ = sf.read(source, dtype="float32")
    longer = tmp_path / "longer.wav"
    assert main(["rain", "--input", str(source), "--extend", "1.5", "-o", str(longer), *common]) == 0
    extended, _ = sf.read(longer, dtype="float32")
    assert extended.shape == (40000 + 24000,)
    assert np.array_equal(extended[: 40000 - 4000], stored[: 40000 - 4000])  # up to the 0.25 s crossfade
    fixed = tmp_path / "fixed.wav"
    assert main(["rain", "--input", str(source), "--regenerate", "1:1.5", "--crossfade", "0.05", "-o", str(fixed),
                 *common]) == 0
    remade, _ = sf.read(fixed, dtype="float32")
    outside = np.ones(40000, dtype=bool)
    outside[16000:24000] = False
    assert remade.shape == stored.shape and np.array_equal(remade[outside], stored[outside])


@pytest.mark.parametrize("args, message", [
    (["--seconds", "2", "--regenerate", "1:2"], "pass it as --input"),
    (["--seconds", "2", "--extend", "3"], "pass it as --input"),
    (["--input", "IN", "--regenerate", "2:1"], "--regenerate: the span 2-1 s is empty or reversed"),
    (["--input", "IN", "--regenerate", "1:9"], "ends past the input"),
    (["--input", "IN", "--regenerate", "one:two"], "--regenerate takes START:END"),
    (["--input", "IN", "--extend", "3", "--strength", "0.5"], "--strength restyles the whole input"),
    (["--input", "IN", "--extend", "3", "--regenerate", "1:2"], "pass one of --extend (continue the input) and "
                                                                "--regenerate"),
    (["--input", "IN", "--loop"], "--loop makes a new loop"),
    (["--input", "IN", "--extend", "0"], "--extend"),
])
def test_cli_edit_errors_come_before_the_model(tmp_path, capsys, args, message):
    source = tmp_path / "in.wav"
    sf.write(source, np.zeros(32000, dtype=np.float32), 16000)
    args = [str(source) if a == "IN" else a for a in args]
    code = main(["x", "-o", str(tmp_path / "o.wav"), "--model", "random:huge-does-not-exist", *args])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.wav").exists()


@pytest.fixture()
def no_model(monkeypatch):
    """Fails the test if a command loads a model: the errors below must come before."""
    import audioldm_tiled.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))


@pytest.fixture()
def three_s(tmp_path):
    path = tmp_path / "three.wav"
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32), 16000)
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["--seconds", "1e306"], "--seconds must be a finite number of seconds > 0 and at most"),
    (["--seconds", "1e308"], "--seconds must be a finite number of seconds > 0 and at most"),
    (["--input", "IN", "--extend", "1e306"], "--extend must be a finite number"),
    (["--input", "IN", "--extend", "1", "--context", "1e308"], "--context must be a finite number"),
    (["--input", "IN", "--extend", "1", "--crossfade", "1e308"], "--crossfade must be a finite number"),
    (["--input", "IN", "--regenerate", "1:1.2"], "--crossfade of 0.25 s at each end is longer than half the span"),
    (["--input", "IN", "--extend", "1", "--crossfade", "10"], "--crossfade of 10 s is longer than the input"),
    (["--input", "IN", "--extend", "1", "--context", "0"], "--context must be a finite number of seconds > 0"),
])
def test_numbers_and_edits_are_checked_before_the_model(tmp_path, capsys, no_model, three_s, args, message):
    args = [three_s if a == "IN" else a for a in args]
    assert main(["rain", "-o", str(tmp_path / "o.wav"), "--model", "random:tiny", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_shortest_render_is_the_models_latent_frame(tmp_path, capsys):
    """The shortest length depends on the model's geometry, so it is checked once the model is loaded, still
    before any work, and named by its option."""
    out = tmp_path / "o.wav"
    assert main(["rain", "--loop", "--seconds", "0.01", "-o", str(out), "--model", "random:tiny"]) == 2
    err = capsys.readouterr().err
    assert "--seconds must be at least 0.04 s (one latent frame of this model), got 0.01" in err
    assert "Traceback" not in err and not out.exists()


def test_a_blank_prompt_and_inputs_that_are_not_files_are_named(tmp_path, capsys, no_model):
    assert main(["   ", "-o", str(tmp_path / "o.wav")]) == 2
    assert "PROMPT must be a text describing the sound" in capsys.readouterr().err
    assert main(["rain", "--input", str(tmp_path), "--extend", "1", "-o", str(tmp_path / "o.wav")]) == 2
    assert f"--input {tmp_path}: is a directory" in capsys.readouterr().err
    assert main(["rain", "--input", "/dev/zero", "--extend", "1", "-o", str(tmp_path / "o.wav")]) == 2
    assert "--input /dev/zero: is not a regular file" in capsys.readouterr().err


def test_context_0_around_a_span_is_allowed(tmp_path, three_s):
    out = tmp_path / "o.wav"
    assert main(["rain", "--input", three_s, "--regenerate", "1:2", "--context", "0", "-o", str(out), "--model",
                 "random:tiny", "--steps", "1", "--quiet"]) == 0
    assert sf.info(out).frames == 48000


def test_no_overwrite_protects_the_spectrogram_too(tmp_path, capsys, no_model):
    picture = tmp_path / "o.png"
    picture.write_bytes(b"an earlier picture")
    assert main(["rain", "-o", str(tmp_path / "o.wav"), "--spectrogram", str(picture), "--no-overwrite"]) == 2
    assert "exists, and overwriting was refused" in capsys.readouterr().err
    assert picture.read_bytes() == b"an earlier picture"


def test_long_legal_names_render_and_too_long_ones_fail_first(tmp_path, capsys):
    long = tmp_path / ("r" * 246 + ".wav")  # 250 bytes: the temporary name beside it would pass 255
    assert main(["rain", "--seconds", "0.5", "-o", str(long), "--model", "random:tiny", "--steps", "1",
                 "--quiet"]) == 0
    assert sf.info(long).frames == 8000
    assert main(["rain", "-o", str(tmp_path / ("r" * 260 + ".wav")), "--model", "no/such-model"]) == 2
    assert "more than the 255 its filesystem takes" in capsys.readouterr().err


def test_a_full_store_folder_is_named_as_such(tmp_path, capsys, monkeypatch):
    import errno
    import types

    import audioldm_tiled.vae.store as store

    def full(**kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "tempfile", types.SimpleNamespace(TemporaryFile=full))
    assert main(["rain", "--seconds", "2", "-o", str(tmp_path / "o.wav"), "--model", "random:tiny", "--steps", "1",
                 "--quiet", "--store", "disk", "--store-dir", str(tmp_path), "--tile-frames", "16"]) == 1
    err = capsys.readouterr().err
    assert "the exact decode's store folder: No space left on device" in err and str(tmp_path) in err
    assert "writing" not in err and not (tmp_path / "o.wav").exists()


def test_memory_errors_and_stopped_batches_say_what_happened(tmp_path, capsys, monkeypatch):
    import audioldm_tiled.batch as batch
    import audioldm_tiled.batch_jobs as batch_jobs

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"output": "a.wav", "prompt": "rain", "seconds": 0.5}\n')
    monkeypatch.setattr(batch_jobs, "read_jobs", lambda path: (_ for _ in ()).throw(MemoryError()))
    assert main(["batch", str(jobs), "--out-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == "audioldm-tiled: error: out of memory"
    monkeypatch.undo()
    monkeypatch.setattr(batch, "run_batch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(["batch", str(jobs), "--out-dir", str(tmp_path / "out")]) == 130
    assert "the jobs finished before are kept" in capsys.readouterr().err


def test_bench_checks_its_json_path_before_running(capsys):
    assert main(["bench", "decode", "--seconds", "1", "--json", "/nonexistent/x.json"]) == 2
    assert "--json /nonexistent/x.json: folder /nonexistent does not exist" in capsys.readouterr().err


def test_timeline_files_with_a_byte_order_mark_or_broken_text(tmp_path, capsys, no_model):
    timeline = tmp_path / "t.json"
    timeline.write_bytes(b'\xef\xbb\xbf[[0, "rain"], [1, "caf\xe9"]]')
    assert main(["--timeline", str(timeline), "--seconds", "2", "-o", str(tmp_path / "o.wav")]) == 2
    assert f"--timeline {timeline}: cannot read a JSON timeline" in capsys.readouterr().err
    timeline.write_bytes('\ufeff[[0, "rain"], [1, "café"]]'.encode())
    assert main(["--timeline", str(timeline), "--seconds", "0.5", "-o", str(tmp_path / "o.wav")]) == 2
    assert "segment 1 starts at 1 s" in capsys.readouterr().err  # read, then checked: past a 0.5 s render
