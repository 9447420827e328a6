"""``AudioLDMTiledPipeline``: diffusers' AudioLDM pipeline with windowed denoising, tiled VAE decode and a chunked
vocoder, so that memory does not grow with the length of the audio."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from diffusers import AudioLDMPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from .audio import MelSettings, mel_for_vae
from .call_inputs import check_call_arguments, check_latents, check_length_fits, read_input_audio
from .conditioning import UNetConditioning, class_labels, guidance_rows
from .config import TilingConfig
from .denoise import denoise, plan_windows
from .deprecation import parent_deprecation_once
from .distributed import current_ranks, smallest, together
from .distributed_decode import waveform_on_ranks
from .editing import Edit, KnownRegion, plan_edit
from .memory import choose_window_batch_size
from .timeline import is_timeline, mix_embeddings, parse_timeline, window_mix
from .vae import check_exact_decode_fits, decode_tiles, iter_decode, tiled_decode, tiled_encode
from .vocoder import chunked_vocode, hop_length, plan_chunks, stream_vocode, vocode_loop

logger = logging.get_logger(__name__)

class TiledAudioPipelineMixin:
    """The engine every tiled pipeline shares, put before a diffusers audio pipeline in the bases: windowed
    denoising (loops, timelines, known regions, ranks), the tiled VAE decode and encode and the chunked vocoder.
    The pipeline calls ``_init_tiling()`` in its ``__init__`` and supplies ``prepare_latents`` with diffusers'
    signature; how it checks and encodes its prompt and conditions its UNet are the three family hooks below,
    written here for AudioLDM's ``check_inputs`` and ``_encode_prompt`` (one CLAP row per waveform, negatives
    first) and overridden by families that condition otherwise (``audioldm2.py``)."""

    def _init_tiling(self) -> None:
        self.tiling = TilingConfig()
        # What diffusers' callbacks read and set during a call (see the properties below).
        self._guidance_scale, self._num_timesteps, self._interrupt = 2.5, 0, False

    # ------------------------------------------------------------------------------- diffusers' callback interface
    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the call in progress; a step-end callback may change it for the steps after."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the call in progress (fewer than ``num_inference_steps`` in audio-to-audio)."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` from a callback to stop denoising after the current step."""
        return self._interrupt

    # -------------------------------------------------------------------------------------------------- family hooks
    def _check_prompt_inputs(self, prompt, audio_length_in_s, vocoder_upsample_factor, callback_steps,
                             negative_prompt, prompt_embeds, negative_prompt_embeds, **family_inputs) -> None:
        """The parent's ``check_inputs``; ``family_inputs`` are the call's arguments that only some families take
        (AudioLDM takes none)."""
        self._reject_unknown(family_inputs)
        self.check_inputs(prompt, audio_length_in_s, vocoder_upsample_factor, callback_steps, negative_prompt,
                          prompt_embeds, negative_prompt_embeds)

    def _reject_unknown(self, arguments: dict[str, Any]) -> None:
        """Call arguments that reached the family hooks without a family taking them are the caller's mistake."""
        if arguments:
            raise TypeError(f"{type(self).__name__}.__call__() got unexpected keyword argument(s) "
                            f"{', '.join(map(repr, arguments))}")

    def _encode_conditioning(self, prompt, device, num_waveforms_per_prompt, guided, negative_prompt,
                             prompt_embeds, negative_prompt_embeds, **family_inputs) -> dict[str, torch.Tensor]:
        """The encoded prompt as the tensors a step-end callback sees and may replace, each with the negative rows
        first when guided; ``"prompt_embeds"`` gives the latents their dtype."""
        return {"prompt_embeds": self._encode_prompt(prompt, device, num_waveforms_per_prompt, guided,
                                                     negative_prompt, prompt_embeds=prompt_embeds,
                                                     negative_prompt_embeds=negative_prompt_embeds)}

    def _unet_conditioning(self, encoded: dict[str, torch.Tensor], groups: int, guided: bool,
                           mix: torch.Tensor | None) -> UNetConditioning:
        """The windows' UNet conditioning from ``encoded`` (``groups`` rows, or one per timeline segment); ``mix``
        (windows, segments) weighs a timeline's segments per window. AudioLDM's class embeddings are blended
        (``timeline.mix_embeddings``)."""
        rows = guidance_rows(encoded["prompt_embeds"], groups, guided)
        if mix is None:
            return class_labels(rows[None])  # (1, 2 or 1, B, D)
        return class_labels(mix_embeddings(rows.transpose(0, 1)[:, :, None], mix))  # (W, 2 or 1, 1, D)

    def _check_timeline(self, segments: list, mix: torch.Tensor) -> None:
        """Called once per call with a timeline's segments and their (windows, segments) weights; AudioLDM blends
        every segment a window covers, so each is heard."""

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
    def _parent_defaults(self) -> dict[str, Any]:
        """The diffusers parent's defaults of the arguments whose defaults differ between families (AudioLDM: 10
        steps, guidance 2.5; MusicLDM: 200 and 2.0; AudioLDM 2: 200 and 3.5)."""
        parent = next(c for c in type(self).__mro__ if c.__module__.startswith("diffusers.") and "__call__" in vars(c))
        return {name: p.default for name, p in inspect.signature(parent.__call__).parameters.items()
                if name in ("num_inference_steps", "guidance_scale")}

    @property
    def _mel_frame_seconds(self) -> float:
        """Seconds per mel frame: the vocoder's hop over its sampling rate (the parent's vocoder_upsample_factor)."""
        return hop_length(self.vocoder) / self.vocoder.config.sampling_rate

    @property
    def _latent_rows(self) -> int:
        """Frequency rows of the latent: the vocoder's mel bands over the VAE's downsampling."""
        return int(self.vocoder.config.model_in_dim) // self.vae_scale_factor

    def _audio_geometry(self, audio_length_in_s: float | None) -> tuple[float, int, int]:
        """(seconds, mel frames rounded up to the VAE factor, samples to keep), as the parent computes them."""
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

    def _noised_input(self, mel, batch, strength, num_inference_steps, dtype, device, generator, config):
        """SDEdit's start: the input's latent (the posterior mean, tiled encode) noised to the timestep where
        ``int(num_inference_steps * strength)`` steps remain, and those timesteps."""
        posterior = tiled_encode(self.vae, mel.to(device=device, dtype=self.vae.dtype), config)
        init = (posterior.mode() * self.vae.config.scaling_factor).to(dtype).repeat(batch, 1, 1, 1)
        steps = min(int(num_inference_steps * strength), num_inference_steps)
        start = (num_inference_steps - steps) * self.scheduler.order
        timesteps = self.scheduler.timesteps[start:]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        if steps == 0:
            return init, timesteps
        noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
        return self.scheduler.add_noise(init, noise, timesteps[:1].repeat(batch)), timesteps

    def seam_positions(self, audio_length_in_s: float | None = None,
                       tiling: TilingConfig | None = None) -> dict[str, list[float]]:
        """Where the pieces of a streamed render (``stream()``, the CLI) meet, in seconds: interior edges of the
        denoising windows, and the core boundaries of the VAE tiles and the vocoder chunks (for seam checks and
        ``plots.spectrogram_figure``). Each list is empty where that stage runs in one piece."""
        config = self._config_for_call(tiling)
        _, height, _ = self._audio_geometry(audio_length_in_s)
        frames = height // self.vae_scale_factor
        mel_seconds = self._mel_frame_seconds
        latent_seconds = self.vae_scale_factor * mel_seconds
        windows = plan_windows(frames, config).windows
        edges = sorted({w.start for w in windows[1:]} | {w.stop for w in windows[:-1]})
        # Shape, dtype and device are all the planners read: a zero-stride tensor stands in for the latents.
        device = self._execution_device
        latents = torch.empty((), device=device, dtype=self.vae.dtype).expand(
            1, self.vae.config.latent_channels, frames, self._latent_rows)
        tiles = [] if config.enabled is False else decode_tiles(self.vae, latents, config)
        mel = torch.empty((), device=device, dtype=self.vocoder.dtype).expand(1, 1, self.vocoder.config.model_in_dim)
        chunks = plan_chunks(self.vocoder, mel, height, config)
        return {
            "denoising windows": [round(e * latent_seconds, 6) for e in edges],
            "VAE tiles": [round(t.core_start * latent_seconds, 6) for t in tiles[1:]],
            "vocoder chunks": [round(c.core_start * mel_seconds, 6) for c in chunks[1:]],
        }

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
        callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
        audio: str | Any | None = None,
        strength: float | None = None,
        loop: bool = False,
        extend_s: float | None = None,
        regenerate: tuple[float, float] | list[tuple[float, float]] | None = None,
        context_s: float | None = None,
        crossfade_s: float | None = None,
        **family_inputs: Any,
    ):
        r"""Generate audio; the arguments up to ``output_type`` are the parent's, with the same defaults.

        Args:
            prompt (`str`, `list[str]` or a timeline): as in the parent, or a list of ``(start_s, text)`` /
                ``(start_s, end_s, text)`` segments for one soundscape whose text changes along time; each denoising
                window is conditioned on the segments it covers (see ``audioldm_tiled.timeline``). The negative
                prompt stays global.
            tiling (`TilingConfig`, *optional*): overrides ``pipe.tiling`` for this call (windows, VAE tiles,
                vocoder chunks).
            callback_on_step_end (`Callable` or diffusers' `PipelineCallback`, *optional*):
                ``callback_on_step_end(pipe, step, timestep, kwargs)`` called after every step with the tensors named
                in ``callback_on_step_end_tensor_inputs`` (``"latents"``, ``"prompt_embeds"``: the negative rows,
                then the conditional ones; for a timeline one row per segment each). Returned ``latents`` or
                ``prompt_embeds`` (the conditional rows alone once guidance is off) are used from the next step on,
                and so are ``pipe._guidance_scale`` and ``pipe._interrupt = True`` (stop after this step) if set, as
                ``diffusers.callbacks.SDCFGCutoffCallback`` does.
            output_type: ``"np"`` (default), ``"pt"``, or ``"latent"`` to return the denoised latents undecoded.
            audio (path, numpy array or tensor, *optional*): restyle this recording instead of starting from noise
                (audio-to-audio, SDEdit): a file soundfile reads (downmixed, resampled), or mono/(samples, channels)
                samples at the vocoder's rate (16 kHz). Any length: it is encoded with the tiled VAE encoder and the
                output has its length (``audio_length_in_s`` must then be None).
            strength (`float`, *optional*, 0.5 when omitted): with ``audio`` only, in (0, 1]: how far towards
                noise the input is taken before denoising; ``int(num_inference_steps * strength)`` steps run. 1 keeps
                only the input's length; where no step runs (tiny strengths) the result is the input through the VAE
                and vocoder. Inputs shorter than the front end's n_fft (1024 samples, 64 ms) are padded with silence
                for the encoding; the output has the input's length.
            loop (`bool`, *optional*, False): make a seamless loop: the latent is circular, so the denoising
                windows, the VAE decode and the vocoder all wrap around the end, and the waveform's last sample
                runs on into its first. It lasts ``audio_length_in_s`` rounded up to whole latent frames (40 ms), so
                that the wrap falls on the period. A timeline's last segment flows into its first.
            extend_s (`float`, *optional*): continue ``audio`` by this many seconds. The input's latents are kept
                as a known region while the rest is denoised from noise (``audioldm_tiled.editing``); the output
                is the input's original samples, untouched, then the continuation, joined by an equal-power
                crossfade of ``crossfade_s`` over the input's last samples.
            regenerate (`(start_s, end_s)` or a list of them, *optional*): remake these spans of ``audio`` (for
                example ``(130, 145)``); the output has the input's length and is its original samples, bit for
                bit, outside the spans. Each span's ends crossfade inside it.
            context_s (`float`, *optional*): with ``extend_s``, encode only the input's last ``context_s``
                seconds as context (default: all of it); with ``regenerate``, the seconds of the input on each
                side of the spans that are encoded and denoised with them (default 5.12, half a training window).
            crossfade_s (`float`, *optional*, 0.25): length of each crossfade between original and generated
                audio.

        Returns:
            [`AudioPipelineOutput`] with ``audios`` of shape (batch, samples), float32 at the vocoder's sampling rate.
        """
        arguments = {k: v for k, v in locals().items() if k not in ("self", "return_dict", "__class__",
                                                                     "family_inputs")}
        config, latents, keep, edit = self._denoise_latents(**arguments, **family_inputs)
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return AudioPipelineOutput(audios=latents) if return_dict else (latents,)
        ranks = current_ranks()
        if loop or edit is not None:  # a loop's decode wraps around; an edit is assembled with the input's samples
            pieces = self._stream_latents(latents, keep, config, loop=loop, edit=edit, root=None)
            audio = torch.from_numpy(np.concatenate(list(pieces), axis=1))
        elif ranks is None:
            mel_spectrogram = self.decode_latents(latents, config)
            audio = self.mel_spectrogram_to_waveform(mel_spectrogram, config)[:, :keep]
        else:  # decoded and vocoded by all ranks, and every rank returns the whole waveform
            latents = 1 / self.vae.config.scaling_factor * latents
            audio = torch.cat(list(waveform_on_ranks(self.vae, self.vocoder, latents, config, ranks, root=None)),
                              dim=-1).cpu().float()[:, :keep]
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

        Under a ``torch.distributed`` process group every rank must iterate it: all ranks denoise, decode and
        vocode their shares, and the pieces come out on rank 0 only (in order; the other ranks yield nothing).
        """
        if kwargs.get("output_type", "np") != "np" or "return_dict" in kwargs:
            raise ValueError("stream() yields numpy pieces; it takes no `output_type` or `return_dict`")
        kwargs = {**self._parent_defaults(), **kwargs, "output_type": "np"}
        config, latents, keep, edit = self._denoise_latents(prompt=prompt, **kwargs)
        yield from self._stream_latents(latents, keep, config, loop=kwargs.get("loop", False), edit=edit)
        self.maybe_free_model_hooks()

    @torch.no_grad()
    def stream_latents(self, latents: torch.Tensor, audio_length_in_s: float | None = None,
                       tiling: TilingConfig | None = None) -> Iterator[np.ndarray]:
        """Decode latents returned by ``output_type="latent"`` (perhaps saved, on another machine) and yield the
        waveform in pieces like ``stream()``: tiled VAE decode and chunked vocoder. ``audio_length_in_s`` trims
        the result (the latents cover it rounded up to whole latent frames)."""
        if not isinstance(latents, torch.Tensor) or latents.dim() != 4:
            raise ValueError(f"`latents` must be a tensor (B, C, T, F), got {getattr(latents, 'shape', type(latents))}")
        rate = self.vocoder.config.sampling_rate
        samples = latents.shape[2] * self.vae_scale_factor * hop_length(self.vocoder)
        keep = samples if audio_length_in_s is None else int(audio_length_in_s * rate)
        if not 0 < keep <= samples:
            raise ValueError(f"`audio_length_in_s` must be in (0, {samples / rate:g}] s for these latents, got "
                             f"{audio_length_in_s!r}")
        latents = latents.to(device=self._execution_device, dtype=self.vae.dtype)
        yield from self._stream_latents(latents, keep, self._config_for_call(tiling))
        self.maybe_free_model_hooks()

    def _stream_latents(self, latents: torch.Tensor, keep: int, config: TilingConfig, loop: bool = False,
                        edit: Edit | None = None, root: int | None = 0) -> Iterator[np.ndarray]:
        """The waveform of denoised ``latents`` in pieces, trimmed to ``keep`` samples: a loop's wrapping around,
        an edit's assembled with the input's samples. Across ranks the pieces come out on ``root`` (None: on every
        rank)."""
        ranks = current_ranks()
        pieces = self._waveform_pieces(latents, keep, config, loop, ranks, root)
        if edit is None:
            yield from pieces
        elif ranks is None or root is None or ranks.rank == root:
            yield from edit.assemble(pieces)
        else:
            for _ in pieces:  # this rank's share; the pieces come out on the root
                pass

    def _waveform_pieces(self, latents, keep, config, loop, ranks, root) -> Iterator[np.ndarray]:
        if config.enabled == "auto":
            # Streaming is for renders whose memory must not grow with their length: tile even where an untiled
            # decode would fit today's free memory (at 600 s it would take ~14 GB and a quadratic attention).
            config = config.replace(enabled=True)
        latents = 1 / self.vae.config.scaling_factor * latents
        if loop:
            mel_pieces = (piece.squeeze(1) for piece in iter_decode(self.vae, latents, config, circular=True))
            waves = vocode_loop(self.vocoder, mel_pieces, config)
        elif ranks is None:
            mel_pieces = (piece.squeeze(1) for piece in iter_decode(self.vae, latents, config))
            waves = stream_vocode(self.vocoder, mel_pieces, latents.shape[2] * self.vae_scale_factor, config)
        else:  # decoded and vocoded by all ranks; the pieces arrive in order on the root
            waves = waveform_on_ranks(self.vae, self.vocoder, latents, config, ranks, root=root)
        emitted = 0
        for wave in waves:
            wave = wave[:, : max(0, keep - emitted)].cpu().float().numpy()
            emitted += wave.shape[1]
            if wave.shape[1]:
                yield wave

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
        audio=None,
        strength=None,
        loop=False,
        extend_s=None,
        regenerate=None,
        context_s=None,
        crossfade_s=None,
        **family_inputs,
    ) -> tuple[TilingConfig, torch.Tensor, int, Edit | None]:
        """The parent's steps 0-7: checks, prompt encoding, noise (or the encoded input audio, noised to
        ``strength``), (windowed) denoising.

        Returns the config for this call, the denoised latents, the number of samples to keep and the edit (a
        continuation or regeneration) whose output they make, if any."""
        config = self._config_for_call(tiling)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        num_inference_steps, guidance_scale, num_waveforms_per_prompt = check_call_arguments(
            self, prompt, num_inference_steps, guidance_scale, num_waveforms_per_prompt, output_type,
            callback_on_step_end_tensor_inputs)
        input_mel = None
        ranks = current_ranks()  # a process group: the windows are shared out over its ranks
        if not isinstance(loop, bool):
            raise ValueError(f"`loop` must be True or False, got {loop!r}")
        if loop and audio is not None:
            raise ValueError("`loop=True` makes a new loop; it cannot restyle `audio` (loop the input's continuation "
                             "or a regenerated span in a second call instead)")
        if loop and ranks is not None:
            raise ValueError("`loop=True` is rendered in one process; run it without a process group")
        edit = None
        if any(value is not None for value in (extend_s, regenerate, context_s, crossfade_s)):
            edit = self._plan_edit(audio, extend_s, regenerate, context_s, crossfade_s, strength,
                                   audio_length_in_s, latents, prompt, num_waveforms_per_prompt)
            audio, audio_length_in_s = None, edit.latent_frames * self.vae_scale_factor * self._mel_frame_seconds
        if audio is not None:
            strength = 0.5 if strength is None else strength
            input_mel, input_samples = read_input_audio(self, audio, strength, audio_length_in_s, latents)
            audio_length_in_s = input_mel.shape[2] * self._mel_frame_seconds  # padded to whole latent frames
        elif strength is not None:
            raise ValueError("`strength` goes with `audio` (how far the input is taken towards noise); "
                             "without `audio` the render starts from noise")
        audio_length_in_s, height, original_waveform_length = self._audio_geometry(audio_length_in_s)
        if input_mel is not None:  # every input sample is encoded: the mel is padded up to whole latent frames
            height, original_waveform_length = input_mel.shape[2], input_samples
        vocoder_upsample_factor = self._mel_frame_seconds
        timeline = None
        if is_timeline(prompt):
            if prompt_embeds is not None:
                raise ValueError("a prompt timeline cannot be combined with `prompt_embeds`")
            if negative_prompt is not None and not isinstance(negative_prompt, str):
                raise ValueError("with a prompt timeline, `negative_prompt` must be one string (it is global)")
            timeline = parse_timeline(prompt, audio_length_in_s)
            prompt = [segment.text for segment in timeline]
        self._check_prompt_inputs(prompt if timeline is None else prompt[0], audio_length_in_s,
                                  vocoder_upsample_factor, callback_steps, negative_prompt, prompt_embeds,
                                  negative_prompt_embeds, **family_inputs)
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
        frames = height // self.vae_scale_factor
        check_length_fits(self, batch_size * num_waveforms_per_prompt, frames, audio_length_in_s)
        if latents is not None:
            check_latents(self, latents, batch_size * num_waveforms_per_prompt, frames)
        self._guidance_scale, self._interrupt = guidance_scale, False
        do_classifier_free_guidance = self.do_classifier_free_guidance

        current = self._encode_conditioning(prompt, device, num_waveforms_per_prompt, do_classifier_free_guidance,
                                            negative_prompt, prompt_embeds, negative_prompt_embeds, **family_inputs)
        dtype = current["prompt_embeds"].dtype
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        known = None
        if input_mel is None:
            latents = self.prepare_latents(batch_size * num_waveforms_per_prompt, self.unet.config.in_channels,
                                           height, dtype, device, generator, latents)
            if edit is not None:
                known = self._known_region(edit, latents, generator, config)
                latents = known.replace(latents, timesteps[0])
        else:
            latents, timesteps = self._noised_input(input_mel, batch_size * num_waveforms_per_prompt, strength,
                                                    num_inference_steps, dtype, device, generator,
                                                    config)
        self._num_timesteps = len(timesteps)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        if loop or edit is not None:  # a loop's period, or the whole generated range of an edit
            original_waveform_length = height * hop_length(self.vocoder)
        if output_type != "latent" or ranks is not None:
            # Fail now rather than after the denoising if the decode cannot fit; with ranks, all of them fail.
            together(ranks, lambda: output_type == "latent" or check_exact_decode_fits(self.vae, latents, config))

        # Read at every step: a callback may turn guidance off (diffusers' SDCFGCutoffCallback) or change the
        # embeddings. For a timeline the embeddings are per segment, blended per window by the family.
        plan = plan_windows(latents.shape[2], config, circular=loop)
        groups = batch_size * num_waveforms_per_prompt if timeline is None else len(timeline)
        mix = None if timeline is None else window_mix(timeline, plan.windows, latents.shape[2],
                                                        1 / (vocoder_upsample_factor * self.vae_scale_factor))
        if mix is not None:
            self._check_timeline(timeline, mix)

        def conditioning() -> tuple[UNetConditioning, float]:
            guided = self.do_classifier_free_guidance
            return self._unet_conditioning(current, groups, guided, mix), self._guidance_scale

        window_batch = smallest(ranks, config.window_batch_size or choose_window_batch_size(
            latents, len(plan.windows), plan.windows[0].length, do_classifier_free_guidance, config))

        def step_callback(i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
            if callback_on_step_end is not None:
                available = {"latents": latents, **current}
                inputs = {k: available[k] for k in callback_on_step_end_tensor_inputs}
                outputs = callback_on_step_end(self, i, t, inputs) or {}
                latents = outputs.get("latents", latents)
                current.update({k: v for k, v in outputs.items() if k in current})
            if callback is not None and i % callback_steps == 0:
                callback(i // getattr(self.scheduler, "order", 1), t, latents)
            return latents

        latents = denoise(self.unet, self.scheduler, latents, conditioning, plan, extra_step_kwargs, window_batch,
                          lambda total: self.progress_bar(total=total), step_callback, cross_attention_kwargs,
                          timesteps, interrupted=lambda: self.interrupt, ranks=ranks, known=known)

        return config, latents, original_waveform_length, edit

    def _plan_edit(self, audio, extend_s, regenerate, context_s, crossfade_s, strength, audio_length_in_s,
                   latents, prompt, num_waveforms_per_prompt) -> Edit:
        """The checks of a continuation or regeneration, and its plan (``editing.plan_edit``)."""
        if audio is None:
            raise ValueError("`extend_s`, `regenerate`, `context_s` and `crossfade_s` continue or remake a recording: "
                             "pass it as `audio`")
        if strength is not None:
            raise ValueError("`strength` restyles the whole input (audio-to-audio); it does not go with `extend_s` "
                             "or `regenerate`, which keep the input's own samples")
        if audio_length_in_s is not None:
            raise ValueError("the output's length follows from `audio` and `extend_s`: leave `audio_length_in_s` "
                             "out (to continue for N seconds, pass extend_s=N)")
        if latents is not None:
            raise ValueError("pass either `latents` or an edit of `audio`: an edit starts from the input's latents")
        if num_waveforms_per_prompt not in (None, 1) or (isinstance(prompt, list) and not is_timeline(prompt)
                                                         and len(prompt) > 1):
            raise ValueError("an edit makes one waveform: give one prompt (or a timeline) and "
                             "num_waveforms_per_prompt=1")
        return plan_edit(audio, self.vocoder.config.sampling_rate, self.vae_scale_factor * hop_length(self.vocoder),
                         extend_s, regenerate, context_s, crossfade_s)

    def _known_region(self, edit: Edit, latents: torch.Tensor, generator, config: TilingConfig) -> KnownRegion:
        """The input's latents over the edit's context (tiled encode), fitted to the render's frames, and the
        noise they are put back with."""
        settings = MelSettings.from_vocoder(self.vocoder)
        start, stop = edit.context
        mel = mel_for_vae(edit.original[start:stop], settings, self.vae_scale_factor)
        posterior = tiled_encode(self.vae, mel.to(device=latents.device, dtype=self.vae.dtype), config)
        known = (posterior.mode() * self.vae.config.scaling_factor).to(latents.dtype)
        frames = latents.shape[2]
        known = known[:, :, :frames]
        if known.shape[2] < frames:
            known = torch.cat([known, known.new_zeros(*known.shape[:2], frames - known.shape[2], known.shape[3])], 2)
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        return KnownRegion(known.expand_as(latents), edit.known_mask(), noise, self.scheduler)


class AudioLDMTiledPipeline(TiledAudioPipelineMixin, AudioLDMPipeline):
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
