"""``audioldm-tiled upsample`` and ``convert audiosr`` as a user runs them, with AudioSR's tiny random weights."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from audioldm_tiled.cli import main

TINY = ["--model", "random:audiosr-tiny", "--steps", "2", "--quiet"]


def _stereo(path, seconds=1.5, rate=44100):
    t = np.arange(round(seconds * rate)) / rate
    left = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.shape[0])
    sf.write(path, np.stack([left, 0.5 * left[::-1]], axis=1).astype(np.float32), rate)
    return path


def test_a_stereo_recording_becomes_48_khz_of_the_same_length(tmp_path, caplog):
    source = _stereo(tmp_path / "in.wav")
    out = tmp_path / "out.flac"
    with caplog.at_level("INFO"):
        assert main(["upsample", str(source), "-o", str(out), *TINY]) == 0
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 48000 and audio.shape == (round(1.5 * 48000), 2) and np.isfinite(audio).all()
    assert not np.array_equal(audio[:, 0], audio[:, 1])  # each channel on its own
    assert f"wrote {out} (1.50 s, 2 channel(s), 48 kHz)" in caplog.text


def test_mode_fast_is_the_tiling_the_pipeline_runs(tmp_path, monkeypatch):
    """``--mode fast`` reaches the pipeline's tiling (exact without it): the VAE's fast mode itself is measured
    against the untiled encode and decode in test_encode and test_vae."""
    from audioldm_tiled.audiosr.pipeline import AudioSRTiledPipeline

    modes, upsampled = [], AudioSRTiledPipeline.upsampled

    def recorded(self, *args, **kwargs):
        modes.append(kwargs["tiling"].mode)
        return upsampled(self, *args, **kwargs)

    monkeypatch.setattr(AudioSRTiledPipeline, "upsampled", recorded)
    source = tmp_path / "in.wav"
    sf.write(source, 0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440).astype(np.float32), 16000)
    for extra in ([], ["--mode", "fast"]):
        assert main(["upsample", str(source), "-o", str(tmp_path / "out.wav"), *TINY, *extra]) == 0
    assert modes == ["exact", "fast"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("not audio"), "not audio that soundfile reads"),
    (lambda p: sf.write(p, np.zeros(1, np.float32), 16000), "AudioSR needs 10 ms at the least"),
    (lambda p: sf.write(p, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT"), "NaN or infinite"),
    (lambda p: sf.write(p, np.zeros(100, np.float32), 1), "a sample rate of 1 Hz"),
])
def test_bad_recordings_are_refused_before_the_model_loads(tmp_path, capsys, make, message):
    source = tmp_path / "in.wav"
    make(source)
    out = tmp_path / "out.wav"
    out.write_text("precious")
    assert main(["upsample", str(source), "-o", str(out), "--model", "no/such-model"]) == 2
    assert message in capsys.readouterr().err and out.read_text() == "precious"


def test_silence_and_48_khz_input_give_a_defined_result(tmp_path):
    """Silence: the original finds no cutoff, cannot design its filter at 24 kHz and scales what the model made of
    nothing to a peak of 0.5; here a silent channel comes out silent, beside a channel that is not. Input already
    at 48 kHz is not resampled: one sample in is one sample out."""
    source = tmp_path / "half-silent.wav"
    t = np.arange(48000) / 48000
    sf.write(source, np.stack([0.3 * np.sin(2 * np.pi * 440 * t), np.zeros(48000)], axis=1).astype(np.float32),
             48000, subtype="FLOAT")
    out = tmp_path / "out.wav"
    assert main(["upsample", str(source), "-o", str(out), *TINY]) == 0
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 48000 and audio.shape == (48000, 2) and np.isfinite(audio).all()
    assert np.abs(audio[:, 0]).max() > 0.3 and not audio[:, 1].any()


def test_bad_samples_are_refused_by_the_pipeline_by_name():
    from audioldm_tiled.loading import load_pipeline

    pipe = load_pipeline("random:audiosr-tiny")
    for audio, rate, message in [(np.full(4800, np.nan, np.float32), 48000, "NaN or infinite"),
                                 (np.zeros(100, np.float32), 1, "AudioSR takes recordings of 1000 Hz or more"),
                                 (np.zeros(0, np.float32), 16000, "`audio` must be samples"),
                                 (np.zeros((2, 3, 4), np.float32), 16000, "`audio` must be samples"),
                                 (np.zeros(4800, np.float32), None, "`sampling_rate` is needed")]:
        with pytest.raises(ValueError, match=message):
            pipe(audio, sampling_rate=rate, num_inference_steps=1)


def test_a_converted_checkpoint_loads_as_a_folder(tmp_path):
    """An original state dict, as the package saves it ({"state_dict": ...}), through ``convert audiosr`` into a
    folder that ``load_pipeline`` and ``--model`` read: the same weights."""
    from test_audiosr import TINY as ARCH
    from test_audiosr import latent_diffusion

    from audioldm_tiled.audiosr.components import build_components
    from audioldm_tiled.loading import load_pipeline

    state = latent_diffusion(ARCH).state_dict()
    checkpoint = tmp_path / "audiosr.ckpt"
    torch.save({"state_dict": state}, checkpoint)
    folder = tmp_path / "audiosr"
    assert main(["convert", "audiosr", str(checkpoint), str(folder)]) == 2  # the public layout: refused by name
    assert main(["convert", "audiosr", str(checkpoint), str(folder), "--arch", "audiosr-tiny"]) == 0
    pipe = load_pipeline(str(folder))
    assert type(pipe).__name__ == "AudioSRTiledPipeline"
    assert torch.equal(pipe.unet.conv_in.weight, state["model.diffusion_model.input_blocks.0.0.weight"])
    assert pipe.vae.config.scaling_factor == pytest.approx(float(state["scale_factor"]))
    assert main(["convert", "audiosr", str(checkpoint), str(folder), "--arch", "audiosr-tiny"]) == 2  # kept
    assert set(build_components(ARCH)) <= set(pipe.components)


def test_a_render_is_delivered_at_48_khz_with_its_loudness_and_recipe(tmp_path, caplog):
    """``generate --upsample``: the 16 kHz render super-resolved once whole, then delivered as any render is (FLAC,
    a loudness target), the file's recipe naming the model that super-resolved it."""
    import json

    out = tmp_path / "rain.flac"
    with caplog.at_level("INFO"):
        assert main(["rain", "--seconds", "2", "-o", str(out), "--model", "random:tiny", "--steps", "1",
                     "--upsample", "random:audiosr-tiny", "--upsample-steps", "2", "--loudness", "-20",
                     "--quiet"]) == 0
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 48000 and audio.shape == (2 * 48000,) and np.abs(audio).max() > 0.01
    recipe = json.loads(sf.SoundFile(out).copy_metadata()["comment"])
    assert recipe["upsampled"]["model"] == "random:audiosr-tiny" and recipe["prompt"] == "rain"
    assert recipe["upsampled"]["num_inference_steps"] == 2
    assert "at 48000 Hz, -20.0 LUFS" in caplog.text


def test_upsample_is_checked_before_the_render(tmp_path, capsys):
    out = tmp_path / "rain.wav"
    out.write_text("precious")
    argv = ["rain", "--seconds", "3", "-o", str(out), "--model", "random:tiny", "--steps", "1"]
    assert main([*argv, "--upsample", "random:tiny"]) == 2
    assert "--upsample: random:tiny is a" in capsys.readouterr().err and out.read_text() == "precious"
    assert main([*argv, "--upsample-steps", "2"]) == 2
    assert "--upsample-steps goes with --upsample" in capsys.readouterr().err and out.read_text() == "precious"


def test_batch_jobs_that_ask_for_48_khz_get_it(tmp_path, capsys):
    """A job with ``"upsample": true`` is delivered at 48 kHz by the batch's AudioSR model, loaded once a job
    needs it; the others stay at the model's rate; a job's 'upsample' is true or false."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"output": "a.wav", "prompt": "rain", "seconds": 2, "steps": 1, "upsample": true}\n'
                    '{"output": "b.flac", "prompt": "wind", "seconds": 2, "steps": 1}\n')
    out = tmp_path / "out"
    argv = ["batch", str(jobs), "--out-dir", str(out), "--model", "random:tiny", "--quiet"]
    assert main([*argv, "--upsample-model", "random:audiosr-tiny", "--upsample-steps", "2"]) == 0
    assert sf.info(out / "a.wav").samplerate == 48000 and sf.info(out / "a.wav").frames == 2 * 48000
    sidecar = json.loads((out / "a.wav.json").read_text())
    assert sidecar["upsampled"]["num_inference_steps"] == 2 and sidecar["upsampled"]["model"] == "random:audiosr-tiny"
    assert sf.info(out / "b.flac").samplerate == 16000
    jobs.write_text('{"output": "c.wav", "prompt": "rain", "seconds": 2, "upsample": "yes"}\n')
    assert main(argv) == 2
    assert "line 1: 'upsample' must be true or false" in capsys.readouterr().err
