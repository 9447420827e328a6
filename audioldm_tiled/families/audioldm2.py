"""``AudioLDM2TiledPipeline``: diffusers' AudioLDM 2 pipeline through the same engine as AudioLDM.

AudioLDM 2 shares AudioLDM's VAE shapes, 16 kHz HiFi-GAN vocoder and mel front end, so the tiled decode and
encode, the chunked vocoder, streaming, audio-to-audio, loops, continuation, regeneration and the ranks apply as
they are. Its conditioning differs, and is what this module supplies to the engine's family hooks: the prompt is
encoded by CLAP and FLAN-T5, projected, and GPT-2 generates eight vectors from it (the "language of audio"); the
UNet cross-attends to those and to the T5 sequence with its padding mask (``conditioning.cross_attention``).

A timeline switches each window to the segment that covers most of it (``timeline.dominant_segments``), and the
window overlaps crossfade between them: the merge weights ramp one window's prediction down over the frames where
the next one's ramps up (96 latent frames, 3.84 s, by default). The sequences are not blended: token ``k`` of one
prompt's T5 sequence has nothing to do with token ``k`` of another's, their paddings differ, and an average of
GPT-2's generated vectors lies where the UNet was never trained. So a segment must cover most of at least one
window (a little over 5 s with the default windows) to be heard; a shorter one is named in a warning.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from diffusers import AudioLDM2Pipeline
from diffusers.utils import logging

from ..conditioning import UNetConditioning, cross_attention, guidance_rows
from ..config import TilingConfig
from ..pipeline import TiledAudioPipelineMixin
from ..request import call_signature
from ..scoring import ClapRanking
from ..timeline import Segment, dominant_segments

logger = logging.get_logger(__name__)

# The encoded prompt, as a step-end callback sees it: the T5 sequence, its mask and GPT-2's generated vectors.
_SEQUENCES = ("prompt_embeds", "attention_mask", "generated_prompt_embeds")


class AudioLDM2TiledPipeline(ClapRanking, TiledAudioPipelineMixin, AudioLDM2Pipeline):
    r"""Text-to-audio with AudioLDM 2 for audio of any length.

    Same components, call signature and defaults as [`AudioLDM2Pipeline`] (200 steps, guidance 3.5), with
    everything [`AudioLDMTiledPipeline`] adds: ``tiling=``, ``stream()``, timelines, ``audio=`` and ``strength=``,
    ``loop=``, ``extend_s=``, ``regenerate=``, ``context_s=``, ``crossfade_s=``, ``callback_on_step_end=`` and
    rendering over the ranks of a process group. With windowing and tiling off, it computes what the parent
    computes. With several waveforms per prompt they are returned best first, each prompt's among its own, scored
    per 10 s window (``scoring.py``).
    """

    _callback_tensor_inputs = ["latents", *_SEQUENCES]
    _family_arguments = ("transcription", "generated_prompt_embeds", "negative_generated_prompt_embeds",
                         "attention_mask", "negative_attention_mask", "max_new_tokens")

    def __init__(self, vae, text_encoder, text_encoder_2, projection_model, language_model, tokenizer, tokenizer_2,
                 feature_extractor, unet, scheduler, vocoder):
        super().__init__(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                         projection_model=projection_model, language_model=language_model, tokenizer=tokenizer,
                         tokenizer_2=tokenizer_2, feature_extractor=feature_extractor, unet=unet, scheduler=scheduler,
                         vocoder=vocoder)
        self._init_tiling()

    @torch.no_grad()
    @call_signature("_ranked_call")
    def __call__(
        self,
        prompt=None,
        transcription=None,
        audio_length_in_s=None,
        num_inference_steps: int = 200,
        guidance_scale: float = 3.5,
        negative_prompt=None,
        num_waveforms_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator=None,
        latents=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        generated_prompt_embeds=None,
        negative_generated_prompt_embeds=None,
        attention_mask=None,
        negative_attention_mask=None,
        max_new_tokens: int | None = None,
        return_dict: bool = True,
        callback=None,
        callback_steps: int | None = 1,
        cross_attention_kwargs=None,
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
        r"""Generate audio. The arguments up to ``output_type`` are the parent's, with its defaults; ``prompt`` may
        also be a timeline. The rest are what ``AudioLDMTiledPipeline.__call__`` adds, documented there;
        ``callback_on_step_end`` is handed ``"latents"``, ``"prompt_embeds"``, ``"attention_mask"`` and
        ``"generated_prompt_embeds"``, negative rows first."""

    # ------------------------------------------------------------------------------------------------ family hooks
    def check_prompt_inputs(self, prompt, audio_length_in_s, vocoder_upsample_factor, callback_steps,
                             negative_prompt, prompt_embeds, negative_prompt_embeds, transcription=None,
                             generated_prompt_embeds=None, negative_generated_prompt_embeds=None,
                             attention_mask=None, negative_attention_mask=None, max_new_tokens=None,
                             ) -> None:
        self.check_inputs(prompt, audio_length_in_s, vocoder_upsample_factor, callback_steps, transcription,
                          negative_prompt, prompt_embeds, negative_prompt_embeds, generated_prompt_embeds,
                          negative_generated_prompt_embeds, attention_mask, negative_attention_mask)
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                           or max_new_tokens < 1):
            raise ValueError(f"`max_new_tokens` must be a positive integer or None, got {max_new_tokens!r}")

    def encode_conditioning(self, prompt, device, num_waveforms_per_prompt, guided, negative_prompt,
                             prompt_embeds, negative_prompt_embeds, **family_inputs) -> dict[str, torch.Tensor]:
        """The parent's ``encode_prompt``: the T5 sequence, its mask and GPT-2's generated vectors."""
        encoded = self.encode_prompt(prompt, device, num_waveforms_per_prompt, guided,
                                     negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                                     negative_prompt_embeds=negative_prompt_embeds, **family_inputs)
        return dict(zip(_SEQUENCES, encoded))

    def unet_conditioning(self, encoded: dict[str, torch.Tensor], groups: int, guided: bool,
                           mix: torch.Tensor | None) -> UNetConditioning:
        """Each window cross-attends to its rows' sequences; along a timeline, to its dominant segment's."""
        rows = {name: guidance_rows(encoded[name], groups, guided, name) for name in _SEQUENCES}
        if mix is None:
            sets = {name: r[None] for name, r in rows.items()}  # (1, 2 or 1, B, ...)
            index = None
        else:
            sets = {name: r.transpose(0, 1)[:, :, None] for name, r in rows.items()}  # (segments, 2 or 1, 1, ...)
            index = dominant_segments(mix)
        return cross_attention(sets["generated_prompt_embeds"], sets["prompt_embeds"], sets["attention_mask"],
                               index)

    def check_timeline(self, segments: list[Segment], mix: torch.Tensor) -> None:
        heard = set(dominant_segments(mix))
        unheard = [f"{s.start_s:g}-{s.end_s:g} s {s.text!r}" for i, s in enumerate(segments) if i not in heard]
        if unheard:
            logger.warning("AudioLDM 2 conditions each denoising window on the timeline segment covering most of it; "
                           f"these segments cover most of no window and will not be heard: {'; '.join(unheard)}. "
                           "Lengthen them, or shorten the windows (TilingConfig.window_frames).")

    # ---------------------------------------------------------------------------------------------------- GPT-2
    def generate_language_model(self, inputs_embeds: torch.Tensor, max_new_tokens: int | None = 8,
                                attention_mask: torch.Tensor | None = None, **model_kwargs) -> torch.Tensor:
        """GPT-2's next ``max_new_tokens`` hidden states after ``inputs_embeds``, each fed back as the next input,
        with a key-value cache: what the parent computes under transformers 4. The parent's loop calls
        ``GPT2Model._update_model_kwargs_for_generation``, which transformers 5's ``GPT2Model`` no longer has."""
        max_new_tokens = self.language_model.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        # transformers 5 names the key-value cache `cache`, transformers 4 `past_key_values`
        parameters = inspect.signature(type(self.language_model).forward).parameters
        cache_name = "cache" if "cache" in parameters else "past_key_values"
        step_input, cache = inputs_embeds, None
        for _ in range(max_new_tokens):
            output = self.language_model(inputs_embeds=step_input, attention_mask=attention_mask,
                                         **{cache_name: cache}, use_cache=True, output_hidden_states=True,
                                         return_dict=True, **model_kwargs)
            step_input = output.hidden_states[-1][:, -1:, :]
            inputs_embeds = torch.cat([inputs_embeds, step_input], dim=1)
            cache = getattr(output, cache_name)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], 1)
        return inputs_embeds[:, -max_new_tokens:, :]
