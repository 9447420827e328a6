"""What a model family supplies to the engine: ``ModelFamily``, the interface every tiled pipeline implements.

The engine (``pipeline.TiledAudioPipelineMixin``) denoises, decodes and vocodes the same way for every family; it
asks the family only what differs: the parent's defaults, the checks of its prompt arguments, how it encodes a
prompt and how that conditions each window's UNet call, what a timeline means for that conditioning, and the
latent's geometry (read from the loaded VAE's and vocoder's configs).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..audio_geometry import AudioGeometry
from ..conditioning import UNetConditioning
from ..vocoder import hop_length, receptive_field_frames


class ModelFamily:
    """The family interface, put before ``TiledAudioPipelineMixin`` in a tiled pipeline's bases. The four hooks
    that raise ``NotImplementedError`` here are the ones a family must write; the rest are read from the parent
    and the loaded components."""

    # Call arguments only this family takes, handed to its hooks as ``family_inputs`` (AudioLDM takes none).
    _family_arguments: tuple[str, ...] = ()

    def check_prompt_inputs(self, prompt, audio_length_in_s: float, vocoder_upsample_factor: float,
                             callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                             **family_inputs) -> None:
        """The parent's ``check_inputs`` for the prompt arguments (a timeline's first segment stands for it)."""
        raise NotImplementedError

    def encode_conditioning(self, prompt, device, num_waveforms_per_prompt: int, guided: bool, negative_prompt,
                             prompt_embeds, negative_prompt_embeds, **family_inputs) -> dict[str, torch.Tensor]:
        """The encoded prompt as the tensors a step-end callback sees and may replace, each with the negative rows
        first when guided; ``"prompt_embeds"`` gives the latents their dtype."""
        raise NotImplementedError

    def unet_conditioning(self, encoded: dict[str, torch.Tensor], groups: int, guided: bool,
                           mix: torch.Tensor | None) -> UNetConditioning:
        """The windows' UNet conditioning from ``encoded`` (``groups`` rows, or one per timeline segment); ``mix``
        (windows, segments) weighs a timeline's segments per window."""
        raise NotImplementedError

    def check_timeline(self, segments: list, mix: torch.Tensor) -> None:
        """Called once per render with a timeline's segments and (rows, segments) weights, to warn about what the
        family's conditioning cannot express: a row per window, or for a live render only the rows that decide
        which segments dominate a window (``timeline.deciding_mix``)."""
        raise NotImplementedError

    def reject_unknown_arguments(self, arguments: dict[str, Any]) -> None:
        """Call arguments that no field of the request and no argument of this family takes are the caller's
        mistake."""
        unknown = [name for name in arguments if name not in self._family_arguments]
        if unknown:
            raise TypeError(f"{type(self).__name__}.__call__() got unexpected keyword argument(s) "
                            f"{', '.join(map(repr, unknown))}")

    def parent_defaults(self) -> dict[str, Any]:
        """The diffusers parent's defaults of the arguments whose defaults differ between families (AudioLDM: 10
        steps, guidance 2.5; MusicLDM: 200 and 2.0; AudioLDM 2: 200 and 3.5)."""
        parent = next(c for c in type(self).__mro__ if c.__module__.startswith("diffusers.") and "__call__" in vars(c))
        return {name: p.default for name, p in inspect.signature(parent.__call__).parameters.items()
                if name in ("num_inference_steps", "guidance_scale")}

    # ---------------------------------------------------------------------------------------------------- geometry
    @property
    def geometry(self) -> AudioGeometry:
        """The family's time and frequency geometry, read from the loaded VAE, vocoder and UNet configs."""
        return AudioGeometry(
            sample_rate=int(self.vocoder.config.sampling_rate),
            mel_hop=hop_length(self.vocoder),
            mel_bands=int(self.vocoder.config.model_in_dim),
            vae_factor=int(self.vae_scale_factor),
            latent_channels=int(self.vae.config.latent_channels),
            default_frames=int(self.unet.config.sample_size),
            vocoder_context_frames=receptive_field_frames(self.vocoder),
        )
