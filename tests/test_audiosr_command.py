"""``audioldm-tiled upsample`` and ``convert audiosr`` as a user runs them, with AudioSR's tiny random weights."""

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
    """Silence: the original finds no cutoff and cannot design its filter at 24 kHz; here the input is left as it
    is there, and the output is finite. Input already at 48 kHz is not resampled."""
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(48000, np.float32), 48000)
    out = tmp_path / "out.wav"
    assert main(["upsample", str(silent), "-o", str(out), *TINY]) == 0
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 48000 and audio.shape == (48000,) and np.isfinite(audio).all()


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
