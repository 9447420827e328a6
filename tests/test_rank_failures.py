"""Every rank finishes or every rank fails: a failure injected at each phase of a render shared over gloo ranks
(denoising, the exact and fast decodes and their stores, the vocoder, an edit's encode, the output file) makes
every rank raise RankFailed with the failing rank's message, within seconds, and leaves no file behind."""

import errno
import time

import numpy as np
import pytest
import torch
from test_distributed import on_ranks

import audioldm_tiled.vae.exact as exact
import audioldm_tiled.vae.fast as fast
import audioldm_tiled.vae.store as store
import audioldm_tiled.vocoder as vocoder
from audioldm_tiled import TilingConfig, render_to_wav
from audioldm_tiled.distributed import RankFailed

# 4 s: 5 denoising windows, 7 exact tiles of 16 latent frames, 7 vocoder chunks; shared out over 2 or 3 ranks.
SPREAD = TilingConfig(window_frames=32, window_overlap_frames=8, enabled=True, tile_frames=16,
                      vocoder_chunk_frames=64, show_progress=False)
# Fast mode with a statistics proxy of 2 rounds over 12 s (301 latent frames), shared out over the ranks.
FAST = SPREAD.replace(mode="fast", proxy_frames=32)
# A failing rank is reported at the other ranks' next collective: far less than this on 2 cores.
LIMIT_S = 60


def fail(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device (injected)")


def fail_unet(pipe):
    pipe.unet.register_forward_pre_hook(lambda module, args: fail())


def fail_the_output(pipe):
    from audioldm_tiled.sinks import FileSink

    FileSink._take = fail  # the first piece written to the file


SOURCE = (0.3 * np.sin(np.arange(3 * 16000) / 5)).astype(np.float32)
FOUR_S, TWELVE_S, EDIT = dict(audio_length_in_s=4.0), dict(audio_length_in_s=12.04), dict(audio=SOURCE,
                                                                                          regenerate=(1.0, 2.0))
# phase: (what to break on the failing rank, tiling, what to render)
PHASES = {
    "denoising": (fail_unet, SPREAD, FOUR_S),
    "exact statistics": (lambda pipe: setattr(exact, "group_stats", fail), SPREAD.replace(store="host"), FOUR_S),
    "exact tiles": (lambda pipe: setattr(exact, "run_checked", fail), SPREAD.replace(store="host"), FOUR_S),
    "exact attention": (lambda pipe: setattr(exact, "normed_tokens", fail), SPREAD.replace(store="host"), FOUR_S),
    "disk store": (lambda pipe: setattr(store.DiskStore, "_save", fail), SPREAD.replace(store="disk"), FOUR_S),
    "fast proxy": (lambda pipe: setattr(fast, "_proxy_round", fail), FAST, TWELVE_S),
    "fast tiles": (lambda pipe: setattr(fast, "run_tile", fail), FAST, TWELVE_S),
    "vocoder": (lambda pipe: setattr(vocoder, "_chunk_wave", fail), SPREAD, FOUR_S),
    "edit encode": (lambda pipe: setattr(exact, "run_checked", fail), SPREAD.replace(store="host"), EDIT),
    "output file": (fail_the_output, SPREAD, FOUR_S),
}
# Each phase failing on each of 2 ranks (only rank 0 writes the file), and a few on the last of 3.
CASES = [(phase, 2, rank) for phase in PHASES for rank in ((0,) if phase == "output file" else (0, 1))] + \
    [(phase, 3, 2) for phase in ("denoising", "exact tiles", "disk store", "vocoder")]


@pytest.mark.parametrize("phase,world,failing", CASES)
def test_a_failure_anywhere_fails_every_rank(tiny_pipe, tmp_path, phase, world, failing):
    breaks, tiling, call = PHASES[phase]
    path = tmp_path / "out.wav"
    path.write_bytes(b"an earlier render")

    def work(rank):
        if rank == failing:
            breaks(tiny_pipe)
        start = time.monotonic()
        try:
            render_to_wav(tiny_pipe, path, "rain", num_inference_steps=2, tiling=tiling, ranks="auto",
                          generator=torch.Generator().manual_seed(0), **call)
        except Exception as error:  # noqa: BLE001 - handed back with the time it took
            return error, time.monotonic() - start
        return None, time.monotonic() - start

    results = on_ranks(world, work, tmp_path, timeout_s=LIMIT_S)
    for error, _ in results:
        assert isinstance(error, RankFailed), error
        assert str(error).startswith(f"rank {failing} of {world} failed: OSError") and "injected" in str(error)
    assert path.read_bytes() == b"an earlier render"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]
