"""The checks of a call that need the model (the starting latents' shape), and the input audio of audio-to-audio,
read and prepared; the checks that do not need it are the request's (``request.py``)."""

from __future__ import annotations

import torch

from .audio import MelSettings, load_audio, mel_for_vae


def check_latents(pipe, latents: torch.Tensor, batch: int, frames: int) -> None:
    """Given ``latents`` must have the shape the call's length and batch imply, and finite values."""
    expected = (batch, pipe.unet.config.in_channels, frames, pipe.geometry.latent_rows)
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
        raise ValueError(f"`latents` must be a tensor of shape {expected} (batch, channels, latent frames, "
                         f"frequency rows) for this length and batch, got {getattr(latents, 'shape', latents)!r}")
    if not torch.isfinite(latents).all():
        raise ValueError("`latents` contain NaN or inf")


def read_input_audio(pipe, audio) -> tuple[torch.Tensor, int]:
    """The input of audio-to-audio: its log-mel (1, 1, T, n_mels) and its length in samples."""
    settings = MelSettings.from_vocoder(pipe.vocoder)
    waveform = load_audio(audio, settings.sample_rate)
    # A short input is padded for the encoding (mel_for_vae); the output is trimmed back to its length.
    return mel_for_vae(waveform, settings, pipe.vae_scale_factor), waveform.shape[0]
