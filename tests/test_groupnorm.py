import torch
import torch.nn.functional as F

from audioldm_tiled.vae.groupnorm import GroupStats, apply_group_norm, group_stats, pool_stats
from conftest import nonstationary_latents, relative_error


def test_pooled_statistics_equal_group_norm_on_nonstationary_input():
    torch.manual_seed(0)
    x = nonstationary_latents(2, 50, channels=8, freq=4)
    norm = torch.nn.GroupNorm(4, 8)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    cuts = [0, 7, 30, 31, 50]
    stats = pool_stats([group_stats(x[:, :, a:b], 4) for a, b in zip(cuts, cuts[1:])])
    expected = F.group_norm(x, 4, norm.weight, norm.bias, norm.eps)
    # float32 rounding of values of order 1: a few ulps
    assert relative_error(apply_group_norm(x, stats, norm), expected) < 1e-6


def test_mean_of_tile_variances_is_wrong_the_between_tile_term_matters():
    x = torch.randn(1, 4, 40, 4, generator=torch.Generator().manual_seed(0))
    x[:, :, 20:] += 5  # the halves' means differ by 5 std: the between-tile term is (5 / 2) ** 2 = 6.25
    parts = [group_stats(x[:, :, :20], 2), group_stats(x[:, :, 20:], 2)]
    pooled = pool_stats(parts)
    naive_var = sum(p.var for p in parts) / 2
    true_var = x.double().reshape(1, 2, -1).var(dim=-1, unbiased=False)
    torch.testing.assert_close(pooled.var, true_var)
    assert (true_var - naive_var).min() > 5


def test_batch_groups_pool_excerpts_stacked_along_the_batch():
    x = torch.randn(3 * 2, 4, 5, 2, dtype=torch.float64)  # 3 excerpts of a batch of 2
    stats = group_stats(x, 2, batch_groups=3)
    rows = torch.stack([torch.cat([x[k * 2 + b] for k in range(3)], dim=1) for b in range(2)])
    expected = group_stats(rows, 2)
    torch.testing.assert_close(stats.mean, expected.mean)
    torch.testing.assert_close(stats.var, expected.var)
    assert isinstance(stats, GroupStats)
