"""The checks of a call that need the model (the starting latents' shape), and the input audio of audio-to-audio and
of edits, read, encoded and noised; the checks that do not need it are the request's (``request.py``)."""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

from .audio import MelSettings, load_audio, mel_for_vae
from .config import TilingConfig
from .editing import Edit, KnownRegion
from .vae import tiled_encode


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


def noised_input(pipe, mel, batch, strength, num_inference_steps, dtype, device, generator, config):
    """SDEdit's start: the input's latent (the posterior mean, tiled encode) noised to the timestep where
    ``int(num_inference_steps * strength)`` steps remain, and those timesteps."""
    posterior = tiled_encode(pipe.vae, mel.to(device=device, dtype=pipe.vae.dtype), config)
    init = (posterior.mode() * pipe.vae.config.scaling_factor).to(dtype).repeat(batch, 1, 1, 1)
    steps = min(int(num_inference_steps * strength), num_inference_steps)
    start = (num_inference_steps - steps) * pipe.scheduler.order
    timesteps = pipe.scheduler.timesteps[start:]
    if hasattr(pipe.scheduler, "set_begin_index"):
        pipe.scheduler.set_begin_index(start)
    if steps == 0:
        return init, timesteps
    noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
    return pipe.scheduler.add_noise(init, noise, timesteps[:1].repeat(batch)), timesteps


def known_region(pipe, edit: Edit, latents: torch.Tensor, generator, config: TilingConfig) -> KnownRegion:
    """The input's latents over the edit's context (tiled encode), fitted to the render's frames, and the
    noise they are put back with."""
    settings = MelSettings.from_vocoder(pipe.vocoder)
    start, stop = edit.context
    mel = mel_for_vae(edit.original[start:stop], settings, pipe.vae_scale_factor)
    posterior = tiled_encode(pipe.vae, mel.to(device=latents.device, dtype=pipe.vae.dtype), config)
    known = (posterior.mode() * pipe.vae.config.scaling_factor).to(latents.dtype)
    frames = latents.shape[2]
    known = known[:, :, :frames]
    if known.shape[2] < frames:
        known = torch.cat([known, known.new_zeros(*known.shape[:2], frames - known.shape[2], known.shape[3])], 2)
    noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    return KnownRegion(known.expand_as(latents), edit.known_mask(), noise, pipe.scheduler)
