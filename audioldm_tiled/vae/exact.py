"""Exact tiled execution: every GroupNorm is a barrier where all tiles stop and their statistics are pooled.

Each segment between two barriers runs tile by tile; a tile reads fresh halo frames from its neighbours' stored
cores. The halo only has to cover the convolutions between two barriers (one or two frames), so almost nothing is
recomputed and the result equals the untiled run to float rounding. Self-attention runs on the whole sequence, as
untiled; it sits at latent resolution, 1/16 of the decoder's output size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..config import TilingConfig
from ..geometry import Tile, frames_at
from ..memory import memory_budget
from .attention import attend_in_blocks, query_block_tokens
from .groupnorm import group_stats, pool_stats
from .interpreter import Job, progress_bar, run_checked, run_tasks
from .tasks import AddResidual, Global, Norm, SaveResidual, halo_frames, split_segments, time_scale


@dataclass
class TileStream:
    """A sequence held as per-tile cores along time (dim 2), plus the residual of the resnet block in flight."""

    cores: list[torch.Tensor | None]
    bounds: list[tuple[int, int]]  # core [start, stop) of each tile at the stream's resolution
    residual: list[torch.Tensor | None] | None = None

    @property
    def length(self) -> int:
        return self.bounds[-1][1]

    def gather(self, lo: int, hi: int, residual: bool = False) -> torch.Tensor:
        """Frames [lo, hi) read from whichever cores hold them."""
        source = self.residual if residual else self.cores
        pieces = [source[j][:, :, max(lo, a) - a : min(hi, b) - a] for j, (a, b) in enumerate(self.bounds)
                  if a < hi and b > lo]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)

    def whole(self) -> torch.Tensor:
        return self.cores[0] if len(self.cores) == 1 else torch.cat(self.cores, dim=2)



def zigzag(count: int, segment: int) -> list[int]:
    """Alternate the tile order at every barrier, so the tile at each turn is still at hand (on the device)."""
    order = list(range(count))
    return order if segment % 2 == 0 else order[::-1]


def run_exact(job: Job, x: torch.Tensor, tiles: list[Tile], config: TilingConfig,
              stream_last: bool = False) -> Iterator[tuple[int, torch.Tensor]] | torch.Tensor:
    """Exact tiled execution of ``tasks`` on ``x`` (B, C, T, F), tiled along T by ``tiles``.

    With ``stream_last`` this is a generator of (tile index, output core) pairs in time order, produced as the
    segment after the last barrier runs; otherwise it returns the whole output.
    """
    generator = _exact_segments(job, x, tiles, config)
    if stream_last:
        return generator
    return torch.cat([core for _, core in generator], dim=2)


def _exact_segments(job: Job, x: torch.Tensor, tiles: list[Tile], config: TilingConfig):
    segments = split_segments(job.tasks)
    budget = memory_budget(config, x.device)
    bounds = [(t.core_start, t.core_stop) for t in tiles]
    stream = TileStream([x[:, :, a:b] for a, b in bounds], bounds)
    with progress_bar(len(segments) * len(tiles), config, f"{job.name} (exact)") as bar:
        for index, segment in enumerate(segments):
            last = index == len(segments) - 1
            head = segment[0]
            if isinstance(head, Global):
                sequence = stream.whole()
                whole = attend_in_blocks(head.module, sequence, query_block_tokens(head.module, sequence, budget))
                del sequence
                stream.cores = [whole[:, :, a:b] for a, b in stream.bounds]
                del whole
                segment = segment[1:]
            stats = pool_stats([group_stats(c, head.module.num_groups) for c in stream.cores]) \
                if isinstance(head, Norm) else None
            halo = halo_frames(segment)
            factor = time_scale(segment)
            uses_residual = any(isinstance(t, AddResidual) for t in segment)
            saves_residual = any(isinstance(t, SaveResidual) for t in segment)
            # The cores each tile reads; a core is freed as soon as every tile reading it is done.
            extents, readers = [], [0] * len(tiles)
            for s, e in stream.bounds:
                lo, hi = max(0, s - halo), min(stream.length, e + halo)
                used = [j for j, (a, b) in enumerate(stream.bounds) if a < hi and b > lo]
                extents.append((lo, hi, used))
                for j in used:
                    readers[j] += 1
            new_cores: list[torch.Tensor | None] = [None] * len(tiles)
            new_residual: list[torch.Tensor | None] = [None] * len(tiles)
            for i in range(len(tiles)) if last else zigzag(len(tiles), index):
                (s, e), (lo, hi, used) = stream.bounds[i], extents[i]
                ext = stream.gather(lo, hi)
                res = stream.gather(lo, hi, residual=True) if uses_residual else None
                y, saved, saved_scale = run_checked(
                    lambda inp, res=res, segment=segment, stats=stats: run_tasks(
                        segment, inp, None if res is None else res.to(inp.dtype), lambda norm, core: stats),
                    ext, (tiles[i].core_start, tiles[i].core_stop), job)
                core = y[:, :, frames_at(s - lo, factor) : frames_at(e - lo, factor)]
                if saves_residual:
                    # A view, not a copy: where the residual is the segment's output itself (no shortcut), core and
                    # residual then share one buffer instead of storing the whole sequence twice.
                    new_residual[i] = saved[:, :, frames_at(s - lo, saved_scale) : frames_at(e - lo, saved_scale)]
                del ext, res, y, saved
                for j in used:
                    readers[j] -= 1
                    if readers[j] == 0:
                        stream.cores[j] = None
                        if uses_residual:
                            stream.residual[j] = None
                bar.update()
                if last:
                    yield i, core
                else:
                    new_cores[i] = core  # a view of the tile's output; its few halo frames are not worth a copy
            residual = new_residual if saves_residual else (None if uses_residual else stream.residual)
            bounds = [(frames_at(s, factor), frames_at(e, factor)) for s, e in stream.bounds]
            stream = TileStream(new_cores, bounds, residual)


