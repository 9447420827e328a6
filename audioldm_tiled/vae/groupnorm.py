"""GroupNorm with statistics pooled across tiles.

Each tile contributes (count, mean, M2) per (batch, group) over its own core only, so every frame counts once.
Pooling uses Chan et al.'s parallel update, which keeps the between-tile term sum_i n_i (mean_i - mean)^2 that a
mean of per-tile variances drops:

    n = sum n_i,   mean = sum n_i mean_i / n,   M2 = sum M2_i + sum n_i (mean_i - mean)^2,   var = M2 / n

Per-tile moments are taken in float32 (float64 for float64 input) on the activations' device, then moved to the host
and pooled there in float64, whatever the compute dtype: they are (B, G) numbers, and Apple's MPS has no float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..offload import weights_on_device

HOST = torch.device("cpu")


def to_host(moment: torch.Tensor) -> torch.Tensor:
    """A (B, G) moment moved to the host and widened to float64 there (never float64 on the compute device)."""
    return moment.to(HOST, copy=True).double()  # a copy on the CPU too, so the move is an explicit transfer


@dataclass(frozen=True)
class GroupStats:
    """Moments per (batch, group), each of shape (B, G), float64 on the host."""

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    @property
    def var(self) -> torch.Tensor:
        return self.m2 / self.count


def group_stats(x: torch.Tensor, num_groups: int, batch_groups: int = 1) -> GroupStats:
    """Moments of ``x`` (B, C, T, F) per (batch, group).

    ``batch_groups`` > 1 pools consecutive runs of the batch: rows ``k * B' + b`` for k < batch_groups share the
    statistics of row ``b`` (used for a proxy made of excerpts stacked along the batch).
    """
    b, c = x.shape[:2]
    if c % num_groups:
        raise ValueError(f"{c} channels cannot be split into {num_groups} groups")
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    # Views only, so a tile's core sliced out of a larger output is reduced in place rather than copied first.
    grouped = x.unflatten(1, (num_groups, c // num_groups)).unflatten(0, (batch_groups, b // batch_groups))
    dims = (0,) + tuple(range(3, grouped.dim()))  # all but (batch row, group)
    var, mean = torch.var_mean(grouped.to(compute), dim=dims, correction=0)
    mean, var = to_host(mean), to_host(var)
    count = torch.full_like(mean, x.numel() // (b // batch_groups * num_groups))
    return GroupStats(count, mean, var * count)


def pool_stats(parts: list[GroupStats]) -> GroupStats:
    """Combine per-tile moments into the moments of the concatenation (Chan's parallel algorithm)."""
    count = sum(p.count for p in parts)
    mean = sum(p.count * p.mean for p in parts) / count
    m2 = sum(p.m2 + p.count * (p.mean - mean) ** 2 for p in parts)
    return GroupStats(count, mean, m2)


def apply_group_norm(x: torch.Tensor, stats: GroupStats, norm: nn.GroupNorm, batch_groups: int = 1,
                     float32_output: bool = False) -> torch.Tensor:
    """``norm(x)`` with the given statistics instead of the statistics of ``x``; computed in float32 at least, and
    returned in x's dtype (or in that precision, with ``float32_output``)."""
    b, c = x.shape[:2]
    g = norm.num_groups
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    # narrowed on the host, then moved: a float64 tensor never reaches the device
    mean = stats.mean.to(compute).to(x.device).repeat(batch_groups, 1)
    rstd = torch.rsqrt(stats.var + norm.eps).to(compute).to(x.device).repeat(batch_groups, 1)
    shape = (b, g, c // g) + (1,) * (x.dim() - 2)
    # Fold mean, rstd and the affine parameters into one scale and shift per (batch, channel).
    scale = rstd.reshape(b, g, 1).expand(b, g, c // g)
    shift = -mean.reshape(b, g, 1) * scale
    if norm.affine:
        with weights_on_device(norm):
            weight, bias = norm.weight.to(compute).reshape(1, g, c // g), norm.bias.to(compute).reshape(1, g, c // g)
        scale, shift = scale * weight, shift * weight + bias
    out = torch.addcmul(shift.reshape(shape).flatten(1, 2), x.to(compute), scale.reshape(shape).flatten(1, 2))
    return out if float32_output else out.to(x.dtype)
