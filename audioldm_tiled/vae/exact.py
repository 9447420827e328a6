"""Exact tiled execution: every GroupNorm is a barrier where all tiles stop and their statistics are pooled.

Each segment between two barriers runs tile by tile; a tile reads fresh halo frames from its neighbours' stored
cores. The halo only has to cover the convolutions between two barriers (one or two frames), so almost nothing is
recomputed and the result equals the untiled run to float rounding. Self-attention sees the whole sequence, as
untiled; it sits at latent resolution, 1/16 of the decoder's output size.

The paused tiles live in a ``store`` (``store.py``): on the device, in host memory or on disk. Off the device the
whole sequence is never gathered in one place: the self-attention then runs tile by tile over keys and values kept
in the store (``attention.OnlineSoftmax``), so memory does not grow with the length.

Across the ranks of a process group (``ranks``) each rank runs its contiguous share of the tiles. At a barrier the
ranks gather every tile's moments and pool them in tile order, as one process does; a tile's halo frames held by a
neighbour rank come by point-to-point exchange; the self-attention runs as off the device, each key tile broadcast
by its owner. So the ranks compute what one process computes with the host or disk store, bit for bit, whatever
their count; with the device store, to float rounding (one process attends in one call over the whole sequence).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from ..config import TilingConfig
from ..distributed import Ranks, broadcast_tensor, exchange_frames, gather_objects, smallest, together
from ..geometry import Tile, frames_at, halo_extent, join_frames, wrapped_runs
from ..memory import memory_budget
from .attention import (
    OnlineSoftmax,
    attend_in_blocks,
    attention_output,
    normed_tokens,
    project,
    query_block_tokens,
    split_heads,
)
from .budget import exact_stored_bytes
from .groupnorm import GroupStats, group_stats, pool_stats
from .interpreter import Program, progress_bar, run_checked, run_tasks
from .store import Store, Stored, choose_store, open_store
from .tasks import AddResidual, Global, Norm, SaveResidual, Task, halo_frames, split_segments, time_scale


@dataclass
class TileStream:
    """A sequence held in a store as per-tile cores along time (dim 2), plus the residual of the resnet block in
    flight and, where the next barrier is a GroupNorm, the statistics of each core."""

    store: Store
    cores: list[Stored | None]
    bounds: list[tuple[int, int]]  # core [start, stop) of each tile at the stream's resolution
    residual: list[Stored | None] | None = None
    stats: list[GroupStats | None] | None = None
    # Across ranks: frames of other ranks' cores (and residuals) this rank's halos read, as (first frame, tensor).
    halo: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    residual_halo: list[tuple[int, torch.Tensor]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.bounds[-1][1]

    def gather(self, lo: int, hi: int, residual: bool = False) -> torch.Tensor:
        """Frames [lo, hi) read from whichever cores hold them; on a loop's circular axis frames before 0 and from
        the length on are read modulo the length."""
        return join_frames([self._gather(a, b, residual) for a, b in wrapped_runs(lo, hi, self.length)], 2)

    def _gather(self, lo: int, hi: int, residual: bool) -> torch.Tensor:
        source = self.residual if residual else self.cores
        pieces = [(a, self.store.read(source[j], max(lo, a) - a, min(hi, b) - a))
                  for j, (a, b) in enumerate(self.bounds) if a < hi and b > lo and source[j] is not None]
        for start, frames in self.residual_halo if residual else self.halo:
            if start < hi and start + frames.shape[2] > lo:
                pieces.append((start, frames[:, :, max(lo, start) - start : min(hi, start + frames.shape[2]) - start]))
        return join_frames([piece for _, piece in sorted(pieces, key=lambda item: item[0])], 2)

    def whole(self) -> torch.Tensor:
        return self.gather(0, self.length)

    def holders(self, lo: int, hi: int) -> list[int]:
        """The tiles whose cores hold any of frames [lo, hi) (modulo the length)."""
        runs = wrapped_runs(lo, hi, self.length)
        return [j for j, (a, b) in enumerate(self.bounds) if any(a < y and b > x for x, y in runs)]

    def release(self, j: int, residual: bool) -> None:
        for source in (self.cores, self.residual) if residual else (self.cores,):
            if source[j] is not None:
                self.store.release(source[j])
                source[j] = None


def zigzag(count: int, segment: int) -> list[int]:
    """Alternate the tile order at every barrier, so the tile at each turn is still at hand (on the device)."""
    order = list(range(count))
    return order if segment % 2 == 0 else order[::-1]


def barrier_norm(task: Task | None) -> nn.GroupNorm | None:
    """The GroupNorm whose statistics a barrier needs over the whole sequence, if any."""
    if isinstance(task, Norm):
        return task.module
    if isinstance(task, Global):
        return getattr(task.module, "group_norm", None)
    return None


def iter_exact(job: Program, x: torch.Tensor, tiles: list[Tile], config: TilingConfig, ranks: Ranks | None = None,
               circular: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
    """Exact tiled execution of ``job.tasks`` on ``x`` (B, C, T, F), tiled along T by ``tiles``: (tile index, output
    core) pairs in time order, produced as the segment after the last barrier runs.

    With ``ranks`` every rank holds all of ``x`` and runs its share of the tiles (``Ranks.share``), and yields the
    cores of those alone. ``circular`` decodes a loop: time wraps around, so the first tile's halo comes from the
    end and the last one's from the start, while the statistics and the attention are those of the one period.
    """
    if circular and ranks is not None:
        raise ValueError("a loop (circular time axis) is decoded in one process, not across ranks")
    return _exact_segments(job, x, tiles, config, ranks, circular)


def run_exact(job: Program, x: torch.Tensor, tiles: list[Tile], config: TilingConfig) -> torch.Tensor:
    """The whole output of ``iter_exact`` in one process, joined along time."""
    return torch.cat([core for _, core in iter_exact(job, x, tiles, config)], dim=2)


def _exact_segments(job: Program, x: torch.Tensor, tiles: list[Tile], config: TilingConfig, ranks: Ranks | None,
                    circular: bool):
    segments = split_segments(job.tasks)
    mine = range(len(tiles)) if ranks is None else ranks.share(len(tiles))
    budget = smallest(ranks, memory_budget(config, x.device))
    own = tiles[mine[-1]].core_stop - tiles[mine[0]].core_start if mine else 0  # frames: x may not be held whole
    own = torch.empty((x.shape[0], x.shape[1], own, x.shape[3]), dtype=x.dtype, device="meta")
    kind = choose_store(config, exact_stored_bytes(job.tasks, own), x.device, job.name)
    bounds = [(t.core_start, t.core_stop) for t in tiles]
    with open_store(kind, x.device, config.store_dir) as store, \
            progress_bar(len(segments) * len(mine), config, f"{job.name} (exact)") as bar:
        inputs = [store.put(x.narrow(2, a, b - a)) if j in mine else None for j, (a, b) in enumerate(bounds)]
        stream = TileStream(store, inputs, bounds)
        for index, segment in enumerate(segments):
            last = index == len(segments) - 1
            head = segment[0]
            norm = barrier_norm(head)
            stats = None
            if norm is not None:
                parts = stream.stats or [None if c is None else group_stats(store.read(c), norm.num_groups)
                                         for c in stream.cores]
                stats = pool_stats(_every_tile(ranks, parts, mine))
            if isinstance(head, Global):
                stream = together(ranks, partial(_attend, head.module, stream, stats, budget, index, mine, ranks))
                segment, stats = segment[1:], None
            next_norm = None if last else barrier_norm(segments[index + 1][0])
            if ranks is not None:
                _exchange_halos(ranks, stream, tiles, segment, mine)
            run = _run_segment(job, stream, tiles, segment, stats, next_norm, index, last, bar, mine, circular)
            if last:
                yield from run
            else:
                stream = together(ranks, lambda run=run: _finish(run))


def _finish(generator):
    """The return value of a generator that yields nothing (a segment before the last barrier)."""
    try:
        next(generator)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("a segment before the last barrier yielded output")


def _every_tile(ranks: Ranks | None, parts: list[GroupStats | None], mine: range) -> list[GroupStats]:
    """Every tile's moments in tile order: across ranks each rank's own, gathered."""
    if ranks is None:
        return parts
    return [part for share in gather_objects(ranks, [parts[j] for j in mine]) for part in share]


def _exchange_halos(ranks: Ranks, stream: TileStream, tiles: list[Tile], segment: list[Task], mine: range) -> None:
    """Fetch the frames of other ranks' cores (and residuals) that this rank's tiles read as halo in ``segment``."""
    halo = halo_frames(segment)
    stream.halo, stream.residual_halo = [], []
    if halo == 0:  # the same on every rank
        return
    spans = [_span(stream.bounds, Ranks(r, ranks.world).share(len(tiles))) for r in range(ranks.world)]
    needed = [halo_extent(a, b, halo, stream.length) if a < b else (0, 0) for a, b in spans]
    # Neighbours' frames have the shape (but for the frames' count) and dtype of this rank's own: they are sent so.
    # A rank without tiles sends and receives nothing, but takes part in the exchange's agreement.
    own = stream.cores[mine[0]] if mine else None
    shape, dtype = (own.shape, own.dtype) if mine else ((), None)
    stream.halo = exchange_frames(ranks, stream.gather, spans, needed, shape, dtype)
    if any(isinstance(t, AddResidual) for t in segment):
        residual = stream.residual[mine[0]] if mine else None
        shape, dtype = (residual.shape, residual.dtype) if mine else ((), None)
        stream.residual_halo = exchange_frames(ranks, lambda lo, hi: stream.gather(lo, hi, residual=True), spans,
                                               needed, shape, dtype)


def _span(bounds: list[tuple[int, int]], share: range) -> tuple[int, int]:
    return (bounds[share[0]][0], bounds[share[-1]][1]) if share else (0, 0)


def _run_segment(job: Program, stream: TileStream, tiles: list[Tile], segment: list[Task], stats: GroupStats | None,
                 next_norm: nn.GroupNorm | None, index: int, last: bool, bar, mine: range, circular: bool):
    """Run one segment's local tasks tile by tile and return the stream they produce; after the last barrier, yield
    the output cores instead. On a ``circular`` axis every tile reads its halo, the first and last ones across
    the wrap."""
    store = stream.store
    halo = halo_frames(segment)
    factor = time_scale(segment)
    uses_residual = any(isinstance(t, AddResidual) for t in segment)
    saves_residual = any(isinstance(t, SaveResidual) for t in segment)
    # The cores each tile reads; a core is freed as soon as every tile reading it is done.
    extents, readers = [], [0] * len(tiles)
    for i, (s, e) in enumerate(stream.bounds):
        lo, hi = halo_extent(s, e, halo, stream.length, circular)
        used = stream.holders(lo, hi) if i in mine else []
        extents.append((lo, hi, used))
        for j in used:
            readers[j] += 1
    new_cores: list[Stored | None] = [None] * len(tiles)
    new_residual: list[Stored | None] = [None] * len(tiles)
    new_stats: list[GroupStats | None] = [None] * len(tiles)
    for i in mine if last else [mine[k] for k in zigzag(len(mine), index)]:
        (s, e), (lo, hi, used) = stream.bounds[i], extents[i]
        ext = stream.gather(lo, hi)
        res = stream.gather(lo, hi, residual=True) if uses_residual else None
        y, saved, saved_scale = run_checked(
            lambda inp, res=res, segment=segment, stats=stats: run_tasks(
                segment, inp, None if res is None else res.to(inp.dtype), lambda norm, core: stats),
            ext, (tiles[i].core_start, tiles[i].core_stop), job)
        core = y[:, :, frames_at(s - lo, factor) : frames_at(e - lo, factor)]
        del ext, res
        for j in used:
            readers[j] -= 1
            if readers[j] == 0:
                stream.release(j, residual=uses_residual)
        bar.update()
        if last:
            yield i, core
            continue
        if next_norm is not None:
            new_stats[i] = group_stats(core, next_norm.num_groups)
        new_cores[i] = store.put(core)  # on the device, a view of the tile's output: its halo is not worth a copy
        if saves_residual:
            piece = saved[:, :, frames_at(s - lo, saved_scale) : frames_at(e - lo, saved_scale)]
            # Where the residual is the segment's output itself (no shortcut), core and residual are one tensor:
            # stored once, not twice.
            shared = piece.data_ptr() == core.data_ptr() and piece.shape == core.shape and \
                piece.stride() == core.stride()
            new_residual[i] = store.share(new_cores[i]) if shared else store.put(piece)
        del y, saved, core
    if last:
        return None
    residual = new_residual if saves_residual else (None if uses_residual else stream.residual)
    bounds = [(frames_at(s, factor), frames_at(e, factor)) for s, e in stream.bounds]
    return TileStream(store, new_cores, bounds, residual, new_stats if next_norm is not None else None)


# Keys per stored part that a query block attends to at once: one 256-frame tile of AudioLDM's latents (16
# frequency rows). Smaller tiles are read in runs of this many tokens, so per-part overhead stays small while the
# memory a part takes does not depend on the length.
KEY_PART_TOKENS = 4096


def key_parts(tile_tokens: list[int]) -> list[slice]:
    """Runs of consecutive tiles holding at least KEY_PART_TOKENS tokens each (the last run may hold fewer)."""
    parts, start, tokens = [], 0, 0
    for j, n in enumerate(tile_tokens):
        tokens += n
        if tokens >= KEY_PART_TOKENS:
            parts.append(slice(start, j + 1))
            start, tokens = j + 1, 0
    if start < len(tile_tokens):
        parts.append(slice(start, len(tile_tokens)))
    return parts


def _attend(attn: nn.Module, stream: TileStream, stats: GroupStats | None, budget: int, index: int, mine: range,
            ranks: Ranks | None) -> TileStream:
    """The self-attention over the whole sequence, as a new stream of cores at the same bounds."""
    store = stream.store
    if ranks is None and not store.streams_attention:
        sequence = stream.whole()
        for j in range(len(stream.cores)):
            stream.release(j, residual=False)
        whole = attend_in_blocks(attn, sequence, query_block_tokens(attn, sequence, budget))
        del sequence
        cores = [store.put(whole[:, :, a:b]) for a, b in stream.bounds]
        return TileStream(store, cores, stream.bounds, stream.residual)
    # Keys and values of every tile go to the store first; then each tile's queries attend to all of them, a run
    # of stored key tiles at a time. Across ranks each rank holds its own tiles' keys and values, and every run is
    # broadcast by the ranks that hold it, so each rank attends its own queries to every key.
    keys: list[Stored | None] = [None] * len(stream.cores)
    values: list[Stored | None] = [None] * len(stream.cores)
    for j in mine:
        tokens = normed_tokens(attn, store.read(stream.cores[j]), stats)
        keys[j] = store.put(split_heads(attn, project(attn.to_k, tokens)))
        values[j] = store.put(split_heads(attn, project(attn.to_v, tokens)))
        del tokens
    rows = stream.cores[mine[0]].shape[3] if mine else 0  # tokens per time frame
    rows = rows if ranks is None else max(gather_objects(ranks, rows))
    parts = key_parts([(b - a) * rows for a, b in stream.bounds])
    part_tokens = max(sum(b - a for a, b in stream.bounds[part]) for part in parts) * rows
    cores: list[Stored | None] = [None] * len(stream.cores)
    owners = [] if ranks is None else ranks.owners(len(stream.cores))

    def key_runs():
        for part in parts:
            yield tuple(join_frames([_shared(store, items[j], j, ranks, owners) for j in range(part.start, part.stop)],
                                    2) for items in (keys, values))

    if ranks is None:
        for i in zigzag(len(stream.cores), index):
            x = store.read(stream.cores[i])
            tokens = normed_tokens(attn, x, stats)
            softmax = OnlineSoftmax(split_heads(attn, project(attn.to_q, tokens)),
                                    query_block_tokens(attn, x, budget, part_tokens))
            del tokens
            for key, value in key_runs():
                softmax.add(key, value)
            cores[i] = store.put(attention_output(attn, softmax.result(), x))
            del x, softmax
            stream.release(i, residual=False)
    else:
        # Every run is broadcast once, so all of this rank's queries attend to it before the next.
        softmaxes = {}
        for i in mine:
            x = store.read(stream.cores[i])
            tokens = normed_tokens(attn, x, stats)
            softmaxes[i] = OnlineSoftmax(split_heads(attn, project(attn.to_q, tokens)),
                                         query_block_tokens(attn, x, budget, part_tokens))
            del x, tokens
        for key, value in key_runs():
            for softmax in softmaxes.values():
                softmax.add(key, value)
        for i in mine:
            cores[i] = store.put(attention_output(attn, softmaxes.pop(i).result(), store.read(stream.cores[i])))
            stream.release(i, residual=False)
    for item in keys + values:
        if item is not None:
            store.release(item)
    return TileStream(store, cores, stream.bounds, stream.residual)


def _shared(store: Store, item: Stored | None, j: int, ranks: Ranks | None, owners: list[int]) -> torch.Tensor:
    """Key or value tile ``j``: read from the store, or across ranks broadcast by the rank that holds it."""
    if ranks is None:
        return store.read(item)
    return broadcast_tensor(ranks, None if item is None else store.read(item), owners[j])
