"""Running decode for live renders: each tile is decoded as soon as its latents and its right halo are final,
with GroupNorm statistics pooled over the recent past.

Exact mode needs the whole sequence before it can normalise the first tile, and fast mode estimates its
statistics from excerpts of all of it; a live render has neither. Here every GroupNorm (the attention's included)
pools its moments over this tile's own core and the cores of the tiles decoded just before it (Chan's parallel
update, ``groupnorm.pool_stats``), so a tile's statistics depend only on the past and the present: the first
minute of a render does not depend on how long it runs, and the statistics follow a sound that changes along a
timeline with a lag of about ``history`` tiles. The first tile is normalised by its own core alone, as an untiled
decode of it would be. The mid-block self-attention attends within the tile and its halo.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import TilingConfig
from ..offload import fire_hook
from .attention import attend
from .dispatch import decode_input, decode_job
from .groupnorm import GroupStats, group_stats, pool_stats
from .interpreter import Program, run_checked, run_tasks
from .tasks import alignment, halo_frames


def decoder_halo(job: Program, config: TilingConfig) -> int:
    """Input frames read on each side of a tile's core: the decoder's receptive field, or ``config.pad_frames``
    rounded up to the decoder's alignment."""
    if config.pad_frames is None:
        return halo_frames(job.tasks)
    align = alignment(job.tasks)
    return -(-config.pad_frames * job.unit // align) * align


@dataclass
class RunningStatistics:
    """Per-tile moments of every GroupNorm, in task order, for the last ``history`` tiles (oldest first)."""

    history: int
    tiles: list[list[GroupStats]] = field(default_factory=list)

    def pooled(self, index: int, current: GroupStats) -> GroupStats:
        """GroupNorm ``index``'s statistics for a tile whose own core gave ``current``."""
        return pool_stats([tile[index] for tile in self.tiles] + [current])

    def push(self, tile: list[GroupStats]) -> None:
        self.tiles = (self.tiles + [tile])[-self.history :]

    def to_state(self) -> list[list[torch.Tensor]]:
        """The moments as (3, B, G) float64 tensors, for a saved live state."""
        return [[torch.stack([s.count, s.mean, s.m2]) for s in tile] for tile in self.tiles]

    @classmethod
    def from_state(cls, history: int, tiles: list[list[torch.Tensor]]) -> RunningStatistics:
        return cls(history, [[GroupStats(*moments.double().unbind(0)) for moments in tile] for tile in tiles])


class RunningDecoder:
    """The VAE decoder run tile by tile along a sequence that grows at its end (``geometry.ProgressiveLayout``)."""

    def __init__(self, vae, config: TilingConfig, history: int, statistics: RunningStatistics | None = None):
        self.vae, self.config = vae, config
        self.job = decode_job(vae, config)
        self.halo = decoder_halo(self.job, config)
        self.statistics = statistics or RunningStatistics(history)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, core: tuple[int, int], where: tuple[int, int]) -> torch.Tensor:
        """The log-mel (B, 1, factor * core length, n_mels) of ``core`` ([start, stop) within ``latents``, the
        denoised latents (B, C, t, F) a tile reads); ``where``: the core in latent frames of the whole render,
        for messages. The tile's moments join the running statistics."""
        current: list[GroupStats] = []

        def statistics(norm: torch.nn.GroupNorm, values: torch.Tensor) -> GroupStats:
            current.append(group_stats(values, norm.num_groups))
            return self.statistics.pooled(len(current) - 1, current[-1])

        def attend_within(attn, x: torch.Tensor, stats: GroupStats | None, values: torch.Tensor, outside: int):
            return attend(attn, x, stats, None)

        def run(x: torch.Tensor):
            current.clear()  # a half-precision tile retried in float32 starts its moments again
            return run_tasks(self.job.tasks, x, None, statistics, attend_within, core=core)

        fire_hook(self.vae)
        x = 1 / self.vae.config.scaling_factor * decode_input(self.vae, latents.to(self.vae.dtype), self.config)
        mel, _, _ = run_checked(run, x, where, self.job)
        self.statistics.push(list(current))
        return mel
