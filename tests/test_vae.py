import logging

import pytest
import torch

from audioldm_tiled import TilingConfig, iter_decode, tiled_decode
from audioldm_tiled.memory import OUT_OF_MEMORY
from audioldm_tiled.vae import decode_job
from audioldm_tiled.vae.attention import attend
from audioldm_tiled.vae.dispatch import plan_job_tiles
from audioldm_tiled.vae.fast import (
    ATTENTION_ROUNDS,
    PROXY_MAX_SHARE,
    Proxy,
    estimate_stats,
    fast_tiles,
    first_norm_stats,
    plan_proxy,
)
from audioldm_tiled.vae.groupnorm import group_stats
from audioldm_tiled.vae.interpreter import run_tasks
from audioldm_tiled.vae.tasks import Global, Norm, conv_cost, decoder_tasks, halo_frames, receptive_halo
from conftest import EXACT_TOLERANCE, nonstationary_latents, raise_cuda_out_of_memory, relative_error, snr_db


@pytest.mark.parametrize("frames", [5, 16, 31, 37, 64, 97])
@pytest.mark.parametrize("tile_frames", [4, 16, 40])
def test_exact_equals_untiled(tiny, frames, tile_frames):
    vae = tiny["vae"]
    z = nonstationary_latents(2, frames)
    expected = vae.decode(z).sample
    actual = tiled_decode(vae, z, TilingConfig(enabled=True, tile_frames=tile_frames, show_progress=False))
    assert actual.shape == expected.shape == (2, 1, 4 * frames, 64)
    assert relative_error(actual, expected) < EXACT_TOLERANCE


def test_per_tile_statistics_would_be_far_off(tiny):
    """The test above can fail: decoding the halves separately (per-tile GroupNorm) is far from untiled."""
    vae = tiny["vae"]
    z = nonstationary_latents(1, 64)
    expected = vae.decode(z).sample
    separately = torch.cat([vae.decode(z[:, :, :32]).sample, vae.decode(z[:, :, 32:]).sample], dim=2)
    assert relative_error(separately, expected) > 100 * EXACT_TOLERANCE


def test_task_list_mirrors_the_decoder(tiny):
    vae = tiny["vae"]
    tasks = decoder_tasks(vae)
    group_norms = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    attention_norms = [a.group_norm for a in vae.decoder.mid_block.attentions if a is not None]
    assert sum(isinstance(t, Norm) for t in tasks) == len(group_norms) - len(attention_norms)
    assert receptive_halo(tasks) > 0


def test_unknown_structure_fails_loudly(tiny):
    import copy

    vae = copy.deepcopy(tiny["vae"])
    vae.decoder.conv_norm_out = torch.nn.LayerNorm(4)
    with pytest.raises(ValueError, match="unsupported normalisation"):
        decoder_tasks(vae)


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_mode_within_documented_bound_and_well_above_per_tile_norms(tiny, seed):
    vae = tiny["vae"]
    z = nonstationary_latents(1, 600, seed=seed)
    tasks = decoder_tasks(vae)
    assert plan_proxy(tasks, 600, 128, halo_frames(tasks)) is not None  # the proxy path runs
    expected = vae.decode(z).sample
    fast = tiled_decode(vae, z, TilingConfig(enabled=True, mode="fast", tile_frames=64, proxy_frames=128,
                                             show_progress=False))
    vae.enable_tiling()
    try:
        per_tile = vae.decode(z).sample
    finally:
        vae.disable_tiling()
    # Fast mode's error is the sampling error of its estimated statistics (~1 % per GroupNorm) and of the
    # attention's proxy keys: measured 28.4-29.6 dB on seeds 0-2 here (one proxy round at this length), diffusers'
    # per-tile tiling 3.2-3.3 dB.
    assert snr_db(fast, expected) > 22
    assert snr_db(fast, expected) > snr_db(per_tile, expected) + 10


def test_proxy_rounds_grow_with_the_length_and_stay_under_their_share(tiny):
    tasks = decoder_tasks(tiny["vae"])
    halo = halo_frames(tasks)
    plans = {length: plan_proxy(tasks, length, 128, halo) for length in (600, 1200, 3000)}
    rounds = [plans[length].rounds for length in sorted(plans)]
    assert rounds == sorted(rounds) and rounds[0] >= 1 and rounds[-1] > rounds[0]
    for length, proxy in plans.items():
        one_round = proxy.count * conv_cost(tasks, proxy.core + 2 * halo, (halo, halo + proxy.core))
        assert proxy.rounds * one_round < PROXY_MAX_SHARE * conv_cost(tasks, length) <= (proxy.rounds + 1) * one_round


@pytest.mark.parametrize("seed", [0, 1])
def test_more_proxy_rounds_estimate_better(tiny, seed):
    vae = tiny["vae"]
    z = nonstationary_latents(1, 600, seed=seed)
    job = decode_job(vae)
    config = TilingConfig(enabled=True, mode="fast", tile_frames=64, show_progress=False)
    tiles = plan_job_tiles(job, z, config)
    halo = halo_frames(job.tasks)
    expected = vae.decode(z).sample

    def fast_snr(rounds: int) -> float:
        estimate = estimate_stats(job.tasks, z, Proxy(4, 32, halo, rounds=rounds), tiles)
        # the attention keys of at most ATTENTION_ROUNDS rounds, 4 excerpts of 32 frames each
        assert [m.frames for m in estimate.memories] == [min(rounds, ATTENTION_ROUNDS) * 4 * 32]
        return snr_db(torch.cat(list(fast_tiles(job, z, tiles, halo, estimate, config)), dim=2), expected)

    # Three times the frames sampled (and twice the keys) divide the variance of the estimates by two to three:
    # +3-4.8 dB expected; measured 28.4 -> 34.2 and 29.6 -> 35.1 dB on seeds 0 and 1.
    assert fast_snr(ATTENTION_ROUNDS + 1) > fast_snr(1) + 3


def test_first_norm_statistics_are_exact(tiny):
    tasks = decoder_tasks(tiny["vae"])
    z = nonstationary_latents(2, 97)
    head = next(i for i, task in enumerate(tasks) if isinstance(task, Norm))
    whole, _, _ = run_tasks(tasks[:head], z, None, None)
    expected = group_stats(whole, tasks[head].module.num_groups)
    config = TilingConfig(enabled=True, tile_frames=16, show_progress=False)
    pooled = first_norm_stats(tasks, z, plan_job_tiles(decode_job(tiny["vae"]), z, config))
    # float32 moments per tile pooled in float64, against float32 moments of the whole: rounding only (~1e-7).
    assert torch.allclose(pooled.mean, expected.mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(pooled.var, expected.var, rtol=1e-5)


def test_fast_mode_pad_frames_sets_the_halo(tiny):
    vae = tiny["vae"]
    z = nonstationary_latents(1, 600)
    expected = vae.decode(z).sample
    config = TilingConfig(enabled=True, mode="fast", tile_frames=64, proxy_frames=128, show_progress=False)
    full = snr_db(tiled_decode(vae, z, config), expected)
    # A halo of 1 latent frame, far below the decoder's receptive field (13 frames here), leaves seams at every tile.
    assert snr_db(tiled_decode(vae, z, config.replace(pad_frames=1)), expected) < full - 3


def test_attention_with_local_keys_and_exact_statistics_is_the_module(tiny):
    attention = next(t.module for t in decoder_tasks(tiny["vae"]) if isinstance(t, Global))
    x = nonstationary_latents(2, 12, channels=attention.to_q.in_features)
    stats = group_stats(x, attention.group_norm.num_groups)
    with torch.no_grad():
        assert relative_error(attend(attention, x, stats, None), attention(x)) < EXACT_TOLERANCE


def test_fast_mode_is_exact_when_a_proxy_would_cost_as_much(tiny):
    vae = tiny["vae"]
    z = nonstationary_latents(1, 40)
    expected = vae.decode(z).sample
    fast = tiled_decode(vae, z, TilingConfig(enabled=True, mode="fast", tile_frames=8, proxy_frames=256,
                                             show_progress=False))
    assert relative_error(fast, expected) < EXACT_TOLERANCE


def test_streamed_pieces_concatenate_to_the_whole(tiny):
    vae = tiny["vae"]
    z = nonstationary_latents(1, 50)
    for mode in ("exact", "fast"):
        config = TilingConfig(enabled=True, mode=mode, tile_frames=16, proxy_frames=32, show_progress=False)
        pieces = list(iter_decode(vae, z, config))
        assert len(pieces) == 4
        assert torch.equal(torch.cat(pieces, dim=2), tiled_decode(vae, z, config))


def test_auto_tiles_only_when_the_budget_is_small(tiny, caplog):
    vae = tiny["vae"]
    z = nonstationary_latents(1, 60)
    with caplog.at_level(logging.INFO, logger="audioldm_tiled.vae"):
        tiled_decode(vae, z, TilingConfig(tile_frames=16, memory_budget=10**12, show_progress=False))
    assert "tiling the VAE decode" not in caplog.text
    with caplog.at_level(logging.INFO, logger="audioldm_tiled.vae"):
        small = tiled_decode(vae, z, TilingConfig(tile_frames=16, memory_budget=1000, show_progress=False))
    assert "tiling the VAE decode" in caplog.text
    assert relative_error(small, vae.decode(z).sample) < EXACT_TOLERANCE


def test_out_of_memory_in_the_untiled_decode_retries_tiled(tiny, monkeypatch, caplog):
    vae = tiny["vae"]
    z = nonstationary_latents(1, 60)
    expected = vae.decode(z).sample
    monkeypatch.setattr(vae, "decode", raise_cuda_out_of_memory)
    with caplog.at_level(logging.WARNING, logger="audioldm_tiled.vae"):
        actual = tiled_decode(vae, z, TilingConfig(tile_frames=16, memory_budget=10**12, show_progress=False))
    assert "retrying once with tiles" in caplog.text
    assert relative_error(actual, expected) < EXACT_TOLERANCE
    with pytest.raises(OUT_OF_MEMORY):  # enabled=False keeps failing hard
        tiled_decode(vae, z, TilingConfig(enabled=False))


def test_half_precision_tile_overflow_is_retried_in_float32(tiny, caplog):
    vae = tiny["vae"]
    z = nonstationary_latents(1, 32)
    z[:, :, 20:24] = z[:, :, 20:24].clamp(-1, 1) * 6e4  # representable in float16; its activations overflow
    half = type(vae).from_config(vae.config).to(torch.float16)
    half.load_state_dict(vae.state_dict())
    with caplog.at_level(logging.WARNING, logger="audioldm_tiled.vae"):
        out = tiled_decode(half, z.half(), TilingConfig(enabled=True, tile_frames=8, show_progress=False))
    assert "retrying it in float32" in caplog.text
    assert torch.isfinite(out).all() and out.dtype == torch.float16
    z[:, :, 20] = float("nan")
    start, stop = 16, 24  # the tile of 8 frames holding frame 20; 25 latent frames per second
    with pytest.raises(FloatingPointError, match=f"{start / 25:.2f}-{stop / 25:.2f} s"):
        tiled_decode(half, z.half(), TilingConfig(enabled=True, tile_frames=8, show_progress=False))


def test_latents_are_checked(tiny):
    with pytest.raises(ValueError, match="latents must have 8 channel"):
        tiled_decode(tiny["vae"], torch.zeros(1, 3, 8, 16))
