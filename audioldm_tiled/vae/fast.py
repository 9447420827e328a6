"""Fast mode: statistics estimated once from a proxy, then every tile run start to finish.

The statistics of every GroupNorm and the keys and values of the mid-block attention are estimated once, from a
short proxy made of excerpts of the latent. Each tile then runs start to finish with a halo covering the whole
decoder: no barriers and no stored intermediates, so neither memory nor the attention's cost grows faster than the
length. A tile's attention sees its own frames exactly and the rest of the sequence through the proxy's keys, each
weighted by how many frames it stands for (see ``attention.attend``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..config import TilingConfig
from ..distributed import Ranks, gather_objects
from ..geometry import Tile, halo_extent, take_frames
from .attention import AttentionMemory, attend, attention_memory
from .exact import iter_exact
from .groupnorm import GroupStats, group_stats, pool_stats
from .interpreter import NonFiniteTileError, Program, all_finite, progress_bar, run_checked, run_tasks
from .tasks import Global, Norm, Task, alignment, conv_cost, halo_frames

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Proxy:
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
               align: int = 1) -> Proxy | None:
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
    return Proxy(count, excerpt_core, margin, align, rounds) if rounds >= 1 else None


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
    memories: list[AttentionMemory]


def estimate_stats(tasks: list[Task], latents: torch.Tensor, proxy: Proxy, tiles: list[Tile],
                   on_round: Callable[[], object] = lambda: None, ranks: Ranks | None = None,
                   circular: bool = False) -> FastEstimate:
    """Estimate every GroupNorm's statistics and each self-attention's keys and values for fast mode, from a proxy
    of ``latents`` (the executor's input, latents or mel).

    The proxy is ``proxy.rounds * proxy.count`` excerpts spread evenly along time (time only: the frequency rows are
    never collapsed); round r takes every rounds-th of them, so each round spans the whole sequence. A round runs on
    its own (``_proxy_round``, memory of one round whatever the length) and the rounds' moments are pooled: the
    sampling error of the estimate falls with the number of frames sampled. The attention keys are those of the
    first ``ATTENTION_ROUNDS`` rounds.

    The first GroupNorm, which only convolutions precede, gets its exact statistics from a pass over ``tiles``.

    With ``ranks`` each rank runs its share of the rounds and the ranks gather them in round order: the estimate
    is bit for bit one process's. A round that gives NaN or inf makes every rank raise NonFiniteTileError.
    """
    length, count, core, margin, align = latents.shape[2], proxy.count, proxy.core, proxy.margin, proxy.align
    slots = proxy.rounds * count
    last = (length - core - margin) // align * align
    starts = [min(last, max(margin, align * round(((k + 0.5) * length / slots - core / 2) / align)))
              for k in range(slots)]
    level = channel_level(latents)  # per channel, what each round matches
    rounds = []
    for r in range(proxy.rounds) if ranks is None else ranks.share(proxy.rounds):
        try:
            estimate = _proxy_round(tasks, latents, starts[r::proxy.rounds], core, margin, level)
        except NonFiniteTileError as error:
            if ranks is None:
                raise
            rounds.append(str(error))  # every rank falls back together, below
            break
        # later rounds' keys are dropped: the keys stay a fixed size
        rounds.append(FastEstimate(estimate.stats, estimate.memories if r < ATTENTION_ROUNDS else []))
        on_round()
    if ranks is not None:
        rounds = [estimate for share in gather_objects(ranks, rounds) for estimate in share]
        failed = next((message for message in rounds if isinstance(message, str)), None)
        if failed is not None:
            raise NonFiniteTileError(failed)
    stats_per_round = [estimate.stats for estimate in rounds]
    keys_per_round = [estimate.memories for estimate in rounds[:ATTENTION_ROUNDS]]
    stats = [pool_stats(list(per_norm)) for per_norm in zip(*stats_per_round)]
    first = first_norm_stats(tasks, latents, tiles, circular)
    if first is not None:
        stats[0] = first
    return FastEstimate(stats, [AttentionMemory.join(list(per_attention)) for per_attention in zip(*keys_per_round)])


def channel_level(x, frames: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(std, mean) of ``x`` (B, C, T, F) per channel, over time and frequency, as (B, C, 1) float32: a tensor's by
    ``torch.std_mean``; ``spool.Frames``, which cannot be held whole, from the moments of pieces of ``frames``
    pooled as the tiles' GroupNorm statistics are (``pool_stats``; unbiased, as ``torch.std_mean``)."""
    if isinstance(x, torch.Tensor):
        return torch.std_mean(x.float().flatten(2), dim=2, keepdim=True)
    length = x.shape[2]
    pooled = pool_stats([group_stats(x.narrow(2, lo, min(frames, length - lo)), x.shape[1])
                         for lo in range(0, length, frames)])
    std = (pooled.m2 / (pooled.count - 1).clamp_min(1)).sqrt()
    return std[..., None].float().to(x.device), pooled.mean[..., None].float().to(x.device)


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
    x = torch.cat([latents.narrow(2, s - margin, core + 2 * margin) for s in starts])
    rows = x.float().reshape(count, *latents.shape[:2], -1)
    x_std, x_mean = torch.std_mean(rows, dim=(0, 3), keepdim=True)
    l_std, l_mean = level
    x = ((rows - x_mean) / x_std.clamp_min(1e-12) * l_std + l_mean).reshape(x.shape).to(latents.dtype)
    estimate = FastEstimate([], [])

    def statistics(norm: torch.nn.GroupNorm, values: torch.Tensor) -> GroupStats:
        estimate.stats.append(group_stats(values, norm.num_groups, batch_groups=count))
        return estimate.stats[-1]

    def attend_round(attn, x: torch.Tensor, stats: GroupStats | None, values: torch.Tensor,
                     outside: int) -> torch.Tensor:
        joined = values.unflatten(0, (count, -1)).permute(1, 2, 0, 3, 4).flatten(2, 3)  # (B, C, count * core, F)
        estimate.memories.append(attention_memory(attn, joined, stats))
        return attend(attn, x, stats, estimate.memories[-1].rows(count), local=False, batch_groups=count)

    x, _, _ = run_tasks(tasks, x, None, statistics, attend_round, core=(margin, margin + core), batch_groups=count)
    if not all_finite(x):
        raise NonFiniteTileError("the fast-mode statistics proxy produced NaN or inf")
    return estimate


def first_norm_stats(tasks: list[Task], x: torch.Tensor, tiles: list[Tile],
                     circular: bool = False) -> GroupStats | None:
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
        lo, hi = halo_extent(tile.core_start, tile.core_stop, halo, x.shape[2], circular)
        core, _, _ = run_tasks(prefix, take_frames(x, lo, hi), None, None,
                               core=(tile.core_start - lo, tile.core_stop - lo))
        parts.append(group_stats(core, tasks[head].module.num_groups))
    return pool_stats(parts)


def run_tile(tasks: list[Task], x: torch.Tensor, estimate: FastEstimate, core: tuple[int, int], length: int):
    """One fast-mode tile, start to finish, with the estimated statistics; its attention attends to its own
    frames and, through the proxy's keys, to the ``length`` - (its frames) others."""
    stats, memories = iter(estimate.stats), iter(estimate.memories)

    def attend_tile(attn, x: torch.Tensor, norm_stats: GroupStats | None, values: torch.Tensor, outside: int):
        return attend(attn, x, norm_stats, next(memories), outside)

    return run_tasks(tasks, x, None, lambda norm, values: next(stats), attend_tile, core=core, length=length)


def fast_pieces(job: Program, x: torch.Tensor, tiles: list[Tile], config: TilingConfig,
                ranks: Ranks | None = None, circular: bool = False) -> Iterator[torch.Tensor]:
    """Fast mode's output cores in order: the proxy's estimate, then every tile (with ``ranks``: the proxy's rounds
    shared out, then this rank's share of the tiles alone). Where the proxy would cost too much, or gives NaN or
    inf, the tiles run exactly instead (every rank alike)."""
    length, align = x.shape[2], alignment(job.tasks)
    halo = halo_frames(job.tasks) if config.pad_frames is None else -(-config.pad_frames * job.unit // align) * align
    proxy = plan_proxy(job.tasks, length, config.proxy_frames * job.unit, halo, 32 * job.unit, align)
    estimate = None
    if proxy is None:
        logger.info("fast mode: at %d input frames one proxy round costs too large a share of the %s; "
                    "running it exactly", length, job.name)
    else:
        try:
            with progress_bar(proxy.rounds, config, f"{job.name} (fast, statistics)") as bar:
                estimate = estimate_stats(job.tasks, x, proxy, tiles, bar.update, ranks, circular)
        except NonFiniteTileError:
            logger.warning("fast mode: the statistics proxy gave NaN or inf; running the %s exactly", job.name)
    if estimate is None:
        yield from (core for _, core in iter_exact(job, x, tiles, config, ranks=ranks,
                                                  circular=circular))
    else:
        mine = range(len(tiles)) if ranks is None else ranks.share(len(tiles))
        yield from fast_tiles(job, x, [tiles[i] for i in mine], halo, estimate, config, circular)


def fast_tiles(job: Program, x: torch.Tensor, tiles: list[Tile], halo: int, estimate: FastEstimate,
                config: TilingConfig, circular: bool = False) -> Iterator[torch.Tensor]:
    """Each tile's output core, in order: the tile run start to finish with ``halo`` input frames a side (across
    the wrap on a ``circular`` axis)."""
    length = x.shape[2]
    with progress_bar(len(tiles), config, f"{job.name} (fast)") as bar:
        for tile in tiles:
            lo, hi = halo_extent(tile.core_start, tile.core_stop, halo, length, circular)
            core = (tile.core_start - lo, tile.core_stop - lo)
            y, _, _ = run_checked(lambda inp, core=core: run_tile(job.tasks, inp, estimate, core, length),
                                  take_frames(x, lo, hi), (tile.core_start, tile.core_stop), job)
            bar.update()
            yield y


