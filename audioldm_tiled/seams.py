"""Where the pieces of a render meet, in seconds: the interior edges of the denoising windows and the core
boundaries of the VAE tiles and the vocoder chunks, for seam checks and ``plots.spectrogram_figure``. Each list is
empty where that stage runs in one piece."""

from __future__ import annotations

import math

import torch

from .config import TilingConfig
from .denoise import plan_windows
from .plan import live_layout
from .vae import decode_tiles
from .vocoder import plan_chunks


def windowed_seams(pipe, audio_length_in_s: float | None, config: TilingConfig) -> dict[str, list[float]]:
    """The seams of a streamed (windowed) render of ``audio_length_in_s`` with the call's ``config``."""
    geometry = pipe.geometry
    _, height, _ = geometry.lengths(audio_length_in_s)
    frames = height // geometry.vae_factor
    windows = plan_windows(frames, config).windows
    edges = sorted({w.start for w in windows[1:]} | {w.stop for w in windows[:-1]})
    # Shape, dtype and device are all the planners read: a zero-stride tensor stands in for the latents.
    device = pipe._execution_device
    latents = torch.empty((), device=device, dtype=pipe.vae.dtype).expand(
        1, geometry.latent_channels, frames, geometry.latent_rows)
    tiles = [] if config.enabled is False else decode_tiles(pipe.vae, latents, config)
    mel = torch.empty((), device=device, dtype=pipe.vocoder.dtype).expand(1, 1, geometry.mel_bands)
    chunks = plan_chunks(pipe.vocoder, mel, height, config)
    return {
        "denoising windows": [round(e * geometry.latent_frame_seconds, 6) for e in edges],
        "VAE tiles": [round(t.core_start * geometry.latent_frame_seconds, 6) for t in tiles[1:]],
        "vocoder chunks": [round(c.core_start * geometry.mel_frame_seconds, 6) for c in chunks[1:]],
    }


def live_seams(pipe, audio_length_in_s: float, tiling: TilingConfig | None = None) -> dict[str, list[float]]:
    """The seams of a live render of ``audio_length_in_s``: each window's first new frame, and the core boundaries
    of the decode tiles and the vocoder chunks."""
    layout = live_layout(pipe, pipe.tiling_for_call(tiling))
    geometry = pipe.geometry
    frame_s, mel_s = geometry.latent_frame_seconds, geometry.mel_frame_seconds
    windows = range(1, layout.windows_for(math.ceil(audio_length_in_s / mel_s)))

    def inside(times):
        return [round(t, 6) for t in times if t < audio_length_in_s]

    return {"denoising windows": inside(layout.denoised(k).core_start * frame_s for k in windows),
            "VAE tiles": inside(layout.decoded(k).core_start * frame_s for k in windows),
            "vocoder chunks": inside(layout.vocoded(k).core_start * mel_s for k in windows)}
