"""``MusicLDMTiledPipeline``: diffusers' MusicLDM pipeline through the same engine as AudioLDM.

MusicLDM is AudioLDM 1's pipeline with a music-trained CLAP (``ClapModel``, text and audio towers) whose text
embedding conditions the UNet as a class label, and the same VAE shapes, 16 kHz HiFi-GAN vocoder and mel front end.
So windowed denoising, the tiled decode and encode, the chunked vocoder, streaming, timelines, audio-to-audio,
loops, continuation and regeneration apply as they are. What is its own is ``score_waveforms``: with several
waveforms per prompt, the parent ranks them by CLAP's audio-text similarity, and CLAP hears 10 s at a time, so
here each waveform is scored per 10 s window and the windows' similarities are averaged, weighted by length
(``scoring.py``, shared with AudioLDM 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import MusicLDMPipeline

from ..config import TilingConfig
from ..deprecation import parent_deprecation_once
from ..pipeline import TiledAudioPipelineMixin
from ..request import call_signature
from ..scoring import ClapRanking
from .audioldm import ClassLabelFamily


class MusicLDMTiledPipeline(ClapRanking, ClassLabelFamily, TiledAudioPipelineMixin, MusicLDMPipeline):
    r"""Text-to-music with MusicLDM for music of any length.

    Same components, call signature and defaults as [`MusicLDMPipeline`], with everything
    [`AudioLDMTiledPipeline`] adds (``tiling=``, ``stream()``, timelines, ``audio=``, ``loop=``, ``extend_s=``,
    ``regenerate=``). With several waveforms per prompt they are returned best first, scored per 10 s window.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae->vocoder"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(self, vae, text_encoder, tokenizer, feature_extractor, unet, scheduler, vocoder):
        with parent_deprecation_once(MusicLDMPipeline, type(self).__name__):
            super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                             feature_extractor=feature_extractor, unet=unet, scheduler=scheduler, vocoder=vocoder)
        self._init_tiling()

    def _text_features(self, texts: list[str], device, max_length: int | None = None) -> torch.Tensor:
        """CLAP's projected text embedding of each text, its tokens cut at ``max_length`` (the tokenizer's
        ``model_max_length`` by default; the parent cuts a negative prompt at the embedding's width). Under
        transformers 5 ``ClapModel.get_text_features`` returns an output whose ``pooler_output`` is the tensor
        transformers 4 returns, on which the parent's ``_encode_prompt`` fails; both are taken here."""
        inputs = self.tokenizer(texts, padding="max_length", max_length=max_length or self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        features = self.text_encoder.get_text_features(inputs.input_ids.to(device),
                                                       attention_mask=inputs.attention_mask.to(device))
        return getattr(features, "pooler_output", features)

    def _encode_prompt(self, prompt, device, num_waveforms_per_prompt, do_classifier_free_guidance,
                       negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None) -> torch.Tensor:
        """What the parent's ``_encode_prompt`` computes: one text embedding per waveform (``prompt_embeds`` if
        given), preceded with guidance by as many of the negative prompt's (the empty text's by default)."""
        if prompt_embeds is None:
            prompt_embeds = self._text_features([prompt] if isinstance(prompt, str) else list(prompt), device)
        dtype = self.text_encoder.text_model.dtype
        prompt_embeds = prompt_embeds.to(dtype=dtype, device=device).repeat_interleave(num_waveforms_per_prompt, 0)
        if not do_classifier_free_guidance:
            return prompt_embeds
        batch = prompt_embeds.shape[0] // num_waveforms_per_prompt
        if negative_prompt_embeds is None:
            if negative_prompt is None:
                negatives = [""] * batch
            elif isinstance(negative_prompt, str):
                negatives = [negative_prompt] * batch
            elif len(negative_prompt) == batch:
                negatives = list(negative_prompt)
            else:
                raise ValueError(f"`negative_prompt` has {len(negative_prompt)} texts for {batch} prompts")
            negative_prompt_embeds = self._text_features(negatives, device, max_length=prompt_embeds.shape[1])
        negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device).repeat_interleave(
            num_waveforms_per_prompt, 0)
        return torch.cat([negative_prompt_embeds, prompt_embeds])

    @torch.no_grad()
    @call_signature("_ranked_call")
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        audio_length_in_s: float | None = None,
        num_inference_steps: int = 200,
        guidance_scale: float = 2.0,
        negative_prompt: str | list[str] | None = None,
        num_waveforms_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int | None = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        output_type: str | None = "np",
        tiling: TilingConfig | None = None,
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
        audio: str | Any | None = None,
        strength: float | None = None,
        loop: bool = False,
        extend_s: float | None = None,
        regenerate: tuple[float, float] | list[tuple[float, float]] | None = None,
        context_s: float | None = None,
        crossfade_s: float | None = None,
        ranks: str | Any | None = None,
    ):
        """Generate music. The arguments up to ``output_type`` are the parent's, with its defaults (200 steps,
        guidance 2.0); the rest are ``AudioLDMTiledPipeline.__call__``'s. With ``num_waveforms_per_prompt`` > 1
        and a text prompt, each prompt's waveforms are ordered by ``score_waveforms``, best first, as the parent
        orders them."""
