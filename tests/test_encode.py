import logging
import math

import pytest
import torch

from audioldm_tiled import TilingConfig, tiled_decode, tiled_encode
from audioldm_tiled.vae.fast import plan_proxy
from audioldm_tiled.vae.tasks import Downsample, Global, Norm, alignment, encoder_tasks, halo_frames, receptive_halo
from conftest import EXACT_TOLERANCE, raise_cuda_out_of_memory, relative_error, snr_db


def nonstationary_mel(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    """Log-mel-like input (B, 1, T, 64) whose second half is louder and shifted."""
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(batch, 1, frames, 64, generator=g) - 4
    mel[:, :, frames // 2 :] = mel[:, :, frames // 2 :] * 3 + 2
    return mel


def test_encoder_task_list_mirrors_the_encoder(tiny):
    vae = tiny["vae"]
    tasks = encoder_tasks(vae)
    group_norms = [m for m in vae.encoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    attention_norms = [a.group_norm for a in vae.encoder.mid_block.attentions if a is not None]
    assert sum(isinstance(t, Norm) for t in tasks) == len(group_norms) - len(attention_norms)
    assert sum(isinstance(t, Global) for t in tasks) == len(attention_norms)
    downsamplers = [b for b in vae.encoder.down_blocks if b.downsamplers]
    assert sum(isinstance(t, Downsample) for t in tasks) == len(downsamplers)
    assert alignment(tasks) == 2 ** len(downsamplers) == 4
    # the halo is a whole number of frames aligned to the downsampling, never less than the receptive field
    assert halo_frames(tasks) % 4 == 0 and receptive_halo(tasks) <= halo_frames(tasks) < receptive_halo(tasks) + 4


# Frame counts not a multiple of 4 (7, 130, 257, 403): the untiled encoder keeps T // 2 frames at each stride-2
# layer, and so must the tiles; tile sizes from 1 latent frame (many tiles) to one tile covering everything.
@pytest.mark.parametrize("frames", [7, 64, 130, 257, 403])
@pytest.mark.parametrize("tile_frames", [1, 16, 40])
def test_exact_encode_equals_untiled(tiny, frames, tile_frames):
    vae = tiny["vae"]
    mel = nonstationary_mel(2, frames)
    expected = vae.encode(mel).latent_dist
    actual = tiled_encode(vae, mel, TilingConfig(enabled=True, tile_frames=tile_frames, show_progress=False))
    assert actual.mean.shape == expected.mean.shape == (2, 8, frames // 4, 16)
    assert relative_error(actual.mean, expected.mean) < EXACT_TOLERANCE
    assert relative_error(actual.std, expected.std) < EXACT_TOLERANCE


def test_encoding_halves_separately_would_be_far_off(tiny):
    """The test above can fail: per-tile GroupNorm statistics give a visibly different latent."""
    vae = tiny["vae"]
    mel = nonstationary_mel(1, 256)
    expected = vae.encode(mel).latent_dist.mean
    separately = torch.cat([vae.encode(mel[:, :, :128]).latent_dist.mean,
                            vae.encode(mel[:, :, 128:]).latent_dist.mean], dim=2)
    assert relative_error(separately, expected) > 100 * EXACT_TOLERANCE


def test_encode_then_decode_tiled_agrees_with_untiled(tiny):
    vae = tiny["vae"]
    mel = nonstationary_mel(1, 200)
    config = TilingConfig(enabled=True, tile_frames=12, show_progress=False)
    expected = vae.decode(vae.encode(mel).latent_dist.mode()).sample
    actual = tiled_decode(vae, tiled_encode(vae, mel, config).mode(), config)
    assert actual.shape == expected.shape == mel.shape
    assert relative_error(actual, expected) < EXACT_TOLERANCE


def test_fast_encode_runs_its_proxy_and_beats_per_tile_statistics(tiny):
    vae = tiny["vae"]
    frames = 2400
    mel = nonstationary_mel(1, frames)
    config = TilingConfig(enabled=True, mode="fast", tile_frames=32, proxy_frames=64, show_progress=False)
    tasks = encoder_tasks(vae)
    assert plan_proxy(tasks, frames, 64 * 4, halo_frames(tasks), 128, 4) is not None  # the proxy path runs
    expected = vae.encode(mel).latent_dist.mean
    fast = tiled_encode(vae, mel, config).mean
    vae.enable_tiling()
    try:
        per_tile = vae.encode(mel).latent_dist.mean
    finally:
        vae.disable_tiling()
    # Same sources of error as the fast decode (estimated statistics, proxy attention keys): 32.4-35.2 dB measured
    # on seeds 0-2 at 2400 frames (one proxy round), diffusers' per-tile tiling 5.2 dB.
    assert snr_db(fast, expected) > 25
    assert snr_db(fast, expected) > snr_db(per_tile, expected) + 10


@pytest.mark.parametrize("mode, frames", [("exact", 403), ("fast", 2400)])
def test_a_log_mel_on_disk_encodes_as_the_tensor_it_holds(tiny, mode, frames):
    """``spool.Frames`` (a log-mel too long to hold, each tile reading its own frames from disk) encodes as the
    tensor: exact tiles read the same values, bit for bit; in fast mode (2400 frames: its proxy runs, as above) the
    per-channel level its proxy matches is summed over pieces in float64 instead of by ``torch.std_mean``, a
    difference of float32 rounding in the estimate (a wrong frame or level shows as more than 1e-2)."""
    from contextlib import closing

    from audioldm_tiled.spool import Frames
    from audioldm_tiled.vae import iter_encode

    vae = tiny["vae"]
    mel = nonstationary_mel(1, frames)
    config = TilingConfig(enabled=True, mode=mode, tile_frames=32, proxy_frames=64, show_progress=False)
    expected = torch.cat(list(iter_encode(vae, mel, config)), dim=2)
    with closing(Frames.spooled(mel)) as on_disk:
        actual = torch.cat(list(iter_encode(vae, on_disk, config)), dim=2)
    if mode == "exact":
        assert torch.equal(actual, expected)
    else:
        assert relative_error(actual, expected) < EXACT_TOLERANCE


def test_the_level_of_frames_on_disk_is_the_tensors():
    """Fast mode's per-channel (std, mean) of frames read in pieces (7 frames here) equals ``torch.std_mean``'s on
    the tensor, far from zero too (pooled moments: a plain sum of squares would cancel at this offset)."""
    from audioldm_tiled.spool import Frames
    from audioldm_tiled.vae.fast import channel_level

    x = nonstationary_mel(2, 403) * 100 + 1000
    std, mean = channel_level(x)
    on_disk = Frames.spooled(x)
    try:
        pieces_std, pieces_mean = channel_level(on_disk, frames=7)
    finally:
        on_disk.close()
    assert std.shape == pieces_std.shape == (2, 1, 1)
    assert torch.allclose(pieces_std, std, rtol=1e-5) and torch.allclose(pieces_mean, mean, rtol=1e-6)


def test_encode_auto_tiles_only_when_the_budget_is_small(tiny, caplog):
    vae = tiny["vae"]
    mel = nonstationary_mel(1, 160)
    with caplog.at_level(logging.INFO, logger="audioldm_tiled.vae"):
        tiled_encode(vae, mel, TilingConfig(tile_frames=8, memory_budget=10**12, show_progress=False))
    assert "tiling the VAE encode" not in caplog.text
    with caplog.at_level(logging.INFO, logger="audioldm_tiled.vae"):
        small = tiled_encode(vae, mel, TilingConfig(tile_frames=8, memory_budget=1000, show_progress=False))
    assert "tiling the VAE encode" in caplog.text
    assert relative_error(small.mean, vae.encode(mel).latent_dist.mean) < EXACT_TOLERANCE


def test_nan_in_the_input_names_the_time_range(tiny):
    mel = nonstationary_mel(1, 160)
    mel[:, :, 70] = math.nan
    with pytest.raises(FloatingPointError, match="VAE encode produced NaN or inf in the tile covering 0.64-0.96 s"):
        tiled_encode(tiny["vae"], mel, TilingConfig(enabled=True, tile_frames=8, show_progress=False))


@pytest.mark.parametrize("shape, message", [((1, 2, 64, 64), "1 channel"), ((1, 1, 3, 64), "at least 4 frame"),
                                            ((1, 64, 64), "4-D")])
def test_mel_is_checked(tiny, shape, message):
    with pytest.raises(ValueError, match=message):
        tiled_encode(tiny["vae"], torch.zeros(shape))


def test_out_of_memory_in_the_untiled_encode_retries_tiled(tiny, monkeypatch, caplog):
    vae = tiny["vae"]
    mel = nonstationary_mel(1, 160)
    expected = vae.encode(mel).latent_dist.mean
    monkeypatch.setattr(vae, "encode", raise_cuda_out_of_memory)
    with caplog.at_level(logging.WARNING, logger="audioldm_tiled.vae"):
        actual = tiled_encode(vae, mel, TilingConfig(tile_frames=8, memory_budget=10**12, show_progress=False))
    assert "untiled VAE encode ran out of memory" in caplog.text
    assert relative_error(actual.mean, expected) < EXACT_TOLERANCE
