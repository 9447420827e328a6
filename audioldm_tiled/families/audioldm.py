"""``AudioLDMTiledPipeline``: diffusers' AudioLDM pipeline through the engine, and ``ClassLabelFamily``, the
conditioning AudioLDM and MusicLDM share: CLAP's text embedding, one row per waveform (negatives first), enters the
UNet as a class label; along a timeline each window gets the blend of the segments it covers."""

from __future__ import annotations

import torch
from diffusers import AudioLDMPipeline

from ..conditioning import UNetConditioning, class_labels, guidance_rows
from ..deprecation import parent_deprecation_once
from ..pipeline import TiledAudioPipelineMixin
from ..timeline import mix_embeddings
from .base import ModelFamily


class ClassLabelFamily(ModelFamily):
    """The family interface for a parent with AudioLDM's ``check_inputs`` and ``_encode_prompt``."""

    def check_prompt_inputs(self, prompt, audio_length_in_s, vocoder_upsample_factor, callback_steps,
                             negative_prompt, prompt_embeds, negative_prompt_embeds) -> None:
        self.check_inputs(prompt, audio_length_in_s, vocoder_upsample_factor, callback_steps, negative_prompt,
                          prompt_embeds, negative_prompt_embeds)

    def encode_conditioning(self, prompt, device, num_waveforms_per_prompt, guided, negative_prompt,
                             prompt_embeds, negative_prompt_embeds) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": self._encode_prompt(prompt, device, num_waveforms_per_prompt, guided,
                                                     negative_prompt, prompt_embeds=prompt_embeds,
                                                     negative_prompt_embeds=negative_prompt_embeds)}

    def unet_conditioning(self, encoded: dict[str, torch.Tensor], groups: int, guided: bool,
                           mix: torch.Tensor | None) -> UNetConditioning:
        """Class embeddings, blended per window along a timeline (``timeline.mix_embeddings``)."""
        rows = guidance_rows(encoded["prompt_embeds"], groups, guided)
        if mix is None:
            return class_labels(rows[None])  # (1, 2 or 1, B, D)
        return class_labels(mix_embeddings(rows.transpose(0, 1)[:, :, None], mix))  # (W, 2 or 1, 1, D)

    def check_timeline(self, segments: list, mix: torch.Tensor) -> None:
        """Every segment a window covers is blended into its conditioning, so each is heard: nothing to warn."""


class AudioLDMTiledPipeline(ClassLabelFamily, TiledAudioPipelineMixin, AudioLDMPipeline):
    r"""Text-to-audio with AudioLDM for audio of any length.

    Same components, call signature and defaults as [`AudioLDMPipeline`]; on top of it, denoising runs on overlapping
    time windows, the VAE decode is tiled along time with GroupNorm statistics shared across tiles, and the vocoder
    runs over overlapping chunks. With windowing and tiling off, it computes exactly what the parent computes.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae->vocoder"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, vocoder):
        with parent_deprecation_once(AudioLDMPipeline, type(self).__name__):
            super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                             scheduler=scheduler, vocoder=vocoder)
        self._init_tiling()
