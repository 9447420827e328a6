"""Every input a user can type gets a clear error naming the argument before any model work, or is handled."""

import errno
import os

import numpy as np
import pytest
import torch

from audioldm_tiled import InsufficientMemoryError
from audioldm_tiled.cli import main

QUICK = dict(num_inference_steps=1, audio_length_in_s=1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_waveforms_per_prompt=0), "`num_waveforms_per_prompt` must be a positive integer"),
    (dict(num_waveforms_per_prompt=-1), "`num_waveforms_per_prompt` must be a positive integer"),
    (dict(prompt=[]), "`prompt` is an empty list"),
    (dict(latents=torch.zeros(1, 8, 25)), r"`latents` must be a tensor of shape \(1, 8, 25, 16\)"),
    (dict(latents=torch.zeros(1, 4, 25, 16)), r"`latents` must be a tensor of shape \(1, 8, 25, 16\)"),
    (dict(latents=torch.zeros(1, 8, 30, 16)), r"`latents` must be a tensor of shape \(1, 8, 25, 16\)"),
    (dict(latents=torch.full((1, 8, 25, 16), float("nan"))), "`latents` contain NaN or inf"),
    (dict(strength=0.3), "`strength` goes with `audio`"),
    (dict(num_inference_steps=2.5), "`num_inference_steps` must be a positive integer"),
    (dict(guidance_scale=float("nan")), "`guidance_scale` must be a number from -1000 to 1000"),
    (dict(guidance_scale=1e308), r"`guidance_scale` must be a number from -1000 to 1000, got 1e\+308"),
])
def test_bad_call_arguments_are_named(tiny_pipe, kwargs, message):
    args = {"prompt": "rain", **QUICK, **kwargs}
    with pytest.raises(ValueError, match=message):
        tiny_pipe(**args)


def test_a_length_whose_latents_cannot_fit_is_refused_before_any_tensor_is_made(tiny_pipe):
    with pytest.raises(InsufficientMemoryError, match="`audio_length_in_s` of 1e\\+07 s needs"):
        tiny_pipe("rain", audio_length_in_s=1e7)


def test_numpy_scalars_are_numbers(tiny_pipe):
    audio = tiny_pipe("rain", audio_length_in_s=np.float32(1), num_inference_steps=np.int64(1),
                      guidance_scale=np.float32(3), num_waveforms_per_prompt=np.int64(1)).audios
    assert audio.shape == (1, 16000)


@pytest.mark.parametrize("samples", [1, 100, 512, 600, 639, 1023])
def test_very_short_inputs_are_padded_and_trimmed_back(tiny_pipe, samples):
    source = np.sin(np.arange(samples, dtype=np.float32) / 7)
    out = tiny_pipe("rain", audio=source, num_inference_steps=1).audios
    assert out.shape == (1, samples) and np.isfinite(out).all()


def test_audio_given_as_channels_by_samples_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match=r"pass audio\.T"):
        tiny_pipe("rain", audio=np.zeros((2, 48000), dtype=np.float32))


@pytest.mark.parametrize("argv, message", [
    (["--seed", "99999999999999999999999"], "--seed must be a whole number from 0 to"),
    (["--seed", "-1"], "--seed must be a whole number from 0 to"),
    (["--memory-budget", "1e-10"], "--memory-budget must be at least 1e-9 GB"),
    (["--input", "no-such.wav"], "--input no-such.wav: no such file"),
    (["--strength", "0.3"], "--strength goes with --input"),
    (["--steps", "0"], "--steps must be a positive integer"),
])
def test_bad_cli_arguments_are_named(tmp_path, capsys, argv, message):
    assert main(["rain", "-o", str(tmp_path / "a.wav"), "--model", "random:tiny", *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "a.wav").exists()


def test_negative_timeline_starts_need_no_equals_sign(tmp_path, capsys):
    assert main(["--at", "-1:rain", "-o", str(tmp_path / "a.wav"), "--model", "random:tiny"]) == 2
    assert "segment 0 starts at -1 s; starts must be >= 0" in capsys.readouterr().err


def test_a_spectrogram_that_cannot_be_written_is_one_line_and_keeps_the_audio(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full_disk)
    wav, png = tmp_path / "a.wav", tmp_path / "s.png"
    code = main(["rain", "-o", str(wav), "--model", "random:tiny", "--steps", "1", "--seconds", "1",
                 "--spectrogram", str(png)])
    err = capsys.readouterr().err
    assert code == 2 and f"--spectrogram: no space left on device writing '{png}'" in err
    assert wav.exists() and not png.exists() and not [n for n in os.listdir(tmp_path) if n.endswith(".part")]
    assert main(["rain", "-o", str(wav), "--spectrogram", str(tmp_path / "missing" / "s.png")]) == 2
    assert "--spectrogram: folder" in capsys.readouterr().err
