"""Windowed denoising along time (MultiDiffusion, Bar-Tal et al. 2023) with classifier-free guidance kept batched.

Each step runs the UNet on overlapping windows of the latent and merges the *noise predictions* with weights that sum
to one on every frame, then takes one scheduler step on the whole latent. Schedulers step elementwise and affinely in
the model output, so this equals merging per-window steps, and it keeps the internal state of multistep schedulers
(DPM-Solver, PNDM) consistent: they see exactly one step per timestep, as in the parent pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .conditioning import UNetConditioning
from .config import TilingConfig
from .constants import HOP_LENGTH, SAMPLE_RATE, VAE_FACTOR
from .distributed import Ranks, sum_over_ranks, together
from .geometry import Tile, add_frames, plan_tiles, take_frames


@dataclass(frozen=True)
class WindowPlan:
    """Windows over the latent's time axis and their merge weights, each of shape (window length,)."""

    windows: list[Tile]
    weights: list[torch.Tensor]


def merge_profile(length: int, overlap: int, weighting: str) -> torch.Tensor:
    """Weights across one window before normalisation: flat in the middle, tapered over ``overlap`` frames per edge."""
    profile = torch.ones(length, dtype=torch.float64)
    if weighting == "uniform" or overlap == 0:
        return profile
    ramp = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap  # never exactly 0: every frame keeps weight
    if weighting == "cosine":
        ramp = 0.5 - 0.5 * torch.cos(math.pi * ramp)
    profile[:overlap] = ramp
    profile[length - overlap :] = ramp.flip(0)
    return profile


def plan_windows(latent_frames: int, config: TilingConfig, circular: bool = False) -> WindowPlan:
    """Balanced windows of ``config.window_frames`` (the last flush with the end) and weights summing to one.

    ``circular`` plans a seamless loop: frame ``latent_frames`` is frame 0 again, windows wrap around the end and
    the weights sum to one on the circle. There are always at least two windows, so the wrap point lies inside one
    of them, denoised as any other frame is (``windowed=False`` does not apply to a loop)."""
    if config.window_frames is None or config.window_overlap_frames is None:  # outside a pipeline: AudioLDM's
        config = config.with_windows_for(VAE_FACTOR * HOP_LENGTH / SAMPLE_RATE)
    window, overlap = config.window_frames, config.window_overlap_frames
    if circular:
        core = max(1, min(window - overlap, -(-latent_frames // 2)))
        windows = plan_tiles(latent_frames, core, halo=min(overlap, latent_frames - core) // 2,
                             multiple=8 if latent_frames >= 16 else 1, fixed_extent=True, circular=True)
    elif not config.windowed or latent_frames <= window:
        return WindowPlan([Tile(0, latent_frames, 0, latent_frames)], [torch.ones(latent_frames, dtype=torch.float64)])
    else:
        # Cores of window - overlap frames, widened by overlap/2 per side to exactly `window` frames.
        windows = plan_tiles(latent_frames, window - overlap, halo=overlap // 2, multiple=8, fixed_extent=True)
    total = torch.zeros(latent_frames, dtype=torch.float64)
    profiles = []
    for w in windows:
        profile = merge_profile(w.length, min(overlap, w.length // 2), config.window_weighting)
        add_frames(total, w.start, profile, dim=0)
        profiles.append(profile)
    weights = [p / take_frames(total, w.start, w.stop, dim=0) for w, p in zip(windows, profiles)]
    return WindowPlan(windows, weights)


# Frames per piece of a DDIM step on a long latent (``scheduler_step``): an hour of AudioSR's latent is 45 000.
STEP_FRAMES = 2048


def scheduler_step(scheduler, noise: torch.Tensor, t, latents: torch.Tensor, extra_step_kwargs: dict,
                   reuse_noise: bool = False) -> torch.Tensor:
    """``scheduler.step(noise, t, latents, **extra_step_kwargs).prev_sample``.

    DDIM's step (without dynamic thresholding) is elementwise and keeps no state, yet on the whole latent it makes
    five latent-sized temporaries, which on an hour of AudioSR's latent are half a gigabyte per channel. So past
    ``STEP_FRAMES`` it runs on pieces of frames into one output, its noise drawn once for the whole as the step
    itself draws it: the same numbers, bit for bit, with the temporaries of one piece. With ``reuse_noise`` (the
    caller's prediction is not needed after the step) that output is ``noise`` itself: each piece of it is read
    before it is overwritten."""
    from diffusers import DDIMScheduler

    frames = latents.shape[2]
    if not isinstance(scheduler, DDIMScheduler) or scheduler.config.thresholding or frames <= STEP_FRAMES:
        return scheduler.step(noise, t, latents, **extra_step_kwargs).prev_sample
    from diffusers.utils.torch_utils import randn_tensor

    kwargs = dict(extra_step_kwargs)
    generator = kwargs.pop("generator", None)
    whole = kwargs.pop("variance_noise", None)
    if whole is None and kwargs.get("eta", 0.0) > 0:  # what the step would draw, drawn once for the whole
        whole = randn_tensor(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
    out = None
    for start in range(0, frames, STEP_FRAMES):
        part = slice(start, min(frames, start + STEP_FRAMES))
        if whole is not None:
            kwargs["variance_noise"] = whole[:, :, part]
        piece = scheduler.step(noise[:, :, part], t, latents[:, :, part], **kwargs).prev_sample
        if out is None:
            same = reuse_noise and noise.dtype == piece.dtype and noise.shape == latents.shape
            out = noise if same else piece.new_empty((*latents.shape[:2], frames, *latents.shape[3:]))
        out[:, :, part] = piece
    return out


def predict_noise(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    t: torch.Tensor,
    conditioning: UNetConditioning,
    guidance_scale: float,
    plan: WindowPlan,
    batch_size: int,
    cross_attention_kwargs: dict | None = None,
    ranks: Ranks | None = None,
) -> torch.Tensor:
    """Guided noise prediction for the whole latent (B, C, T, F), merged over the windows of ``plan``.

    Args:
        conditioning: the family's adapter (``conditioning.py``) holding every window's conditioning; it is guided
            when it holds negative rows.
        batch_size: windows per UNet call.
        ranks: with several windows, each rank predicts its contiguous share and the merged sums are added over
            the ranks (see ``distributed``); with one window every rank predicts it.
    """
    if ranks is None or len(plan.windows) == 1:
        return _predict(unet, latents, t, conditioning, guidance_scale, plan, range(len(plan.windows)), batch_size,
                        cross_attention_kwargs)
    merged = together(ranks, lambda: _predict(unet, latents, t, conditioning, guidance_scale, plan,
                                               ranks.share(len(plan.windows)), batch_size, cross_attention_kwargs))
    return sum_over_ranks(ranks, merged)


def _predict(unet, latents, t, conditioning: UNetConditioning, guidance_scale, plan: WindowPlan, windows: range,
             batch_size: int, cross_attention_kwargs) -> torch.Tensor:
    """The merged prediction of ``windows`` alone (zero elsewhere), or the one window's prediction."""
    guided = conditioning.guided
    merged = latents.new_zeros(latents.shape) if len(plan.windows) > 1 else None
    for first in range(windows.start, windows.stop, batch_size):
        group = range(first, min(first + batch_size, windows.stop))
        crops = torch.cat([take_frames(latents, plan.windows[i].start, plan.windows[i].stop) for i in group])
        # Same layout as the parent pipeline: all unconditional rows first, then all conditional rows.
        model_input = conditioning.model_input(crops, [plan.windows[i] for i in group])
        noise = unet(model_input, t, **conditioning.unet_kwargs(group),
                     cross_attention_kwargs=cross_attention_kwargs).sample
        if guided:
            uncond, text = noise.chunk(2)
            noise = uncond + guidance_scale * (text - uncond)
        if merged is None:
            return noise
        for j, i in enumerate(group):
            w = plan.windows[i]
            rows = noise[j * latents.shape[0] : (j + 1) * latents.shape[0]]
            weight = plan.weights[i].to(rows.dtype).to(rows.device)[:, None]  # narrowed on the host (MPS: no float64)
            add_frames(merged, w.start, rows * weight)
    return merged


def denoise(
    unet: torch.nn.Module,
    scheduler,
    latents: torch.Tensor,
    conditioning: Callable[[], tuple[UNetConditioning, float]],
    plan: WindowPlan,
    extra_step_kwargs: dict,
    batch_size: int,
    progress_bar: Callable[[int], object],
    step_callback: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    cross_attention_kwargs: dict | None = None,
    timesteps: torch.Tensor | None = None,
    interrupted: Callable[[], bool] = lambda: False,
    ranks: Ranks | None = None,
    known=None,
) -> torch.Tensor:
    """Run ``timesteps`` (default: all of the scheduler's; audio-to-audio starts part way) on the windows of
    ``plan`` (``plan_windows``).

    ``conditioning()`` is read at every step, since a callback may change it: the family's adapter holding the
    windows' conditioning (``conditioning.py``; one shared by all windows or one per window) and the guidance
    scale.
    ``step_callback(i, t, latents)`` may return replacement latents; the loop stops before a step once
    ``interrupted()`` is true. With ``ranks`` the windows are shared out over them (``predict_noise``)."""
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    with progress_bar(len(timesteps)) as bar:
        if len(plan.windows) > 1 and hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{len(plan.windows)} windows")
        for i, t in enumerate(timesteps):
            if interrupted():
                break
            window_conditioning, guidance_scale = conditioning()
            window_conditioning = window_conditioning.for_windows(len(plan.windows))
            model_input_latents = scheduler.scale_model_input(latents, t)
            noise = predict_noise(unet, model_input_latents, t, window_conditioning, guidance_scale, plan,
                                  batch_size, cross_attention_kwargs, ranks)
            latents = scheduler_step(scheduler, noise, t, latents, extra_step_kwargs, reuse_noise=True)
            del noise
            if known is not None:
                latents = known.replace(latents, timesteps[i + 1] if i + 1 < len(timesteps) else None)
            if step_callback is not None:
                latents = step_callback(i, t, latents)
            bar.update()
    return latents
