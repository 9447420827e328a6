"""``AudioLDMTiledPipeline``: diffusers' AudioLDM pipeline with windowed denoising, tiled VAE decode and a chunked
vocoder, so that memory does not grow with the length of the audio."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from diffusers.utils import logging

from .call_inputs import known_region, noised_input
from .callbacks import Callbacks
from .conditioning import UNetConditioning
from .config import TilingConfig
from .denoise import denoise
from .distributed import guarded, ranks_for
from .families.base import ModelFamily
from .live import LiveRender, LiveState
from .plan import RenderPlan, build_live_plan, build_plan, render_recipe
from .request import Request, call_signature
from .seams import windowed_seams
from .sinks import ArraySink, Sink, drive
from .vae import tiled_decode
from .vocoder import chunked_vocode, hop_length
from .waveform import StreamedRender, waveform_pieces

logger = logging.get_logger(__name__)

class TiledAudioPipelineMixin(ModelFamily):
    """The engine every tiled pipeline shares, put before a diffusers audio pipeline in the bases: a call becomes
    a ``Request``, the request a ``RenderPlan``; then windowed denoising (loops, timelines, known regions, ranks)
    and the one route to the waveform (``waveform.py``: tiled VAE decode, chunked vocoder). The pipeline calls
    ``_init_tiling()`` in its ``__init__``, supplies ``prepare_latents`` with diffusers' signature, and implements
    the family interface (``families.base.ModelFamily``)."""

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

    # ----------------------------------------------------------------------------------------------- tiling switches
    def enable_vae_tiling(self, **fields: Any) -> None:
        """Always tile the VAE decode (and chunk the vocoder); keyword arguments set `TilingConfig` fields."""
        self.tiling = self.tiling.replace(enabled=True, **fields)

    def disable_vae_tiling(self) -> None:
        """Never tile: decode and vocode in one pass, failing hard when memory runs out."""
        self.tiling = self.tiling.replace(enabled=False)

    def tiling_for_call(self, tiling: TilingConfig | None) -> TilingConfig:
        config = self.tiling if tiling is None else tiling
        if not isinstance(config, TilingConfig):
            raise TypeError(f"`tiling` must be a TilingConfig or None, got {type(config).__name__}")
        show = not getattr(self, "_progress_bar_config", {}).get("disable", False)
        config = config.with_windows_for(self.geometry.latent_frame_seconds)
        return config.replace(show_progress=show and config.show_progress)

    # ------------------------------------------------------------------------------------------------ the two seams
    def decode_latents(self, latents: torch.Tensor, tiling: TilingConfig | None = None) -> torch.Tensor:
        """Latents (B, C, T, F) to log-mel (B, 1, 4T, n_mels), through `tiled_decode`."""
        latents = 1 / self.vae.config.scaling_factor * latents
        return tiled_decode(self.vae, latents, self.tiling_for_call(tiling))

    def mel_spectrogram_to_waveform(self, mel_spectrogram: torch.Tensor, tiling: TilingConfig | None = None):
        """Log-mel (B, 1, T, n_mels) or (B, T, n_mels) to float32 waveforms (B, samples) on the CPU."""
        if mel_spectrogram.dim() == 4:
            mel_spectrogram = mel_spectrogram.squeeze(1)
        waveform = chunked_vocode(self.vocoder, mel_spectrogram, self.tiling_for_call(tiling))
        return waveform.cpu().float()

    # ------------------------------------------------------------------------------------------------------ helpers
    def seam_positions(self, audio_length_in_s: float | None = None,
                       tiling: TilingConfig | None = None) -> dict[str, list[float]]:
        """Where the pieces of a streamed render (``stream()``, the CLI) meet, in seconds: interior edges of the
        denoising windows, and the core boundaries of the VAE tiles and the vocoder chunks (for seam checks and
        ``plots.spectrogram_figure``). Each list is empty where that stage runs in one piece."""
        return windowed_seams(self, audio_length_in_s, self.tiling_for_call(tiling))

    @torch.no_grad()
    @call_signature("_call")
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
        ranks: str | Any | None = None,
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
            ranks (`"auto"` or a `torch.distributed.ProcessGroup`, *optional*): share this one render over the
                ranks of a process group (``"auto"``: the default group, or this process alone where none is
                initialised); every rank calls with the same arguments and gets the whole result. Left out
                (None), the call renders in this process alone whatever process group exists, so each rank of a
                data-parallel job can render its own prompts.

        Returns:
            [`AudioPipelineOutput`] with ``audios`` of shape (batch, samples), float32 at the vocoder's sampling rate.
        """

    def _call(self, arguments: dict[str, Any]):
        """The call with its arguments by name (the family's own among them): the request, then the engine into
        an array on every rank (or the denoised latents)."""
        output_type, return_dict = arguments.pop("output_type"), arguments.pop("return_dict")
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'np', 'pt' or 'latent', got {output_type!r}")
        callbacks = Callbacks.from_arguments(arguments)
        request = Request.from_arguments(arguments, self.reject_unknown_arguments)
        if output_type == "latent":
            with guarded(ranks_for(request.ranks)):
                _, audio = self._render(request, callbacks, decoded=False)
        else:
            audio = self._render_into(request, ArraySink(), callbacks, streamed=False, root=None)
            audio = audio if output_type == "np" else torch.from_numpy(audio)
        self.maybe_free_model_hooks()
        return AudioPipelineOutput(audios=audio) if return_dict else (audio,)

    @torch.no_grad()
    def render(self, request: Request, sink: Sink | None = None, callbacks: Callbacks | None = None) -> Any:
        """The engine call every front door ends in: plan ``request``, open ``sink`` (before any denoising, so
        that a sink that cannot take the render says so first), denoise, and hand the sink the waveform piece by
        piece as the tiled decode and the chunked vocoder make it; commit the sink when all went well, abort it
        otherwise.

        Args:
            request: what to render (``audioldm_tiled.Request``; a call's keyword arguments by name).
            sink: where the waveform goes (``sinks.FileSink``, ``sinks.ArraySink``, or any object with ``open``,
                ``write``, ``commit`` and ``abort``); default ``ArraySink()``.
            callbacks: step callbacks (``callbacks.Callbacks``), as a call's ``callback_on_step_end`` and its kin.

        Returns:
            What the sink's ``commit()`` returns: for ``ArraySink`` the float32 waveforms (batch, samples), for
            ``FileSink`` a ``Delivered``. With ``ranks``, every rank calls it and shares the work; the pieces reach
            rank 0's sink, and the other ranks leave theirs unused and return None.
        """
        ranks = ranks_for(request.ranks)
        sink = ArraySink() if sink is None else sink
        result = self._render_into(request, sink if ranks is None or ranks.rank == 0 else None,
                                   callbacks or Callbacks(), streamed=True, root=0)
        self.maybe_free_model_hooks()
        return result

    def _render_into(self, request: Request, sink: Sink | None, callbacks: Callbacks, streamed: bool,
                     root: int | None) -> Any:
        """Plan, open ``sink``, denoise and hand it the pieces (on ``root``, or every rank with None); None as the
        sink: this rank takes part in a shared render whose pieces go elsewhere."""
        with guarded(ranks_for(request.ranks)):  # a failure on any rank, the sink's commit included, fails every rank
            plan = self._plan(request, callbacks, streamed)
            if sink is None:  # no piece comes out on this rank: its share of the work is all it does
                for _ in self._pieces(request, plan, callbacks, root):
                    pass
                return None
            sink.open(self.geometry.sample_rate, plan.batch, render_recipe(self, request, plan))
            return drive(self._pieces(request, plan, callbacks, root), sink)

    def _pieces(self, request: Request, plan: RenderPlan, callbacks: Callbacks,
                root: int | None) -> Iterator[np.ndarray]:
        latents = self._denoise(request, plan, callbacks)
        yield from waveform_pieces(self, latents, plan.keep, plan.decode_config, plan.circular, plan.edit,
                                   plan.ranks, root=root)

    def stream(self, prompt: Any = None, **kwargs: Any) -> StreamedRender:
        """Generate like ``__call__`` (the same arguments, the family's defaults, or a whole ``Request`` as
        ``prompt``) and hand the waveform out in pieces: iterate the returned ``StreamedRender`` for float32 numpy
        arrays (batch, samples); its ``recipe`` says what the plan resolved once the first piece is asked for.

        After denoising, the VAE decode and the vocoder run tile by tile and each piece is handed out as soon as it
        is ready (fast mode: per tile; exact mode: once the last GroupNorm barrier is passed), so a one-hour render
        never holds its whole mel or waveform. ``enabled="auto"`` means tiled here; only ``enabled=False`` decodes
        in one pass. The pieces concatenate to ``__call__(...).audios`` for the same arguments.

        With ``ranks="auto"`` every rank must iterate it to the end: all ranks denoise, decode and vocode their
        shares, and the pieces come out on rank 0 only (in order; the other ranks yield nothing). A failure on any
        rank raises ``distributed.RankFailed`` on every rank.
        """
        if "output_type" in kwargs or "return_dict" in kwargs:
            raise ValueError("stream() yields numpy pieces; it takes no `output_type` or `return_dict`")
        callbacks = Callbacks.from_arguments(kwargs)
        request = Request.given_or_from(prompt, kwargs, self.reject_unknown_arguments)
        return StreamedRender(lambda render: self._streamed(request, callbacks, render))

    @torch.no_grad()
    def _streamed(self, request: Request, callbacks: Callbacks, render: StreamedRender) -> Iterator[np.ndarray]:
        with guarded(ranks_for(request.ranks)):
            plan, latents = self._render(request, callbacks, streamed=True)
            render.recipe = render_recipe(self, request, plan)
            yield from waveform_pieces(self, latents, plan.keep, plan.decode_config, plan.circular, plan.edit,
                                       plan.ranks)
        self.maybe_free_model_hooks()

    def live(self, prompt: Any = None, resume: LiveState | None = None, **kwargs: Any) -> LiveRender:
        """Render progressively, left to right, and hand the waveform out as it is made: the first piece after
        one window (about 9 s of audio) whatever the length, then one piece per window (6.4 s with the default
        tiling). Iterate the returned ``LiveRender`` for float32 numpy pieces (batch, samples).

        Takes ``__call__``'s arguments (the family's defaults), or a whole ``Request`` as ``prompt``, with these
        differences:

        - ``audio_length_in_s=None`` (the default) renders until the caller stops iterating;
        - ``prompt`` may also be a function of seconds (called with the time of each window's first new frame,
          returning a text) or a queue of texts (``queue.Queue``: each window takes the newest text put in it),
          so the sound can change while the render runs; a timeline works as in ``__call__``, per window;
        - ``resume``: a ``LiveState`` (``LiveRender.state``, ``LiveState.load``) of a render with the same
          arguments but perhaps another length: the render goes on from there, and its pieces, after the
          samples the state has handed out, are those the render would have made without stopping;
        - refused: ``audio`` and its edits, ``loop``, ``latents`` and ``ranks``.

        The first N seconds of a live render do not depend on its length, bit for bit. What it keeps of exact
        mode and what not: the windows are denoised one after another, so each is drawn to fit the one before (a
        known region, see ``audioldm_tiled.live``) but never revised by the ones after; and each VAE tile is
        normalised with GroupNorm statistics pooled over the last minute of audio decoded (``vae.running``), not
        over the whole sequence. The vocoder is exact as everywhere.
        """
        for name in ("output_type", "return_dict", "progressive"):
            if name in kwargs:
                raise ValueError(f"live() yields numpy pieces of a progressive render; it takes no `{name}`")
        callbacks = Callbacks.from_arguments(kwargs)
        request = Request.given_or_from(prompt, kwargs, self.reject_unknown_arguments, progressive=True)
        plan = build_live_plan(self, request)
        callbacks.check(self)
        return LiveRender(self, plan, request, callbacks, resume)

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
        config = self.tiling_for_call(tiling)
        config = config.replace(enabled=True) if config.enabled == "auto" else config  # streamed: tiled
        latents = latents.to(device=self._execution_device, dtype=self.vae.dtype)
        yield from waveform_pieces(self, latents, keep, config)
        self.maybe_free_model_hooks()

    def _render(self, request: Request, callbacks: Callbacks, streamed: bool = False,
                decoded: bool = True) -> tuple[RenderPlan, torch.Tensor]:
        """Plan ``request`` and denoise it. Returns the plan and the denoised latents."""
        plan = self._plan(request, callbacks, streamed, decoded)
        return plan, self._denoise(request, plan, callbacks)

    def _plan(self, request: Request, callbacks: Callbacks, streamed: bool = False,
              decoded: bool = True) -> RenderPlan:
        """``plan.build_plan``, every check that needs the model, before any work."""
        plan = build_plan(self, request, streamed, decoded)
        callbacks.check(self)
        return plan

    def _denoise(self, request: Request, plan: RenderPlan, callbacks: Callbacks) -> torch.Tensor:
        """The parent's steps 3-7 for ``plan``: prompt encoding, noise or the encoded input noised to
        ``strength``, windowed denoising. Returns the denoised latents."""
        self._guidance_scale, self._interrupt = plan.guidance, False
        device = self._execution_device
        current = self.encode_conditioning(plan.prompt, device, request.num_waveforms_per_prompt, plan.guided,
                                            plan.negative_prompt, request.prompt_embeds,
                                            request.negative_prompt_embeds, **request.family_inputs)
        dtype = current["prompt_embeds"].dtype
        self.scheduler.set_timesteps(plan.steps, device=device)
        timesteps = self.scheduler.timesteps
        generator, known = request.noise_generator(), None
        if plan.input_mel is None:
            latents = self.prepare_latents(plan.batch, self.unet.config.in_channels,
                                           plan.frames * self.vae_scale_factor, dtype, device, generator,
                                           request.latents)
            if plan.edit is not None:
                known = known_region(self, plan.edit, latents, generator, plan.config)
                latents = known.replace(latents, timesteps[0])
        else:
            latents, timesteps = noised_input(self, plan.input_mel, plan.batch, request.strength, plan.steps, dtype,
                                                    device, generator, plan.config)
        self._num_timesteps = len(timesteps)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, request.eta)

        # Read at every step: a callback may turn guidance off (diffusers' SDCFGCutoffCallback) or change the
        # embeddings. For a timeline the embeddings are per segment, blended per window by the family.
        def conditioning() -> tuple[UNetConditioning, float]:
            return self.unet_conditioning(current, plan.groups, self.do_classifier_free_guidance, plan.mix), \
                self._guidance_scale

        latents = denoise(self.unet, self.scheduler, latents, conditioning, plan.windows, extra_step_kwargs,
                          plan.window_batch, lambda total: self.progress_bar(total=total),
                          callbacks.step_function(self, current), request.cross_attention_kwargs, timesteps,
                          interrupted=lambda: self.interrupt, ranks=plan.ranks, known=known)
        return latents
