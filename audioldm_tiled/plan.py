"""One plan per render, built once from the request, the pipeline's family and its device: everything below it
reads these values and decides nothing again.

The plan reads the input audio, lays out the latent (frames, samples kept, circular or not, the edit's known
frames, the denoising windows and a timeline's weights over them), runs the family's checks, and resolves what
depends on memory: it reads free memory once, turns ``TilingConfig.memory_budget=None`` into that many bytes and
``store="auto"`` into the store that the room check before denoising and the decode after it both use. With
``ranks`` asked for, the ranks compare the request's fingerprint in one collective first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .audio_geometry import AudioGeometry
from .call_inputs import check_latents, read_input_audio
from .config import TilingConfig
from .denoise import WindowPlan, plan_windows
from .distributed import Ranks, agree_on, ranks_for, smallest, together
from .editing import Edit, plan_edit
from .files import format_bytes
from .geometry import ProgressiveLayout
from .memory import BUDGET_SHARE, InsufficientMemoryError, available_memory, choose_window_batch_size
from .request import Request, is_changing_prompt
from .timeline import Segment, deciding_mix, is_timeline, window_mix
from .vae import check_exact_decode_fits, decode_job
from .vae.budget import exact_stored_bytes
from .vae.dispatch import decode_input
from .vae.running import decoder_halo
from .vae.store import choose_store
from .vocoder import hop_length, receptive_field_frames

# A live render's decode pools each GroupNorm's moments over about this much of the audio before each tile: long
# enough that the statistics of one tile's sound do not swing the level, short enough to follow a timeline.
STATISTICS_SECONDS = 60.0


@dataclass(frozen=True, eq=False)
class RenderPlan:
    """What one render does, decided once. Lengths in latent frames unless named otherwise."""

    config: TilingConfig  # the call's tiling, memory_budget and store resolved
    decode_config: TilingConfig  # the same for the VAE decode: tiled under "auto" when the render is streamed
    steps: int
    guidance: float
    ranks: Ranks | None  # the ranks sharing this render, or None
    prompt: str | list[str] | None  # what the family encodes: the texts (a timeline's, one per segment)
    negative_prompt: str | list[str] | None
    batch: int  # waveforms rendered together
    groups: int  # rows of conditioning: one per waveform, or one per timeline segment
    frames: int
    keep: int  # samples of the waveform that are returned
    circular: bool  # a loop: windows, decode and vocoder wrap around
    edit: Edit | None  # a continuation or regeneration, assembled with the input's own samples
    input_mel: torch.Tensor | None  # restyle: the input's log-mel (1, 1, 4 * frames, n_mels)
    windows: WindowPlan
    mix: torch.Tensor | None  # (windows, segments) weights of a timeline
    window_batch: int  # windows per UNet call

    @property
    def guided(self) -> bool:
        return self.guidance > 1


def build_plan(pipe, request: Request, streamed: bool = False, decoded: bool = True) -> RenderPlan:
    """The plan of ``request`` on ``pipe``; every check that needs the model runs here, before any denoising.

    ``streamed``: the waveform is handed out in pieces (``stream()``, WAV files), so ``enabled="auto"`` tiles the
    decode whatever the free memory: a streamed render's memory does not grow with its length. ``decoded``: False
    when the caller takes the latents (``output_type="latent"``), whose decode is then not checked."""
    if request.progressive:
        raise ValueError("a progressive render is a live one: call pipe.live(...)")
    device = pipe._execution_device
    geometry = pipe.geometry
    _check_length(geometry, request.audio_length_in_s)
    config, free, steps, guidance = _settings(pipe, request)
    ranks = ranks_for(request.ranks)
    if ranks is not None:
        agree_on(ranks, request.digest(), "the call's arguments (prompt, length, seed, steps, tiling, ...)")
        if request.loop:
            raise ValueError("`loop=True` is rendered in one process: leave `ranks` out")
    seconds, edit, input_mel = request.audio_length_in_s, None, None
    frame_seconds = geometry.latent_frame_seconds
    if request.kind in ("extend", "regenerate"):
        edit = plan_edit(request.audio, pipe.vocoder.config.sampling_rate, pipe.vae_scale_factor * hop_length(
            pipe.vocoder), request.extend_s, request.regenerate, request.context_s, request.crossfade_s)
        seconds = edit.latent_frames * frame_seconds
    elif request.kind == "restyle":
        input_mel, input_samples = read_input_audio(pipe, request.audio)
        seconds = input_mel.shape[2] * geometry.mel_frame_seconds  # padded to whole latent frames
    seconds, height, keep = pipe.geometry.lengths(seconds)
    if input_mel is not None:  # every input sample is encoded: the mel is padded up to whole latent frames
        height, keep = input_mel.shape[2], input_samples
    if request.loop or edit is not None:  # a loop's period, or the whole generated range of an edit
        keep = height * hop_length(pipe.vocoder)
    frames = height // pipe.vae_scale_factor

    prompt, negative, timeline = request.prompt, request.negative_prompt, request.timeline(seconds)
    if timeline is not None:
        prompt = [segment.text for segment in timeline]
        negative = None if negative is None else [negative] * len(timeline)
    pipe.check_prompt_inputs(prompt if timeline is None else prompt[0], seconds, geometry.mel_frame_seconds,
                              1, request.negative_prompt, request.prompt_embeds, request.negative_prompt_embeds,
                              **request.family_inputs)
    if timeline is not None or isinstance(prompt, str):
        prompts = 1  # a timeline is one soundscape; its segments are encoded as a batch, with the global negative
    elif isinstance(prompt, list):
        prompts = len(prompt)
    else:
        prompts = request.prompt_embeds.shape[0]
    batch = prompts * request.num_waveforms_per_prompt
    _check_latents_fit(pipe, batch, frames, seconds, free)
    if request.latents is not None:
        check_latents(pipe, request.latents, batch, frames)

    example = torch.empty((), device=device, dtype=pipe.unet.dtype).expand(
        batch, pipe.unet.config.in_channels, frames, geometry.latent_rows)
    # A streamed render's memory must not grow with its length, and an edit's waveform is assembled piece by piece
    # with the input's samples: both tile the decode under "auto", whatever the free memory.
    tiled = streamed or edit is not None
    decode_config = config.replace(enabled=True) if tiled and config.enabled == "auto" else config
    decode_config = _resolved_store(pipe.vae, example, decode_config)
    # Fail now rather than after the denoising if the decode cannot fit; with ranks, all of them fail.
    together(ranks, lambda: decoded and check_exact_decode_fits(pipe.vae, example, decode_config))
    windows = plan_windows(frames, config, circular=request.loop)
    mix = None
    if timeline is not None:
        mix = window_mix(timeline, windows.windows, frames, 1 / frame_seconds)
        pipe.check_timeline(timeline, mix)
    window_batch = smallest(ranks, config.window_batch_size or choose_window_batch_size(
        example, len(windows.windows), windows.windows[0].length, guidance > 1, config))
    return RenderPlan(config, decode_config, steps, guidance, ranks, prompt, negative, batch,
                      prompts * request.num_waveforms_per_prompt if timeline is None else len(timeline), frames,
                      keep, request.loop, edit, input_mel, windows, mix, window_batch)


def _check_length(geometry: AudioGeometry, seconds: float | None) -> None:
    """The shortest render is one latent frame of the family (40 ms for AudioLDM)."""
    if seconds is not None and seconds < geometry.latent_frame_seconds:
        raise ValueError(f"`audio_length_in_s` must be at least {geometry.latent_frame_seconds:g} s (one latent "
                         f"frame of this model), got {seconds:g}")


def _settings(pipe, request: Request) -> tuple[TilingConfig, int, int, float]:
    """The call's tiling with its memory budget resolved (free memory is read here, once per render), the free
    bytes, and the steps and guidance with the family's defaults filled in."""
    free = available_memory(pipe._execution_device)
    config = pipe.tiling_for_call(request.tiling)
    if config.memory_budget is None:
        config = config.replace(memory_budget=max(1, int(BUDGET_SHARE * free)))
    defaults = pipe.parent_defaults()
    steps = request.num_inference_steps or defaults["num_inference_steps"]
    guidance = defaults["guidance_scale"] if request.guidance_scale is None else request.guidance_scale
    return config, free, steps, guidance


@dataclass(frozen=True, eq=False)
class LivePlan:
    """What a live (progressive) render does, decided once; it has no end when ``keep`` is None."""

    config: TilingConfig
    steps: int
    guidance: float
    prompt: str | list[str] | None  # what the family encodes once (a timeline's texts); None: ``changing``
    changing: Any  # a prompt read at every window: a function of seconds, or a queue; None otherwise
    negative_prompt: str | list[str] | None
    timeline: list[Segment] | None
    batch: int  # waveforms rendered together
    groups: int  # rows of conditioning: one per waveform, or one per timeline segment
    keep: int | None  # samples handed out in all; None: until the caller stops
    layout: ProgressiveLayout
    history: int  # decode tiles whose GroupNorm moments each tile pools with its own

    @property
    def guided(self) -> bool:
        return self.guidance > 1


def build_live_plan(pipe, request: Request) -> LivePlan:
    """The plan of a progressive ``request`` (``Request.progressive``) on ``pipe``."""
    geometry = pipe.geometry
    _check_length(geometry, request.audio_length_in_s)
    config, _, steps, guidance = _settings(pipe, request)
    seconds = request.audio_length_in_s
    keep = None if seconds is None else pipe.geometry.lengths(seconds)[2]
    layout = live_layout(pipe, config)
    frame_seconds = geometry.latent_frame_seconds
    prompt, negative, changing = request.prompt, request.negative_prompt, None
    timeline = request.timeline(math.inf if seconds is None else seconds)
    if is_changing_prompt(prompt):
        prompt, changing = None, prompt
    elif timeline is not None:
        prompt = [segment.text for segment in timeline]
        negative = None if negative is None else [negative] * len(timeline)
    window_seconds = layout.window * frame_seconds
    if changing is None:
        pipe.check_prompt_inputs(prompt if timeline is None else prompt[0], window_seconds, geometry.mel_frame_seconds,
                                  1, request.negative_prompt, request.prompt_embeds, request.negative_prompt_embeds,
                                  **request.family_inputs)
    if timeline is not None or changing is not None or isinstance(prompt, str):
        prompts = 1
    elif isinstance(prompt, list):
        prompts = len(prompt)
    else:
        prompts = request.prompt_embeds.shape[0]
    groups = len(timeline) if timeline is not None else prompts * request.num_waveforms_per_prompt
    if timeline is not None:  # checked once (AudioLDM 2 warns of unheard segments), without laying out every window
        windows = None if seconds is None else layout.windows_for(math.ceil(seconds / geometry.mel_frame_seconds))
        pipe.check_timeline(timeline, deciding_mix(timeline, layout.window, layout.stride, windows, 1 / frame_seconds))
    history = max(1, round(STATISTICS_SECONDS / (layout.stride * frame_seconds)))
    return LivePlan(config, steps, guidance, prompt, changing, negative, timeline,
                    prompts * request.num_waveforms_per_prompt, groups, keep, layout, history)


def live_layout(pipe, config: TilingConfig) -> ProgressiveLayout:
    """Where a live render's windows, tiles and chunks fall with ``config`` on ``pipe``'s models."""
    context = config.vocoder_context_frames
    try:
        return ProgressiveLayout(config.window_frames, config.window_overlap_frames,
                                 decoder_halo(decode_job(pipe.vae, config), config),
                                 receptive_field_frames(pipe.vocoder) if context is None else context,
                                 pipe.vae_scale_factor)
    except ValueError as error:
        raise ValueError(f"TilingConfig.window_frames: {error}") from None


def _resolved_store(vae, latents: torch.Tensor, config: TilingConfig) -> TilingConfig:
    """``config`` with ``store="auto"`` resolved for an exact decode of ``latents``' shape (in the dtype the decode
    runs in)."""
    if config.store != "auto":
        return config
    latents = decode_input(vae, latents, config)
    needed = exact_stored_bytes(decode_job(vae, config).tasks, latents)
    return config.replace(store=choose_store(config, needed, latents.device, "VAE decode"))


def _check_latents_fit(pipe, batch: int, frames: int, seconds: float, free: int) -> None:
    """Refuse, before any tensor of that size is made, a length whose latents alone exceed the device's ``free``
    memory (the noise, the latents and the scheduler's copy are held at once)."""
    needed = 3 * batch * pipe.unet.config.in_channels * frames * pipe.geometry.latent_rows * pipe.unet.dtype.itemsize
    if needed > free:
        raise InsufficientMemoryError(
            f"`audio_length_in_s` of {seconds:g} s needs {format_bytes(needed)} for its latents alone, more "
            f"than the {format_bytes(free)} free on {pipe._execution_device}")


def render_recipe(pipe, request: Request, plan: RenderPlan | LivePlan) -> dict[str, Any]:
    """What the plan resolved to make ``request``'s audio, as sinks record it (file tags, sidecars): the prompt or
    timeline, the kind ("live" for a progressive render), seconds (None: endless), steps, guidance, seed and
    model."""
    seconds = None if plan.keep is None else plan.keep / pipe.geometry.sample_rate
    timeline = request.timeline(math.inf if seconds is None else seconds) if is_timeline(request.prompt) else None
    if timeline is not None:
        what = {"timeline": [[s.start_s, s.end_s, s.text] for s in timeline]}
    else:
        what = {"prompt": request.prompt if isinstance(request.prompt, (str, list)) else None}
    return {**what, "negative_prompt": request.negative_prompt, "kind": "live" if request.progressive else request.kind,
            "seconds": seconds, "steps": plan.steps, "guidance": plan.guidance,
            "seed": request.seed, "model": getattr(pipe, "name_or_path", None) or type(pipe).__name__}
