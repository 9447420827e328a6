"""Exact mode's stores: the paused tiles on the device, in host memory or on disk give the same decode, the disk
store's largest tensor does not grow with the length, its files vanish on success and on failure, and ``auto`` picks
the disk only when the device budget is too small, failing before the denoising when the disk has no room."""

import collections
import errno
import logging
import os
import subprocess

import pytest
import torch
import torch.nn.functional as F
from test_blocked_attention import LargestTensor

from audioldm_tiled import TilingConfig, iter_decode, tiled_decode, tiled_encode
from audioldm_tiled.memory import InsufficientMemoryError
from audioldm_tiled.vae import check_exact_decode_fits, exact
from audioldm_tiled.vae import store as store_module
from audioldm_tiled.vae.attention import OnlineSoftmax
from audioldm_tiled.vae.store import open_store
from conftest import EXACT_TOLERANCE, nonstationary_latents, relative_error


def decode(vae, z, **fields):
    return tiled_decode(vae, z, TilingConfig(enabled=True, tile_frames=16, show_progress=False, **fields))


def open_files_under(folder) -> int:
    """Descriptors of this process open on files in ``folder`` (unlinked files included)."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return sum(p.startswith(str(folder)) for p in paths)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["device", "host", "disk"])
def test_a_store_gives_back_every_run_of_frames(kind, dtype, tmp_path):
    x = torch.randn(3, 5, 23, 7).to(dtype)
    with open_store(kind, torch.device("cpu"), tmp_path) as store:
        items = [store.put(x), store.put(x[:, :, 4:19]), store.put(x.transpose(1, 3).transpose(1, 3))]
        for lo, hi in [(0, 23), (0, 1), (22, 23), (7, 11)]:
            assert torch.equal(store.read(items[0], lo, hi), x[:, :, lo:hi])
            assert torch.equal(store.read(items[2], lo, hi), x[:, :, lo:hi])
        assert torch.equal(store.read(items[1], 2, 9), x[:, :, 6:13])
        shared = store.share(items[0])
        store.release(items[0])
        assert torch.equal(store.read(shared), x)  # still held by its second holder
        store.release(shared)
        assert items[0].payload is None
    assert open_files_under(tmp_path) == 0
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("parts", [[64], [1, 63], [17, 30, 17], [5] * 12 + [4]])
@pytest.mark.parametrize("block", [3, 64])
def test_online_softmax_equals_one_softmax_over_all_keys(parts, block):
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 1, n, 32, generator=g, dtype=torch.float64) * 4 for n in (40, 64, 64))
    softmax = OnlineSoftmax(query, block)
    for piece_k, piece_v in zip(key.split(parts, dim=2), value.split(parts, dim=2), strict=True):
        softmax.add(piece_k, piece_v)
    expected = F.scaled_dot_product_attention(query, key, value)
    assert relative_error(softmax.result(), expected) < 1e-12  # float64: only rounding separates the two


@pytest.mark.parametrize("batch,frames", [(1, 61), (3, 37), (2, 97)])
def test_every_store_decodes_as_untiled(tiny, batch, frames, tmp_path):
    vae = tiny["vae"]
    z = nonstationary_latents(batch, frames, seed=frames)
    expected = vae.decode(z).sample
    device = decode(vae, z, store="device")
    host = decode(vae, z, store="host")
    disk = decode(vae, z, store="disk", store_dir=tmp_path)
    for actual in (device, host, disk):
        assert relative_error(actual, expected) < EXACT_TOLERANCE
    # Host and disk move the same bytes and attend over the same key tiles: the same bits. Against the device
    # store they differ only in how the attention's softmax is summed.
    assert torch.equal(host, disk)
    assert relative_error(disk, device) < EXACT_TOLERANCE


def test_every_store_encodes_as_untiled(tiny, tmp_path):
    vae = tiny["vae"]
    mel = tiny["vae"].decode(nonstationary_latents(2, 43)).sample
    expected = vae.encode(mel).latent_dist.parameters
    for fields in ({"store": "device"}, {"store": "disk", "store_dir": tmp_path}):
        config = TilingConfig(enabled=True, tile_frames=16, show_progress=False, **fields)
        assert relative_error(tiled_encode(vae, mel, config).parameters, expected) < EXACT_TOLERANCE


def test_the_disk_store_does_not_grow_with_the_length(tiny, tmp_path, monkeypatch):
    """The largest tensor any op makes while the decode streams is the same at 64 and 384 latent frames on disk,
    and grows with the length on the device, whose attention sees the whole sequence at once."""
    monkeypatch.setattr(exact, "KEY_PART_TOKENS", 256)  # one tiny tile: parts shorter than the shorter length
    vae = tiny["vae"]
    largest = {}
    for kind in ("disk", "device"):
        for frames in (64, 384):
            z = nonstationary_latents(1, frames)
            config = TilingConfig(enabled=True, tile_frames=16, store=kind, store_dir=tmp_path, show_progress=False)
            with torch.no_grad(), LargestTensor() as mode:
                for _ in iter_decode(vae, z, config):
                    pass  # each piece dropped, as the pipeline's streamed render does
            largest[kind, frames] = mode.bytes
    assert largest["disk", 64] == largest["disk", 384]
    assert largest["device", 384] > largest["device", 64]
    assert largest["disk", 384] < largest["device", 384]


def test_disk_files_vanish_when_the_decode_fails(tiny, tmp_path):
    vae = tiny["vae"]
    z = nonstationary_latents(1, 80)
    calls = []

    def fail_late(module, args):
        calls.append(1)
        if len(calls) == 3:  # in the last segment, with neighbours still stored
            assert open_files_under(tmp_path) > 0  # the store is in use: the check below can fail
            raise RuntimeError("stop here")

    handle = vae.decoder.conv_out.register_forward_pre_hook(fail_late)
    try:
        with pytest.raises(RuntimeError, match="stop here"):
            decode(vae, z, store="disk", store_dir=tmp_path)
    finally:
        handle.remove()
    assert len(calls) == 3
    assert open_files_under(tmp_path) == 0
    assert os.listdir(tmp_path) == []


def test_a_full_disk_fails_with_the_disk_error_and_leaves_nothing(tiny, tmp_path, monkeypatch):
    """A real 256 kB tmpfs where the test may mount one (root); elsewhere the write fails as a full disk would."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True).returncode == 0
    if not mounted:
        def full(fd, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(store_module.os, "write", full)
    try:
        with pytest.raises(OSError) as failure:
            decode(tiny["vae"], nonstationary_latents(1, 80), store="disk", store_dir=folder)
        assert failure.value.errno == errno.ENOSPC
        assert open_files_under(folder) == 0
        assert os.listdir(folder) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)


def test_auto_goes_to_disk_only_when_the_budget_is_too_small(tiny, tmp_path, caplog):
    vae = tiny["vae"]
    z = nonstationary_latents(1, 64)
    expected = decode(vae, z, store="disk", store_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="audioldm_tiled.vae"):
        roomy = decode(vae, z, memory_budget=10**12)
    assert "temporary files" not in caplog.text
    assert relative_error(roomy, expected) < EXACT_TOLERANCE
    with caplog.at_level(logging.INFO, logger="audioldm_tiled.vae"):
        tight = decode(vae, z, memory_budget=10**5, store_dir=tmp_path)
    assert f"keeping it in temporary files in {tmp_path}" in caplog.text
    assert "more than the 100.0 kB memory budget" in caplog.text
    assert torch.equal(tight, expected)


def test_no_room_anywhere_fails_before_the_denoising(tiny_pipe, tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    steps = []
    tiny_pipe.unet.register_forward_pre_hook(lambda module, args: steps.append(1))
    config = TilingConfig(memory_budget=10**4, store_dir=tmp_path)
    with pytest.raises(InsufficientMemoryError, match="1.0 kB free"):
        tiny_pipe("rain", audio_length_in_s=4.0, num_inference_steps=2, tiling=config)
    assert steps == []
    with pytest.raises(InsufficientMemoryError, match="store='disk'"):  # the device store, named, does not fit
        check_exact_decode_fits(tiny_pipe.vae, torch.zeros(1, 8, 100, 16), config.replace(store="device"))
    monkeypatch.undo()
    check_exact_decode_fits(tiny_pipe.vae, torch.zeros(1, 8, 100, 16), config)  # the real disk has room


def test_store_settings_are_checked():
    with pytest.raises(ValueError, match="TilingConfig.store must be one of"):
        TilingConfig(store="ssd")
    with pytest.raises(ValueError, match="TilingConfig.store_dir must be a directory path"):
        TilingConfig(store_dir=3)
