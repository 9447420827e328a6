"""``AudioLDMTiledPipeline``: diffusers' AudioLDM pipeline with windowed denoising, tiled VAE decode and a chunked
vocoder, so that memory does not grow with the length of the audio."""

from __future__ import annotations

import contextlib
import logging as std_logging
import math
from typing import Any, Callable, Iterator

import numpy as np
import torch
from diffusers import AudioLDMPipeline
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from diffusers.utils import logging

from .config import TilingConfig
from .denoise import denoise, plan_windows
from .memory import choose_window_batch_size
from .vae import iter_decode, tiled_decode
from .timeline import is_timeline, mix_embeddings, parse_timeline, window_mix
from .vocoder import chunked_vocode, stream_vocode

logger = logging.get_logger(__name__)

_PARENT_DEPRECATION = "has been deprecated and will not receive bug fixes"
_deprecation_shown = False


class _DropParentDeprecation(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return _PARENT_DEPRECATION not in record.getMessage()


@contextlib.contextmanager
def _parent_deprecation_once() -> Iterator[None]:
    """Show diffusers' deprecation of AudioLDMPipeline once per process, naming the parent rather than this class
    (diffusers' own message would say AudioLDMTiledPipeline is deprecated, which it is not)."""
    global _deprecation_shown
    parent_logger = logging.get_logger("diffusers.pipelines.pipeline_utils")
    drop = _DropParentDeprecation()
    parent_logger.addFilter(drop)
    try:
        yield
    finally:
        parent_logger.removeFilter(drop)
    if not _deprecation_shown:
        _deprecation_shown = True
        logger.warning(
            "diffusers' AudioLDMPipeline, which AudioLDMTiledPipeline subclasses, %s after diffusers %s; "
            "audioldm_tiled's tests guard the parts it relies on.",
            _PARENT_DEPRECATION, AudioLDMPipeline._last_supported_version,
        )


class AudioLDMTiledPipeline(AudioLDMPipeline):
    r"""Text-to-audio with AudioLDM for audio of any length.

    Same components, call signature and defaults as [`AudioLDMPipeline`]; on top of it, denoising runs on overlapping
    time windows, the VAE decode is tiled along time with GroupNorm statistics shared across tiles, and the vocoder
    runs over overlapping chunks. With windowing and tiling off, it computes exactly what the parent computes.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae->vocoder"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, vocoder):
        with _parent_deprecation_once():
            super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                             scheduler=scheduler, vocoder=vocoder)
        self.tiling = TilingConfig()

    # ----------------------------------------------------------------------------------------------- tiling switches
    def enable_vae_tiling(self, **fields: Any) -> None:
        """Always tile the VAE decode (and chunk the vocoder); keyword arguments set `TilingConfig` fields."""
        self.tiling = self.tiling.replace(enabled=True, **fields)

    def disable_vae_tiling(self) -> None:
        """Never tile: decode and vocode in one pass, failing hard when memory runs out."""
        self.tiling = self.tiling.replace(enabled=False)

    def _config_for_call(self, tiling: TilingConfig | None) -> TilingConfig:
        config = self.tiling if tiling is None else tiling
        if not isinstance(config, TilingConfig):
            raise TypeError(f"`tiling` must be a TilingConfig or None, got {type(config).__name__}")
        show = not getattr(self, "_progress_bar_config", {}).get("disable", False)
        return config.replace(show_progress=show and config.show_progress)

    # ------------------------------------------------------------------------------------------------ the two seams
    def decode_latents(self, latents: torch.Tensor, tiling: TilingConfig | None = None) -> torch.Tensor:
        """Latents (B, C, T, F) to log-mel (B, 1, 4T, n_mels), through `tiled_decode`."""
        latents = 1 / self.vae.config.scaling_factor * latents
        return tiled_decode(self.vae, latents, self._config_for_call(tiling))

    def mel_spectrogram_to_waveform(self, mel_spectrogram: torch.Tensor, tiling: TilingConfig | None = None):
        """Log-mel (B, 1, T, n_mels) or (B, T, n_mels) to float32 waveforms (B, samples) on the CPU."""
        if mel_spectrogram.dim() == 4:
            mel_spectrogram = mel_spectrogram.squeeze(1)
        waveform = chunked_vocode(self.vocoder, mel_spectrogram, self._config_for_call(tiling))
        return waveform.cpu().float()

    # ------------------------------------------------------------------------------------------------------ helpers
    def _audio_geometry(self, audio_length_in_s: float | None) -> tuple[float, int, int]:
        """(seconds, mel frames rounded up to the VAE factor, samples to keep), as the parent computes them."""
        vocoder_upsample_factor = np.prod(self.vocoder.config.upsample_rates) / self.vocoder.config.sampling_rate
        if audio_length_in_s is None:
            audio_length_in_s = self.unet.config.sample_size * self.vae_scale_factor * vocoder_upsample_factor
        if isinstance(audio_length_in_s, bool) or not isinstance(audio_length_in_s, (int, float, np.number)) or not (
            math.isfinite(audio_length_in_s) and audio_length_in_s > 0
        ):
            raise ValueError(f"`audio_length_in_s` must be a positive finite number of seconds, got {audio_length_in_s!r}")
        height = int(audio_length_in_s / vocoder_upsample_factor)
        if height % self.vae_scale_factor != 0:
            height = int(np.ceil(height / self.vae_scale_factor)) * self.vae_scale_factor
        return float(audio_length_in_s), height, int(audio_length_in_s * self.vocoder.config.sampling_rate)

    def _check_call_inputs(self, num_inference_steps: int, guidance_scale: float, output_type: str,
                           callback_on_step_end_tensor_inputs: list[str]) -> None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive int, got {num_inference_steps!r}")
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale)):
            raise ValueError(f"`guidance_scale` must be a finite number, got {guidance_scale!r}")
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'np', 'pt' or 'latent', got {output_type!r}")
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, but found {unknown}"
            )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        audio_length_in_s: float | None = None,
        num_inference_steps: int = 10,
        guidance_scale: float = 2.5,
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
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ):
        r"""Generate audio; the arguments up to ``output_type`` are the parent's, with the same defaults.

        Args:
            prompt (`str`, `list[str]` or a timeline): as in the parent, or a list of ``(start_s, text)`` /
                ``(start_s, end_s, text)`` segments for one soundscape whose text changes along time; each denoising
                window is conditioned on the segments it covers (see ``audioldm_tiled.timeline``). The negative
                prompt stays global.
            tiling (`TilingConfig`, *optional*): overrides ``pipe.tiling`` for this call (windows, VAE tiles,
                vocoder chunks).
            callback_on_step_end (`Callable`, *optional*): ``callback_on_step_end(pipe, step, timestep, kwargs)``
                called after every step with the tensors named in ``callback_on_step_end_tensor_inputs``; a returned
                ``{"latents": ...}`` replaces the latents.
            output_type: ``"np"`` (default), ``"pt"``, or ``"latent"`` to return the denoised latents undecoded.

        Returns:
            [`AudioPipelineOutput`] with ``audios`` of shape (batch, samples), float32 at the vocoder's sampling rate.
        """
        config, latents, keep = self._denoise_latents(**{k: v for k, v in locals().items() if k not in (
            "self", "return_dict", "__class__")})
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return AudioPipelineOutput(audios=latents) if return_dict else (latents,)
        mel_spectrogram = self.decode_latents(latents, config)
        audio = self.mel_spectrogram_to_waveform(mel_spectrogram, config)
        audio = audio[:, :keep]
        self.maybe_free_model_hooks()
        if output_type == "np":
            audio = audio.numpy()
        if not return_dict:
            return (audio,)
        return AudioPipelineOutput(audios=audio)

    @torch.no_grad()
    def stream(self, prompt: str | list[str] | None = None, **kwargs: Any) -> Iterator[np.ndarray]:
        """Generate like ``__call__`` and yield the waveform in pieces, float32 numpy arrays (batch, samples).

        After denoising, the VAE decode and the vocoder run tile by tile and each piece is handed out as soon as it
        is ready (fast mode: per tile; exact mode: once the last GroupNorm barrier is passed), so a one-hour render
        never holds its whole mel or waveform. ``enabled="auto"`` means tiled here; only ``enabled=False`` decodes
        in one pass. The pieces concatenate to ``__call__(...).audios`` for the same
        arguments, trimmed to ``audio_length_in_s``.
        """
        if kwargs.get("output_type", "np") != "np" or "return_dict" in kwargs:
            raise ValueError("stream() yields numpy pieces; it takes no `output_type` or `return_dict`")
        kwargs["output_type"] = "np"
        config, latents, keep = self._denoise_latents(prompt=prompt, **kwargs)
        if config.enabled == "auto":
            # Streaming is for renders whose memory must not grow with their length: tile even where an untiled
            # decode would fit today's free memory (at 600 s it would take ~14 GB and a quadratic attention).
            config = config.replace(enabled=True)
        latents = 1 / self.vae.config.scaling_factor * latents
        mel_pieces = (piece.squeeze(1) for piece in iter_decode(self.vae, latents, config))
        total_frames = latents.shape[2] * self.vae_scale_factor
        emitted = 0
        for wave in stream_vocode(self.vocoder, mel_pieces, total_frames, config):
            wave = wave[:, : max(0, keep - emitted)].cpu().float().numpy()
            emitted += wave.shape[1]
            if wave.shape[1]:
                yield wave
        self.maybe_free_model_hooks()

    def _denoise_latents(
        self,
        prompt=None,
        audio_length_in_s=None,
        num_inference_steps=10,
        guidance_scale=2.5,
        negative_prompt=None,
        num_waveforms_per_prompt=1,
        eta=0.0,
        generator=None,
        latents=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        callback=None,
        callback_steps=1,
        cross_attention_kwargs=None,
        output_type="np",
        tiling=None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs=("latents",),
    ) -> tuple[TilingConfig, torch.Tensor, int]:
        """The parent's steps 0-7: checks, prompt encoding, noise, (windowed) denoising.

        Returns the config for this call, the denoised latents and the number of samples to keep."""
        config = self._config_for_call(tiling)
        self._check_call_inputs(num_inference_steps, guidance_scale, output_type, callback_on_step_end_tensor_inputs)
        audio_length_in_s, height, original_waveform_length = self._audio_geometry(audio_length_in_s)
        vocoder_upsample_factor = np.prod(self.vocoder.config.upsample_rates) / self.vocoder.config.sampling_rate
        timeline = None
        if is_timeline(prompt):
            if prompt_embeds is not None:
                raise ValueError("a prompt timeline cannot be combined with `prompt_embeds`")
            if negative_prompt is not None and not isinstance(negative_prompt, str):
                raise ValueError("with a prompt timeline, `negative_prompt` must be one string (it is global)")
            timeline = parse_timeline(prompt, audio_length_in_s)
            prompt = [segment.text for segment in timeline]
        self.check_inputs(prompt if timeline is None else prompt[0], audio_length_in_s, vocoder_upsample_factor,
                          callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        if timeline is not None:
            batch_size = 1  # one soundscape; its segments are encoded as a batch below, with the global negative
            negative_prompt = None if negative_prompt is None else [negative_prompt] * len(timeline)
        elif prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None and isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        device = self._execution_device
        do_classifier_free_guidance = guidance_scale > 1.0

        prompt_embeds = self._encode_prompt(prompt, device, num_waveforms_per_prompt, do_classifier_free_guidance,
                                            negative_prompt, prompt_embeds=prompt_embeds,
                                            negative_prompt_embeds=negative_prompt_embeds)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(batch_size * num_waveforms_per_prompt, self.unet.config.in_channels, height,
                                       prompt_embeds.dtype, device, generator, latents)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # (windows or 1, 2 or 1, B, D): each window's negative and positive class embeddings.
        guidance_rows = 2 if do_classifier_free_guidance else 1
        plan = plan_windows(latents.shape[2], config)
        if timeline is None:
            window_embeds = prompt_embeds.view(1, guidance_rows, -1, prompt_embeds.shape[-1])
        else:
            per_segment = prompt_embeds.view(guidance_rows, len(timeline), -1, prompt_embeds.shape[-1]).transpose(0, 1)
            frames_per_second = 1 / (vocoder_upsample_factor * self.vae_scale_factor)  # latent frames per second
            mix = window_mix(timeline, plan.windows, latents.shape[2], frames_per_second)
            window_embeds = mix_embeddings(per_segment, mix)
        window_batch = config.window_batch_size or choose_window_batch_size(
            self.unet, latents, len(plan.windows), do_classifier_free_guidance, config.memory_budget)

        def step_callback(i: int, t: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
            if callback_on_step_end is not None:
                available = {"latents": current, "prompt_embeds": prompt_embeds}
                outputs = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs})
                current = (outputs or {}).get("latents", current)
            if callback is not None and i % callback_steps == 0:
                callback(i // getattr(self.scheduler, "order", 1), t, current)
            return current

        latents = denoise(self.unet, self.scheduler, latents, window_embeds, guidance_scale, config,
                          extra_step_kwargs, window_batch, lambda total: self.progress_bar(total=total),
                          step_callback, cross_attention_kwargs)

        return config, latents, original_waveform_length
