"""Where fast mode's error comes from: swap its estimates for exact ones, one at a time, and measure the SNR.

    python docs/experiments/fast_mode_error.py --seconds 120 fast exact-stats whole-attention perturbed:0.001

Runs the audioldm-s VAE with random weights (as `audioldm-tiled bench decode`) on randn latents, by default with a
loud first half (x1.5; `--stationary` for plain randn, what the bench decodes). The reference is the exact tiled
decode, recorded once per length with every GroupNorm's pooled statistics and cached under `--cache`. Variants:

    fast[:P:C[:R]]      fast mode as shipped (or R rounds of P frames in excerpts of C): statistics and attention
                        keys from the proxy, the first GroupNorm's statistics exact
    exact-stats[:P:C]   the exact statistics, the proxy's attention keys
    whole-attention     the estimated statistics, keys and values of the whole sequence (no proxy at the attention)
    perturbed:EPS       the exact statistics, each group's mean moved by EPS std and its std scaled by 1 + EPS (random
                        normal signs and sizes), whole-sequence attention: how sensitive the decoder is to statistics
    stats-error[:P:C:R] per GroupNorm: mean error (in stds) and std error of the proxy's estimates
    diffusers           diffusers' vae.enable_tiling() (each tile normalises itself), for comparison

Each variant decodes the whole length (about a minute per variant at 120 s on 2 cores).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from audioldm_tiled.config import TilingConfig
from audioldm_tiled.testing.architectures import ARCHITECTURES
from audioldm_tiled.vae import exact, fast
from audioldm_tiled.vae.attention import AttentionMemory, attention_memory
from audioldm_tiled.vae.dispatch import decode_job, plan_job_tiles
from audioldm_tiled.vae.groupnorm import GroupStats, group_stats
from audioldm_tiled.vae.interpreter import run_tasks
from audioldm_tiled.vae.tasks import Global, halo_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--stationary", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/audioldm_tiled_fast_error"))
    args = parser.parse_args()

    torch.manual_seed(0)
    vae = AutoencoderKL(**ARCHITECTURES["audioldm-s"].vae).eval()
    frames = int(args.seconds * 25)
    latents = torch.randn(1, 8, frames, 16)
    if not args.stationary:
        latents[:, :, : frames // 2] *= 1.5
    job = decode_job(vae)
    config = TilingConfig(enabled=True, show_progress=False)
    tiles = plan_job_tiles(job, latents, config)
    halo = halo_frames(job.tasks)
    attention = next(t for t in job.tasks if isinstance(t, Global))
    before_attention = job.tasks[: job.tasks.index(attention)]
    reference, exact_stats = exact_reference(job, latents, tiles, args.cache / f"{frames}-{args.stationary}.pt")

    def snr(decoded: torch.Tensor) -> float:
        return 10 * math.log10(reference.pow(2).sum() / (decoded - reference).pow(2).sum())

    def estimate(spec: list[str]) -> fast.FastEstimate:
        if spec:  # built directly, so it runs even where fast mode itself would decode exactly (plan_proxy)
            proxy_frames, core, rounds = (int(spec[0]), int(spec[1]), int(spec[2]) if len(spec) > 2 else 1)
            proxy = fast.Proxy(proxy_frames // core, core, halo, rounds=rounds)
        else:
            proxy = fast.plan_proxy(job.tasks, frames, config.proxy_frames, halo) or fast.Proxy(8, 32, halo)
        print(f"  proxy: {proxy.rounds} round(s) of {proxy.count} excerpts of {proxy.core} frames", flush=True)
        return fast.estimate_stats(job.tasks, latents, proxy, tiles)

    def whole_memory(stats: list[GroupStats]) -> AttentionMemory:
        """Keys and values of every token, computed with the given statistics."""
        given = iter(stats)
        x, _, _ = run_tasks(before_attention, latents, None, lambda norm, values: next(given))
        return attention_memory(attention.module, x, next(given))

    def decode(estimate: fast.FastEstimate, whole_attention: bool = False) -> torch.Tensor:
        attend = fast.attend
        if whole_attention:  # the memory is the whole sequence: no local keys, no weights
            fast.attend = lambda attn, x, stats, memory, outside: attend(attn, x, stats, memory, local=False)
        try:
            return torch.cat(list(fast.fast_tiles(job, latents, tiles, halo, estimate, config)), dim=2)
        finally:
            fast.attend = attend

    with torch.no_grad():
        for variant in args.variants:
            name, *spec = variant.split(":")
            if name == "fast":
                result = f"{snr(decode(estimate(spec))):.1f} dB"
            elif name == "exact-stats":
                result = f"{snr(decode(fast.FastEstimate(exact_stats, estimate(spec).memories))):.1f} dB"
            elif name == "whole-attention":
                stats = estimate(spec).stats
                result = f"{snr(decode(fast.FastEstimate(stats, [whole_memory(stats)]), whole_attention=True)):.1f} dB"
            elif name == "perturbed":
                stats = perturbed(exact_stats, float(spec[0]))
                result = f"{snr(decode(fast.FastEstimate(stats, [whole_memory(stats)]), whole_attention=True)):.1f} dB"
            elif name == "diffusers":
                vae.enable_tiling()
                try:
                    result = f"{snr(vae.decode(latents).sample):.1f} dB"
                finally:
                    vae.disable_tiling()
            elif name == "stats-error":
                result = "\n" + stats_error(estimate(spec).stats, exact_stats)
            else:
                parser.error(f"unknown variant {variant!r}")
            print(f"{args.seconds:g} s{' stationary' if args.stationary else ''} {variant}: {result}", flush=True)


def exact_reference(job, latents: torch.Tensor, tiles, path: Path) -> tuple[torch.Tensor, list[GroupStats]]:
    """The exact tiled decode and, in task order, the statistics every GroupNorm (attention's included) used."""
    if path.exists():
        return torch.load(path, weights_only=False)
    recorded = []
    pool = exact.pool_stats

    def recording_pool(parts):
        recorded.append(pool(parts))
        return recorded[-1]

    attention = next(t for t in job.tasks if isinstance(t, Global)).module
    hook = attention.register_forward_pre_hook(
        lambda module, inputs: recorded.append(group_stats(inputs[0], module.group_norm.num_groups)))
    exact.pool_stats = recording_pool
    try:
        with torch.no_grad():
            reference = exact.run_exact(job, latents, tiles, TilingConfig(show_progress=False))
    finally:
        exact.pool_stats = pool
        hook.remove()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save((reference, recorded), path)
    return reference, recorded


def perturbed(stats: list[GroupStats], eps: float) -> list[GroupStats]:
    generator = torch.Generator().manual_seed(1)
    moved = []
    for s in stats:
        std = s.var.sqrt()
        mean = s.mean + eps * std * torch.randn(s.mean.shape, generator=generator, dtype=torch.float64)
        std = std * (1 + eps * torch.randn(s.mean.shape, generator=generator, dtype=torch.float64))
        moved.append(GroupStats(s.count, mean, std**2 * s.count))
    return moved


def stats_error(estimated: list[GroupStats], exact: list[GroupStats]) -> str:
    lines = []
    for index, (e, x) in enumerate(zip(estimated, exact)):
        std = x.var.sqrt()
        ratio = e.var.sqrt() / std - 1
        lines.append(f"  norm {index:2d}: mean off by {((e.mean - x.mean).abs() / std).mean().item():.4f} std, "
                     f"std off by {ratio.abs().mean().item():.4f} (signed mean {ratio.mean().item():+.4f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
