"""What a model family supplies to the engine: ``ModelFamily``, the interface every tiled pipeline implements.

The engine (``pipeline.TiledAudioPipelineMixin``) denoises, decodes and vocodes the same way for every family; it
asks the family only what differs: the parent's defaults, the checks of its prompt arguments, how it encodes a
prompt and how that conditions each window's UNet call, what a timeline means for that conditioning, and the
latent's geometry (read from the loaded VAE's and vocoder's configs).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch

from ..conditioning import UNetConditioning
from ..vocoder import hop_length


class ModelFamily:
    """The family interface, put before ``TiledAudioPipelineMixin`` in a tiled pipeline's bases. The four hooks
    that raise ``NotImplementedError`` here are the ones a family must write; the rest are read from the parent
    and the loaded components."""

    # Call arguments only this family takes, handed to its hooks as ``family_inputs`` (AudioLDM takes none).
    _family_arguments: tuple[str, ...] = ()

    def _check_prompt_inputs(self, prompt, audio_length_in_s: float, vocoder_upsample_factor: float,
                             callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                             **family_inputs) -> None:
        """The parent's ``check_inputs`` for the prompt arguments (a timeline's first segment stands for it)."""
        raise NotImplementedError

    def _encode_conditioning(self, prompt, device, num_waveforms_per_prompt: int, guided: bool, negative_prompt,
                             prompt_embeds, negative_prompt_embeds, **family_inputs) -> dict[str, torch.Tensor]:
        """The encoded prompt as the tensors a step-end callback sees and may replace, each with the negative rows
        first when guided; ``"prompt_embeds"`` gives the latents their dtype."""
        raise NotImplementedError

    def _unet_conditioning(self, encoded: dict[str, torch.Tensor], groups: int, guided: bool,
                           mix: torch.Tensor | None) -> UNetConditioning:
        """The windows' UNet conditioning from ``encoded`` (``groups`` rows, or one per timeline segment); ``mix``
        (windows, segments) weighs a timeline's segments per window."""
        raise NotImplementedError

    def _check_timeline(self, segments: list, mix: torch.Tensor) -> None:
        """Called once per render with a timeline's segments and their (windows, segments) weights, to warn about
        what the family's conditioning cannot express."""
        raise NotImplementedError

    def _reject_unknown(self, arguments: dict[str, Any]) -> None:
        """Call arguments that no field of the request and no argument of this family takes are the caller's
        mistake."""
        unknown = [name for name in arguments if name not in self._family_arguments]
        if unknown:
            raise TypeError(f"{type(self).__name__}.__call__() got unexpected keyword argument(s) "
                            f"{', '.join(map(repr, unknown))}")

    def _parent_defaults(self) -> dict[str, Any]:
        """The diffusers parent's defaults of the arguments whose defaults differ between families (AudioLDM: 10
        steps, guidance 2.5; MusicLDM: 200 and 2.0; AudioLDM 2: 200 and 3.5)."""
        parent = next(c for c in type(self).__mro__ if c.__module__.startswith("diffusers.") and "__call__" in vars(c))
        return {name: p.default for name, p in inspect.signature(parent.__call__).parameters.items()
                if name in ("num_inference_steps", "guidance_scale")}

    # ---------------------------------------------------------------------------------------------------- geometry
    @property
    def _mel_frame_seconds(self) -> float:
        """Seconds per mel frame: the vocoder's hop over its sampling rate (the parent's vocoder_upsample_factor)."""
        return hop_length(self.vocoder) / self.vocoder.config.sampling_rate

    @property
    def _latent_rows(self) -> int:
        """Frequency rows of the latent: the vocoder's mel bands over the VAE's downsampling."""
        return int(self.vocoder.config.model_in_dim) // self.vae_scale_factor

    def _audio_geometry(self, audio_length_in_s: float | None) -> tuple[float, int, int]:
        """(seconds, mel frames rounded up to the VAE factor, samples to keep), as the parent computes them; None
        is the UNet's training length."""
        vocoder_upsample_factor = self._mel_frame_seconds
        if audio_length_in_s is None:
            audio_length_in_s = self.unet.config.sample_size * self.vae_scale_factor * vocoder_upsample_factor
        if isinstance(audio_length_in_s, bool) or not isinstance(audio_length_in_s, (int, float, np.number)) or not (
            math.isfinite(audio_length_in_s) and audio_length_in_s > 0
        ):
            raise ValueError(
                f"`audio_length_in_s` must be a positive finite number of seconds, got {audio_length_in_s!r}"
            )
        height = int(audio_length_in_s / vocoder_upsample_factor)
        if height % self.vae_scale_factor != 0:
            height = int(np.ceil(height / self.vae_scale_factor)) * self.vae_scale_factor
        return float(audio_length_in_s), height, int(audio_length_in_s * self.vocoder.config.sampling_rate)
