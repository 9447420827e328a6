"""Peak-memory models of the VAE's encoder and decoder from their shapes, and the tile sizes they imply.

An untiled decode's (or encode's) peak is modelled as a measured factor times its widest activation (the largest
channels x frequency x time tensor it produces); the factors were measured, see their comments.
"""

from __future__ import annotations

import logging
from fractions import Fraction

import torch

from ..config import TilingConfig
from ..memory import memory_budget
from .store import resolve_store
from .tasks import Conv, Downsample, SaveResidual, Task, Upsample, receptive_halo

logger = logging.getLogger(__name__)

# Peak bytes of an untiled AudioLDM VAE decode (fp32, CPU) per latent frame, divided by the bytes per frame of its
# widest activation. Measured: `audioldm-tiled bench decode --seconds 10 40 120` (audioldm-s VAE, one process per
# point) gave peak RSS 1.775 GB at 40 s and 3.657 GB at 120 s: 0.94 MB more per latent frame, against 0.262 MB per
# frame for the widest activation (256 channels x 4 mel frames x 64 mel bins, float32): a factor of 3.59.
UNTILED_DECODE_PEAK_FACTOR = 3.6
# The same for the untiled encode, same method: `audioldm-tiled bench encode --seconds 10 40 120` gave peak RSS
# 1.350 GB at 40 s and 2.662 GB at 120 s: 164 kB more per mel frame, against 32.8 kB per mel frame for the widest
# activation (conv_in's 128 channels x 64 mel bins, float32): a factor of 5.01.
UNTILED_ENCODE_PEAK_FACTOR = 5.0
# What exact tiled decoding holds for the whole sequence (the stream and a resnet's residual, at most), per latent
# frame, divided by the widest activation's bytes per frame. Measured: `audioldm-tiled bench decode` (audioldm-s,
# docs/bench/decode-report.json) gave exact peak RSS 1.364, 2.158 and 3.944 GB at 40, 120 and 300 s: 0.397 MB more
# per latent frame over both steps, against 0.262 MB for the widest activation: a factor of 1.52.
EXACT_STORED_ACTIVATIONS = 1.5
MIN_TILE_FRAMES = 16
MAX_TILE_FRAMES = 256  # one training-length clip (10.24 s)


def widest_activation_per_frame(tasks: list[Task], batch: int, freq: int, dtype: torch.dtype) -> float:
    """Bytes per input frame of the largest activation (channels x frequency x time at one resolution) that the
    tasks (the encoder's or the decoder's) produce from an input with ``freq`` frequency rows."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    widest, scale = 0, Fraction(1)
    for task in tasks:
        if isinstance(task, (Conv, SaveResidual, Downsample)):
            module = task.shortcut if isinstance(task, SaveResidual) else task.module
            if module is not None:
                widest = max(widest, max(module.in_channels, module.out_channels) * freq * scale * scale)
        if isinstance(task, (Upsample, Downsample)):
            scale *= task.factor
    return float(widest * batch * itemsize)


def untiled_bytes(tasks: list[Task], x: torch.Tensor, peak_factor: float) -> int:
    """Estimated peak bytes of running ``tasks`` on ``x`` (B, C, T, F) untiled, beyond what the process holds."""
    return int(peak_factor * widest_activation_per_frame(tasks, x.shape[0], x.shape[3], x.dtype) * x.shape[2])


def untiled_fits(tasks: list[Task], x: torch.Tensor, config: TilingConfig,
                 peak_factor: float) -> tuple[bool, int, int]:
    """(fits, estimated bytes, budget bytes) for running ``tasks`` on ``x`` untiled."""
    budget = memory_budget(config, x.device)
    needed = untiled_bytes(tasks, x, peak_factor)
    return needed <= budget, needed, budget


def exact_stored_bytes(tasks: list[Task], x: torch.Tensor) -> float:
    """Bytes that exact tiling of ``x`` holds for the whole sequence whatever its tile size (see
    EXACT_STORED_ACTIVATIONS): what grows with the length."""
    return EXACT_STORED_ACTIVATIONS * widest_activation_per_frame(tasks, x.shape[0], x.shape[3], x.dtype) * x.shape[2]


def choose_tile_frames(tasks: list[Task], x: torch.Tensor, config: TilingConfig, unit: int,
                       peak_factor: float) -> int:
    """The largest tile core in latent frames (``unit`` input frames each; at most MAX_TILE_FRAMES) whose working set
    fits the budget."""
    budget = memory_budget(config, x.device)
    per_frame = widest_activation_per_frame(tasks, x.shape[0], x.shape[3], x.dtype)
    stored = exact_stored_bytes(tasks, x) if config.mode == "exact" else 0
    if stored and resolve_store(config, stored, x.device) != "device":
        stored = 0  # held in host memory or on disk, not in the device's budget
    halo = receptive_halo(tasks) if config.mode == "fast" else 2 * unit
    frames = int(((budget - stored) / (peak_factor * per_frame) - 2 * halo) / unit)
    if frames < MIN_TILE_FRAMES:
        logger.warning("memory budget %.2f GB is below what tiles of %d frames need; using them anyway",
                       budget / 1e9, MIN_TILE_FRAMES)
    return max(MIN_TILE_FRAMES, min(MAX_TILE_FRAMES, frames))
