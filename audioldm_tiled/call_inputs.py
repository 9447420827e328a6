"""What a pipeline call accepts: the checks that diffusers' parent leaves to torch, each naming the argument and
what is allowed, made before any model work; and the input audio of audio-to-audio, read and prepared."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .audio import MelSettings, load_audio, mel_for_vae
from .files import format_bytes
from .memory import InsufficientMemoryError, available_memory


def check_call_arguments(pipe, prompt, num_inference_steps, guidance_scale, num_waveforms_per_prompt,
                       output_type: str, callback_on_step_end_tensor_inputs: list[str]) -> tuple[int, float, int]:
    """Checks of the arguments the parent leaves to torch; returns the steps, guidance and waveforms per prompt
    as Python numbers (numpy scalars are welcome)."""
    _check_positive_integer("num_inference_steps", num_inference_steps)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real) \
            or not math.isfinite(guidance_scale):
        raise ValueError(f"`guidance_scale` must be a finite number, got {guidance_scale!r}")
    num_waveforms_per_prompt = 1 if num_waveforms_per_prompt is None else num_waveforms_per_prompt
    _check_positive_integer("num_waveforms_per_prompt", num_waveforms_per_prompt)
    if isinstance(prompt, (list, tuple)) and not prompt:
        raise ValueError("`prompt` is an empty list: give a string, a non-empty list of strings or a timeline")
    if output_type not in ("np", "pt", "latent"):
        raise ValueError(f"`output_type` must be 'np', 'pt' or 'latent', got {output_type!r}")
    unknown = [k for k in callback_on_step_end_tensor_inputs if k not in pipe._callback_tensor_inputs]
    if unknown:
        raise ValueError(
            f"`callback_on_step_end_tensor_inputs` has to be in {pipe._callback_tensor_inputs}, but found {unknown}"
        )
    return int(num_inference_steps), float(guidance_scale), int(num_waveforms_per_prompt)


def _check_positive_integer(name: str, value: object) -> None:
    """An int or numpy integer >= 1 (a bool is no count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def check_latents(pipe, latents: torch.Tensor, batch: int, frames: int) -> None:
    """Given ``latents`` must have the shape the call's length and batch imply, and finite values."""
    expected = (batch, pipe.unet.config.in_channels, frames, pipe._latent_rows)
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
        raise ValueError(f"`latents` must be a tensor of shape {expected} (batch, channels, latent frames, "
                         f"frequency rows) for this length and batch, got {getattr(latents, 'shape', latents)!r}")
    if not torch.isfinite(latents).all():
        raise ValueError("`latents` contain NaN or inf")


def check_length_fits(pipe, batch: int, frames: int, seconds: float) -> None:
    """Refuse, before any tensor of that size is made, a length whose latents alone exceed the device's free
    memory (the noise, the latents and the scheduler's copy are held at once)."""
    needed = 3 * batch * pipe.unet.config.in_channels * frames * pipe._latent_rows * pipe.unet.dtype.itemsize
    free = available_memory(pipe._execution_device)
    if needed > free:
        raise InsufficientMemoryError(
            f"`audio_length_in_s` of {seconds:g} s needs {format_bytes(needed)} for its latents alone, more "
            f"than the {format_bytes(free)} free on {pipe._execution_device}")


def read_input_audio(pipe, audio, strength, audio_length_in_s, latents) -> tuple[torch.Tensor, int]:
    """Checks for audio-to-audio; the input's log-mel (1, 1, T, n_mels) and its length in samples."""
    if audio_length_in_s is not None:
        raise ValueError("pass either `audio` or `audio_length_in_s`: with `audio` the output has the input's "
                         "length")
    if latents is not None:
        raise ValueError("pass either `audio` or `latents`: with `audio` the starting latents are the input's")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
        raise ValueError(f"`strength` must be a number in (0, 1], got {strength!r}")
    settings = MelSettings.from_vocoder(pipe.vocoder)
    waveform = load_audio(audio, settings.sample_rate)
    # The front end's STFT needs more than n_fft / 2 samples: shorter inputs are padded with silence for the
    # encoding, and the output is trimmed back to the input's length.
    samples = waveform.shape[0]
    if samples < settings.n_fft:
        waveform = np.pad(waveform, (0, settings.n_fft - samples))
    return mel_for_vae(waveform, settings, pipe.vae_scale_factor), samples
