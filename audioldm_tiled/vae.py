"""Tiled VAE decode and encode along time: one executor for both directions.

Exact mode runs the decoder's task list segment by segment: every GroupNorm is a barrier where all tiles stop, the
statistics are pooled over the tiles' cores, and each tile then reads fresh halo frames from its neighbours' stored
cores. The halo only has to cover the convolutions between two barriers (one or two frames), so almost nothing is
recomputed and the result equals the untiled decode to float rounding. Self-attention runs on the whole sequence, as
untiled; it sits at latent resolution, 1/16 of the output's size.

Fast mode estimates once, from a short proxy made of excerpts of the latent, the statistics of every GroupNorm and
the keys and values of the mid-block attention, then runs each tile start to finish with a halo covering the whole
decoder: no barriers and no stored intermediates, so neither memory nor the attention's cost grows faster than the
length. A tile's attention sees its own frames exactly and the rest of the sequence through the proxy's keys, each
weighted by how many frames it stands for (see ``_attend``).

The encoder is run by the same executors on its own task list: its stride-2 downsamplers only ask that tile extents
start on even frames at their input, which the halos are rounded to (``tasks.halo_frames``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from tqdm.auto import tqdm

from .config import TilingConfig
from .constants import MEL_FRAMES_PER_SECOND
from .geometry import Tile, frames_at, plan_tiles
from .groupnorm import GroupStats, apply_group_norm, group_stats, pool_stats
from .memory import (
    BUDGET_SHARE, UNTILED_DECODE_PEAK_FACTOR, UNTILED_ENCODE_PEAK_FACTOR, InsufficientMemoryError, choose_tile_frames,
    exact_stored_bytes, is_out_of_memory, memory_budget, release_cached_memory, return_large_allocations_to_the_system,
    untiled_fits,
)
from .tasks import (
    Act, AddResidual, Conv, Downsample, Global, Norm, SaveResidual, Task, Upsample, alignment, decoder_tasks,
    TaskExtent, conv_cost, encoder_tasks, halo_frames, split_segments, time_scale,
)

logger = logging.getLogger(__name__)


class NonFiniteTileError(FloatingPointError):
    """A tile produced NaN or inf even when recomputed in float32."""


@dataclass
class _Stream:
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


def _conv(x: torch.Tensor, module: torch.nn.Conv2d) -> torch.Tensor:
    """The module's convolution in x's dtype (which is float32 when a half-precision tile is retried)."""
    if x.dtype == module.weight.dtype:
        return module(x)
    bias = None if module.bias is None else module.bias.to(x.dtype)
    return F.conv2d(x, module.weight.to(x.dtype), bias, module.stride, module.padding, module.dilation, module.groups)


Statistics = Callable[[torch.nn.GroupNorm, torch.Tensor], GroupStats]
Attend = Callable[[torch.nn.Module, torch.Tensor, "GroupStats | None", torch.Tensor, int], torch.Tensor]


def _run_local(tasks: list[Task], x: torch.Tensor, residual: torch.Tensor | None, statistics: Statistics,
               attend: Attend | None = None, core: tuple[int, int] | None = None, length: int = 0,
               batch_groups: int = 1) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Run tasks on one extent of the sequence.

    ``statistics(norm, core values)`` gives each GroupNorm's statistics (attention norms included), in order; the
    proxy computes them from the values, the tiles look them up. A self-attention (fast mode only) is
    ``attend(module, x, norm statistics, core values, outside frames)``; ``length`` (input frames) tells how many
    frames of the sequence the extent does not hold. With ``core`` ([start, stop) in input frames of x) the extent
    shrinks task by task to what the remaining tasks still read (``tasks.TaskExtent``) and the output is the
    core alone. Returns the output, the residual saved by the last SaveResidual (or None) and the time scale there.
    """
    extent = TaskExtent(tasks, x.shape[2], core)
    saved, saved_scale, residual_start = None, Fraction(1), 0

    def core_of(x: torch.Tensor) -> torch.Tensor:
        a, b = extent.core_bounds()
        return x[:, :, a - extent.start : b - extent.start]

    for index, task in enumerate(tasks):
        lo, hi = extent.enter(index)
        if (lo, hi) != (0, x.shape[2]):
            x = x[:, :, lo:hi]
        if isinstance(task, Norm):
            x = apply_group_norm(x, statistics(task.module, core_of(x)), task.module, batch_groups)
        elif isinstance(task, Global):
            if attend is None:
                raise TypeError(f"not a local task: {task!r}")
            norm = task.module.group_norm
            norm_stats = None if norm is None else statistics(norm, core_of(x))
            x = attend(task.module, x, norm_stats, core_of(x), max(0, frames_at(length, extent.scale) - x.shape[2]))
        elif isinstance(task, Conv):
            x = _conv(x, task.module)
        elif isinstance(task, Act):
            x = task.module(x)
        elif isinstance(task, Upsample):
            x = F.interpolate(x, scale_factor=float(task.factor), mode="nearest")
        elif isinstance(task, Downsample):
            x = _conv(F.pad(x, (0, 1, 0, 1)), task.module)  # as Downsample2D(padding=0): a zero frame, then stride 2
        elif isinstance(task, SaveResidual):
            saved = residual = x if task.shortcut is None else _conv(x, task.shortcut)
            saved_scale, residual_start = extent.scale, extent.start
        elif isinstance(task, AddResidual):
            offset = extent.start - residual_start
            x = (residual[:, :, offset : offset + x.shape[2]] + x) / task.scale
            residual = None
        else:
            raise TypeError(f"not a local task: {task!r}")
        extent.leave(index)
    if core is not None:
        x = core_of(x)
    return x, saved, saved_scale


@dataclass(frozen=True)
class _Job:
    """What the executors need to know about the direction they run: the task list, how many input frames make
    one latent frame (tile sizes are set in latent frames), seconds per input frame, a name for messages and the
    measured peak factor of running it untiled (``memory.UNTILED_*_PEAK_FACTOR``)."""

    tasks: list[Task]
    unit: int
    frame_seconds: float
    name: str
    peak_factor: float

    def seconds(self, frame: int) -> float:
        return frame * self.frame_seconds


def _all_finite(x: torch.Tensor) -> bool:
    """True when no value of x is NaN or inf: one float64 sum, in which NaN and inf propagate and finite float32 or
    half values cannot overflow. ``torch.isfinite(x).all()`` builds an abs() copy of x and a boolean mask; under the
    torch profiler those abs() calls took 1.2 s of an exact 40 s decode's 26.4 s (audioldm-s, CPU), though one
    unprofiled run took 27.3 s either way (within this machine's noise)."""
    return math.isfinite(x.sum(dtype=torch.float64).item())


def _checked(run, x: torch.Tensor, where: tuple[int, int], job: _Job):
    """Run ``run(x)``; on NaN/inf in half precision retry once in float32, else raise naming the time range.

    A retried tile whose values do not fit the half-precision range stays in float32; the next barrier reads
    float32 and half pieces alike (``torch.cat`` promotes), and the final output is cast back.
    """
    out = run(x)
    if _all_finite(out[0]):
        return out
    if x.dtype in (torch.float16, torch.bfloat16):
        logger.warning("non-finite values in %s tile %.2f-%.2f s; retrying it in float32", x.dtype,
                       job.seconds(where[0]), job.seconds(where[1]))
        out = run(x.float())
        if _all_finite(out[0]):
            narrowed = out[0].to(x.dtype)
            return (narrowed,) + tuple(out[1:]) if _all_finite(narrowed) else out
    raise NonFiniteTileError(
        f"the {job.name} produced NaN or inf in the tile covering {job.seconds(where[0]):.2f}-"
        f"{job.seconds(where[1]):.2f} s (dtype {x.dtype}); check its input"
    )


def _progress(total: int, config: TilingConfig, desc: str):
    return tqdm(total=total, desc=desc, disable=not config.show_progress, leave=False)


def _zigzag(count: int, segment: int) -> list[int]:
    """Alternate the tile order at every barrier, so the tile at each turn is still at hand (on the device)."""
    order = list(range(count))
    return order if segment % 2 == 0 else order[::-1]


def run_exact(job: _Job, x: torch.Tensor, tiles: list[Tile], config: TilingConfig,
              stream_last: bool = False) -> Iterator[tuple[int, torch.Tensor]] | torch.Tensor:
    """Exact tiled execution of ``tasks`` on ``x`` (B, C, T, F), tiled along T by ``tiles``.

    With ``stream_last`` this is a generator of (tile index, output core) pairs in time order, produced as the
    segment after the last barrier runs; otherwise it returns the whole output.
    """
    generator = _exact_segments(job, x, tiles, config)
    if stream_last:
        return generator
    return torch.cat([core for _, core in generator], dim=2)


def _exact_segments(job: _Job, x: torch.Tensor, tiles: list[Tile], config: TilingConfig):
    segments = split_segments(job.tasks)
    stream = _Stream([x[:, :, t.core_start : t.core_stop] for t in tiles], [(t.core_start, t.core_stop) for t in tiles])
    with _progress(len(segments) * len(tiles), config, f"{job.name} (exact)") as bar:
        for index, segment in enumerate(segments):
            last = index == len(segments) - 1
            head = segment[0]
            if isinstance(head, Global):
                whole = head.module(stream.whole())
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
            for i in range(len(tiles)) if last else _zigzag(len(tiles), index):
                (s, e), (lo, hi, used) = stream.bounds[i], extents[i]
                ext = stream.gather(lo, hi)
                res = stream.gather(lo, hi, residual=True) if uses_residual else None
                y, saved, saved_scale = _checked(
                    lambda inp, res=res: _run_local(segment, inp, None if res is None else res.to(inp.dtype),
                                                    lambda norm, core: stats),
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
            stream = _Stream(new_cores, bounds, residual)


@dataclass(frozen=True)
class _AttentionMemory:
    """Keys and values of the proxy's tokens at one self-attention, per batch row: (B, heads, n, head_dim)."""

    key: torch.Tensor
    value: torch.Tensor
    frames: int  # time frames (at the attention's resolution) that the n tokens were taken from

    def rows(self, repeats: int) -> "_AttentionMemory":
        return _AttentionMemory(self.key.repeat(repeats, 1, 1, 1), self.value.repeat(repeats, 1, 1, 1), self.frames)

    @staticmethod
    def join(parts: list["_AttentionMemory"]) -> "_AttentionMemory":
        return _AttentionMemory(torch.cat([m.key for m in parts], dim=2), torch.cat([m.value for m in parts], dim=2),
                                sum(m.frames for m in parts))


def _heads(attn, tokens: torch.Tensor) -> torch.Tensor:
    """(B, n, heads * d) -> (B, heads, n, d)."""
    return tokens.unflatten(-1, (attn.heads, -1)).transpose(1, 2)


def _normed_tokens(attn, x: torch.Tensor, stats: GroupStats | None, batch_groups: int = 1) -> torch.Tensor:
    """The attention's GroupNorm (with the given statistics) applied to x (B, C, T, F), as tokens (B, T*F, C)."""
    if attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None:
        raise ValueError("fast tiled decode: the VAE's attention uses spatial_norm/norm_q/norm_k; use mode='exact'")
    if attn.group_norm is not None:
        x = apply_group_norm(x, stats, attn.group_norm, batch_groups)
    return x.flatten(2).transpose(1, 2)


def _attention_memory(attn, x: torch.Tensor, stats: GroupStats | None) -> _AttentionMemory:
    tokens = _normed_tokens(attn, x, stats)
    return _AttentionMemory(_heads(attn, attn.to_k(tokens)), _heads(attn, attn.to_v(tokens)), x.shape[2])


def _attend(attn, x: torch.Tensor, stats: GroupStats | None, memory: _AttentionMemory | None,
            outside_frames: int = 0, local: bool = True, batch_groups: int = 1) -> torch.Tensor:
    """What ``attn(x)`` computes (diffusers' AttnProcessor2_0), with keys from x itself and/or from a memory.

    With ``local`` the tokens of x are keys at weight one. The memory's tokens are a sample of the rest of the
    sequence: ``outside_frames`` frames stand behind its ``memory.frames`` frames, so each of its keys enters the
    softmax with the multiplicity outside_frames / memory.frames (a log-weight added to its logits). Without local
    keys the memory is the whole sequence's sample and its weight cancels in the softmax.
    """
    b, c, t, f = x.shape
    tokens = _normed_tokens(attn, x, stats, batch_groups)
    query = _heads(attn, attn.to_q(tokens))
    keys, values, bias = [], [], []
    if local:
        keys.append(_heads(attn, attn.to_k(tokens)))
        values.append(_heads(attn, attn.to_v(tokens)))
        bias.append(torch.zeros(keys[0].shape[2], dtype=query.dtype, device=x.device))
    if memory is not None and (outside_frames > 0 or not local):
        keys.append(memory.key.to(query.dtype))
        values.append(memory.value.to(query.dtype))
        weight = math.log(outside_frames / memory.frames) if local else 0.0
        bias.append(torch.full((memory.key.shape[2],), weight, dtype=query.dtype, device=x.device))
    mask = torch.cat(bias)[None, None, None] if local and len(bias) > 1 else None
    out = F.scaled_dot_product_attention(query, torch.cat(keys, dim=2), torch.cat(values, dim=2), attn_mask=mask)
    out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))
    out = out.transpose(1, 2).reshape(b, c, t, f)
    if attn.residual_connection:
        out = out + x
    return out / attn.rescale_output_factor


@dataclass(frozen=True)
class _Proxy:
    """Where the proxy's excerpts sit: ``rounds`` rounds of ``count`` cores of ``core`` frames, each core with
    ``margin`` frames per side; excerpts start on multiples of ``align`` (and core and margin are multiples of it)."""

    count: int
    core: int
    margin: int
    align: int = 1
    rounds: int = 1


# Fast mode spends at most this share of a whole decode (in convolution work) on its proxy, and where one round of
# the proxy costs that much it decodes exactly instead. Measured with `audioldm-tiled bench decode --seconds 40`
# (audioldm-s, 1000 latent frames, where one round is 0.35 of a decode): fast mode with its proxy took 27.1 s at
# 23.7 dB SNR, exact mode 27.3 s at 108 dB. Where the proxy is that large a share, the tiles plus the proxy cost what
# exact mode's pooled barriers cost, so exact mode runs.
PROXY_MAX_SHARE = 0.25


def plan_proxy(tasks: list[Task], length: int, proxy_frames: int, margin: int, excerpt_core: int = 32,
               align: int = 1) -> _Proxy | None:
    """The excerpts of a fast-mode proxy for ``tasks`` run on ``length`` input frames, or None where one round of
    ``proxy_frames`` would cost ``PROXY_MAX_SHARE`` of a whole run or more (in convolution work,
    ``tasks.conv_cost``): there fast mode runs exactly. Otherwise as many rounds as stay under that share.

    All sizes are in input frames; ``margin`` and ``excerpt_core`` must be multiples of ``align``."""
    count = max(1, min(proxy_frames, length) // excerpt_core)
    if excerpt_core + 2 * margin > length:
        return None
    round_cost = count * conv_cost(tasks, excerpt_core + 2 * margin, (margin, margin + excerpt_core))
    rounds = math.ceil(PROXY_MAX_SHARE * conv_cost(tasks, length) / round_cost) - 1  # strictly under the share
    rounds = min(rounds, max(1, (length - 2 * margin) // (count * excerpt_core)))  # no excerpt sampled twice
    return _Proxy(count, excerpt_core, margin, align, rounds) if rounds >= 1 else None


# The tiles attend to the keys and values of this many proxy rounds (512 latent frames with the defaults, 34 MB in
# float32), a fixed size so that memory does not grow with the length. Measured on 300 s of randn (3 tiles), keys of
# round 0, rounds 0-1 and rounds 0-3: with exact statistics 37.7, 39.9 and 43.6 dB; with fast mode's estimated ones
# (the limit there) 37.4 dB for two rounds and 37.6 dB for four, whose keys raised fast mode's peak at 300 s from
# 1.08 to 1.16 GB (`bench decode`), past 1.2x its 10 s peak.
ATTENTION_ROUNDS = 2


@dataclass(frozen=True)
class FastEstimate:
    """What fast mode estimates once: statistics per GroupNorm (attention norms included), in task order, and the
    proxy's keys and values at each self-attention."""

    stats: list[GroupStats]
    memories: list[_AttentionMemory]


def estimate_stats(tasks: list[Task], latents: torch.Tensor, proxy: _Proxy, tiles: list[Tile],
                   on_round: Callable[[], object] = lambda: None) -> FastEstimate:
    """Estimate every GroupNorm's statistics and each self-attention's keys and values for fast mode, from a proxy
    of ``latents`` (the executor's input, latents or mel).

    The proxy is ``proxy.rounds * proxy.count`` excerpts spread evenly along time (time only: the frequency rows are
    never collapsed); round r takes every rounds-th of them, so each round spans the whole sequence. A round runs on
    its own (``_proxy_round``, memory of one round whatever the length) and the rounds' moments are pooled: the
    sampling error of the estimate falls with the number of frames sampled. The attention keys are those of the
    first ``ATTENTION_ROUNDS`` rounds.

    The first GroupNorm, which only convolutions precede, gets its exact statistics from a pass over ``tiles``.
    """
    length, count, core, margin, align = latents.shape[2], proxy.count, proxy.core, proxy.margin, proxy.align
    slots = proxy.rounds * count
    last = (length - core - margin) // align * align
    starts = [min(last, max(margin, align * round(((k + 0.5) * length / slots - core / 2) / align)))
              for k in range(slots)]
    level = torch.std_mean(latents.float().flatten(2), dim=2, keepdim=True)  # per channel, what each round matches
    stats_per_round, keys_per_round = [], []
    for r in range(proxy.rounds):
        estimate = _proxy_round(tasks, latents, starts[r::proxy.rounds], core, margin, level)
        stats_per_round.append(estimate.stats)
        if r < ATTENTION_ROUNDS:  # later rounds' keys are dropped: the keys stay a fixed size
            keys_per_round.append(estimate.memories)
        on_round()
    stats = [pool_stats(list(per_norm)) for per_norm in zip(*stats_per_round)]
    first = first_norm_stats(tasks, latents, tiles)
    if first is not None:
        stats[0] = first
    return FastEstimate(stats, [_AttentionMemory.join(list(per_attention)) for per_attention in zip(*keys_per_round)])


def _proxy_round(tasks: list[Task], latents: torch.Tensor, starts: list[int], core: int, margin: int,
                 level: tuple[torch.Tensor, torch.Tensor]) -> FastEstimate:
    """Run ``tasks`` on excerpts of ``latents`` at ``starts`` (each ``core`` frames plus ``margin`` a side), stacked
    along the batch, and record their GroupNorm statistics and attention keys/values.

    Each excerpt contributes statistics from its core only, where its values are those of a full run; the
    excerpts' moments are pooled, and the proxy's per-channel mean and std are first re-matched to ``level``, the
    latents' (std, mean) per channel. At a self-attention every excerpt attends to the cores of all excerpts, a
    sample of the whole sequence.
    """
    count = len(starts)
    x = torch.cat([latents[:, :, s - margin : s + core + margin] for s in starts])
    rows = x.float().reshape(count, *latents.shape[:2], -1)
    x_std, x_mean = torch.std_mean(rows, dim=(0, 3), keepdim=True)
    l_std, l_mean = level
    x = ((rows - x_mean) / x_std.clamp_min(1e-12) * l_std + l_mean).reshape(x.shape).to(latents.dtype)
    estimate = FastEstimate([], [])

    def statistics(norm: torch.nn.GroupNorm, values: torch.Tensor) -> GroupStats:
        estimate.stats.append(group_stats(values, norm.num_groups, batch_groups=count))
        return estimate.stats[-1]

    def attend(attn, x: torch.Tensor, stats: GroupStats | None, values: torch.Tensor, outside: int) -> torch.Tensor:
        joined = values.unflatten(0, (count, -1)).permute(1, 2, 0, 3, 4).flatten(2, 3)  # (B, C, count * core, F)
        estimate.memories.append(_attention_memory(attn, joined, stats))
        return _attend(attn, x, stats, estimate.memories[-1].rows(count), local=False, batch_groups=count)

    x, _, _ = _run_local(tasks, x, None, statistics, attend, core=(margin, margin + core), batch_groups=count)
    if not _all_finite(x):
        raise NonFiniteTileError("the fast-mode statistics proxy produced NaN or inf")
    return estimate


def first_norm_stats(tasks: list[Task], x: torch.Tensor, tiles: list[Tile]) -> GroupStats | None:
    """The exact statistics of the first GroupNorm, pooled over ``tiles``' cores; None where a self-attention comes
    first. Only convolutions precede it (conv_in), so this pass costs a small part of one layer, and it removes what
    was fast mode's largest single error: measured by `docs/experiments/fast_mode_error.py`, on 300 s of
    stationary latents the proxy's estimate of this norm alone cost 42.2 -> 30.5 dB."""
    head = next(i for i, task in enumerate(tasks) if isinstance(task, (Norm, Global)))
    if isinstance(tasks[head], Global):
        return None
    prefix, halo = tasks[:head], halo_frames(tasks[:head])
    parts = []
    for tile in tiles:
        lo, hi = max(0, tile.core_start - halo), min(x.shape[2], tile.core_stop + halo)
        core, _, _ = _run_local(prefix, x[:, :, lo:hi], None, None, core=(tile.core_start - lo, tile.core_stop - lo))
        parts.append(group_stats(core, tasks[head].module.num_groups))
    return pool_stats(parts)


def _run_tile(tasks: list[Task], x: torch.Tensor, estimate: FastEstimate, core: tuple[int, int], length: int):
    """One fast-mode tile, start to finish, with the estimated statistics; its attention attends to its own
    frames and, through the proxy's keys, to the ``length`` - (its frames) others."""
    stats, memories = iter(estimate.stats), iter(estimate.memories)

    def attend(attn, x: torch.Tensor, norm_stats: GroupStats | None, values: torch.Tensor, outside: int):
        return _attend(attn, x, norm_stats, next(memories), outside)

    return _run_local(tasks, x, None, lambda norm, values: next(stats), attend, core=core, length=length)


def _fast_pieces(job: _Job, x: torch.Tensor, tiles: list[Tile], config: TilingConfig) -> Iterator[torch.Tensor]:
    length, align = x.shape[2], alignment(job.tasks)
    halo = halo_frames(job.tasks) if config.pad_frames is None else -(-config.pad_frames * job.unit // align) * align
    proxy = plan_proxy(job.tasks, length, config.proxy_frames * job.unit, halo, 32 * job.unit, align)
    estimate = None
    if proxy is None:
        logger.info("fast mode: at %d input frames one proxy round costs too large a share of the %s; "
                    "running it exactly", length, job.name)
    else:
        try:
            with _progress(proxy.rounds, config, f"{job.name} (fast, statistics)") as bar:
                estimate = estimate_stats(job.tasks, x, proxy, tiles, bar.update)
        except NonFiniteTileError:
            logger.warning("fast mode: the statistics proxy gave NaN or inf; running the %s exactly", job.name)
    if estimate is None:
        yield from (core for _, core in run_exact(job, x, tiles, config, stream_last=True))
    else:
        yield from _fast_tiles(job, x, tiles, halo, estimate, config)


def _fast_tiles(job: _Job, x: torch.Tensor, tiles: list[Tile], halo: int, estimate: FastEstimate,
                config: TilingConfig) -> Iterator[torch.Tensor]:
    """Each tile's output core, in order: the tile run start to finish with ``halo`` input frames a side."""
    length = x.shape[2]
    with _progress(len(tiles), config, f"{job.name} (fast)") as bar:
        for tile in tiles:
            lo, hi = max(0, tile.core_start - halo), min(length, tile.core_stop + halo)
            y, _, _ = _checked(lambda inp: _run_tile(job.tasks, inp, estimate, (tile.core_start - lo,
                                                                          tile.core_stop - lo), length),
                               x[:, :, lo:hi], (tile.core_start, tile.core_stop), job)
            bar.update()
            yield y


def _plan_tiles(job: _Job, x: torch.Tensor, config: TilingConfig) -> list[Tile]:
    """Balanced tiles of ``config.tile_frames`` latent frames, or of the size the memory budget allows, as input
    frames: boundaries on multiples of ``job.unit``, the last core ending at the input's last frame."""
    tile = config.tile_frames or choose_tile_frames(job.tasks, x, config, job.unit, job.peak_factor)
    length = x.shape[2]
    tiles = [t.scaled(job.unit) for t in plan_tiles(max(1, length // job.unit), tile)]
    tiles[-1] = replace(tiles[-1], stop=length, core_stop=length)  # frames past the last whole unit, as untiled
    return tiles


def _iter_tiled(job: _Job, x: torch.Tensor, config: TilingConfig,
                untiled: Callable[[], torch.Tensor]) -> Iterator[torch.Tensor]:
    """``job.tasks`` run on ``x`` in pieces along time, in order: untiled when ``config`` says so or it fits the
    budget (retried tiled once on out-of-memory under ``enabled="auto"``), else in exact or fast tiles."""
    if x.device.type == "cpu":
        return_large_allocations_to_the_system()
    tiles = None
    if config.enabled is not False:
        tiles = _plan_tiles(job, x, config)
        if len(tiles) == 1:
            tiles = None
        elif config.enabled == "auto":
            fits, needed, budget = untiled_fits(job.tasks, x, config, job.peak_factor)
            if fits:
                tiles = None
            else:
                logger.info("tiling the %s: untiled would need about %.2f GB, the budget is %.2f GB",
                            job.name, needed / 1e9, budget / 1e9)
    if tiles is None:
        try:
            yield untiled()
            return
        except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, everything else re-raised
            if config.enabled != "auto" or not is_out_of_memory(error):
                raise
            failure = str(error)  # not the error: its traceback holds the failed attempt's tensors
        release_cached_memory(x.device)  # now that they are free
        logger.warning("untiled %s ran out of memory (%s); retrying once with tiles", job.name, failure)
        tiles = _plan_tiles(job, x, config)
    if config.mode == "fast":
        pieces = _fast_pieces(job, x, tiles, config)
    else:
        pieces = (core for _, core in run_exact(job, x, tiles, config, stream_last=True))
    for piece in pieces:
        yield piece.to(x.dtype)


def _mel_per_latent_frame(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _check_input(name: str, x: torch.Tensor, channels: int, min_frames: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor (B, C, T, F), got {getattr(x, 'shape', type(x))}")
    if x.shape[1] != channels or x.shape[2] < min_frames:
        raise ValueError(
            f"{name} must have {channels} channel(s) and at least {min_frames} frame(s), got shape {tuple(x.shape)}"
        )


def decode_job(vae) -> _Job:
    mel_per_frame = _mel_per_latent_frame(vae)
    return _Job(decoder_tasks(vae), unit=1, frame_seconds=mel_per_frame / MEL_FRAMES_PER_SECOND, name="VAE decode",
                peak_factor=UNTILED_DECODE_PEAK_FACTOR)


def encode_job(vae) -> _Job:
    tasks = encoder_tasks(vae)
    return _Job(tasks, unit=alignment(tasks), frame_seconds=1 / MEL_FRAMES_PER_SECOND, name="VAE encode",
                peak_factor=UNTILED_ENCODE_PEAK_FACTOR)


def check_exact_decode_fits(vae, latents: torch.Tensor, config: TilingConfig) -> None:
    """Raise InsufficientMemoryError where exact tiling of ``latents`` must hold more than the memory budget for the
    whole sequence. Pipelines call it before denoising: a render whose decode cannot fit then fails in seconds, not
    after the whole denoising (fast mode's memory does not grow with the length, and ``enabled=False`` is the
    caller's choice to fail hard)."""
    if config.mode != "exact" or config.enabled is False:
        return
    job = decode_job(vae)
    needed, budget = exact_stored_bytes(job.tasks, latents), memory_budget(config, latents.device)
    if needed <= budget:
        return
    raise InsufficientMemoryError(
        f"an exact VAE decode of {latents.shape[2] * job.frame_seconds:.0f} s holds about {needed / 1e9:.1f} GB for "
        f"the whole sequence, more than the memory budget of {budget / 1e9:.1f} GB ({BUDGET_SHARE:.0%} of the free "
        "memory unless TilingConfig.memory_budget says otherwise). Decode in fast mode (TilingConfig(mode='fast'), "
        "CLI --mode fast), whose memory does not grow with the length, or set memory_budget (CLI --memory-budget GB) "
        "if more memory is free."
    )


def decode_tiles(vae, latents: torch.Tensor, config: TilingConfig) -> list[Tile]:
    """The tiles a tiled decode of ``latents`` uses (what the memory budget or ``config.tile_frames`` gives)."""
    return _plan_tiles(decode_job(vae), latents, config)


def encode_tiles(vae, mel: torch.Tensor, config: TilingConfig) -> list[Tile]:
    """The tiles (in mel frames) a tiled encode of ``mel`` uses."""
    return _plan_tiles(encode_job(vae), mel, config)


def iter_decode(vae, latents: torch.Tensor, config: TilingConfig | None = None) -> Iterator[torch.Tensor]:
    """``vae.decode(latents).sample`` in pieces along time, in order, each (B, 1, t, n_mels).

    Fast mode yields each tile as soon as it is decoded; exact mode yields once the last GroupNorm barrier is
    passed. An untiled decode yields one piece.
    """
    _check_input("latents", latents, vae.config.latent_channels, 1)
    yield from _iter_tiled(decode_job(vae), latents, config or TilingConfig(), lambda: vae.decode(latents).sample)


@torch.no_grad()
def tiled_decode(vae, latents: torch.Tensor, config: TilingConfig | None = None) -> torch.Tensor:
    """What ``vae.decode(latents).sample`` returns, log-mel (B, 1, 4T, n_mels), decoded in tiles along time.

    Args:
        vae: a diffusers ``AutoencoderKL`` with the standard decoder (AudioLDM, AudioLDM2, MusicLDM).
        latents: (B, C, T, F), already divided by ``vae.config.scaling_factor``.
        config: tiling settings; ``None`` is ``TilingConfig()`` (exact mode, tiles only when untiled won't fit).
    """
    pieces = list(iter_decode(vae, latents, config))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)


@torch.no_grad()
def tiled_encode(vae, mel: torch.Tensor, config: TilingConfig | None = None) -> DiagonalGaussianDistribution:
    """What ``vae.encode(mel).latent_dist`` returns, encoded in tiles along time by the decode's executors.

    Args:
        vae: a diffusers ``AutoencoderKL`` with the standard encoder (AudioLDM, AudioLDM2, MusicLDM).
        mel: log-mel (B, 1, T, n_mels). T need not be a multiple of the VAE factor: like the untiled encoder, each
            stride-2 layer keeps T // 2 frames, so the latent has T // 4 frames (for AudioLDM's VAE).
        config: tiling settings, in latent frames as for the decode; ``None`` is ``TilingConfig()``.

    Returns:
        diffusers' ``DiagonalGaussianDistribution`` (``.mean``, ``.std``, ``.sample(generator)``, ``.mode()``).
    """
    job = encode_job(vae)
    _check_input("mel", mel, vae.config.in_channels, job.unit)
    pieces = list(_iter_tiled(job, mel, config or TilingConfig(), lambda: vae.encode(mel).latent_dist.parameters))
    return DiagonalGaussianDistribution(pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2))
