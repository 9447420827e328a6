"""One render across gloo ranks on the CPU: the windows are shared out, their merged predictions summed over the
ranks, and the latents equal the single-process run bit for bit; a rank that fails makes every rank fail with its
message instead of waiting in a collective."""

import contextlib
import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from audioldm_tiled import TilingConfig
from audioldm_tiled.denoise import plan_windows
from audioldm_tiled.distributed import RankFailed, Ranks, current_ranks, smallest, together

# Several windows on 4 s of latents (100 frames): 5 windows of 32 frames.
WINDOWS = TilingConfig(window_frames=32, window_overlap_frames=8)
TIMEOUT = datetime.timedelta(seconds=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_ranks(world: int, work, tmp_path) -> list:
    """``work(rank)`` on ``world`` forked gloo ranks; each rank's result (or its exception) comes back by file."""
    port = free_port()

    def rank_main(rank: int) -> None:
        # The parent's OpenMP workers do not survive fork: a parallel region would wait for them forever. One
        # thread per rank is what two ranks on two cores get anyway.
        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=TIMEOUT)
        try:
            try:
                result = work(rank)
            except Exception as error:  # noqa: BLE001 - handed to the parent to assert on
                result = error
            torch.save(result, tmp_path / f"rank{rank}.pt")
        finally:
            dist.destroy_process_group()

    mp.start_processes(rank_main, nprocs=world, start_method="fork", join=True)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


@contextlib.contextmanager
def one_thread():
    """The single-process reference at the ranks' thread count: float sums split over threads differ in the last
    bit from one thread's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_shares_are_contiguous_balanced_and_cover_everything():
    for count in range(0, 9):
        for world in range(1, 5):
            shares = [Ranks(rank, world).share(count) for rank in range(world)]
            assert [i for share in shares for i in share] == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def render(pipe, seconds: float, tiling: TilingConfig, **call) -> torch.Tensor:
    return pipe("rain on a tin roof", audio_length_in_s=seconds, num_inference_steps=3, output_type="latent",
                generator=torch.Generator().manual_seed(7), tiling=tiling, **call).audios


@pytest.mark.parametrize("world,seconds", [(2, 4.0), (3, 4.0), (3, 1.5)])
def test_a_render_over_ranks_equals_one_process_bit_for_bit(tiny_pipe, tmp_path, world, seconds):
    windows = len(plan_windows(int(seconds * 25), WINDOWS).windows)
    assert windows == (5 if seconds == 4.0 else 2)  # 1.5 s: fewer windows than ranks
    with one_thread():
        expected = render(tiny_pipe, seconds, WINDOWS)

    def work(rank):
        assert current_ranks() == Ranks(rank, world)
        steps = []
        latents = render(tiny_pipe, seconds, WINDOWS,
                         callback_on_step_end=lambda pipe, i, t, tensors: steps.append(i) or tensors)
        assert steps == [0, 1, 2]  # callbacks run on every rank, once per step
        return latents

    for latents in on_ranks(world, work, tmp_path):
        assert torch.equal(latents, expected)


def test_a_rank_that_skips_the_sum_would_be_wrong(tiny_pipe, tmp_path, monkeypatch):
    """What the bit-for-bit test guards against: a rank's own share of the windows is not the render."""
    from audioldm_tiled import denoise

    with one_thread():
        expected = render(tiny_pipe, 4.0, WINDOWS)
    monkeypatch.setattr(denoise, "sum_over_ranks", lambda ranks, merged: merged)
    for latents in on_ranks(2, lambda rank: render(tiny_pipe, 4.0, WINDOWS), tmp_path):
        assert not torch.equal(latents, expected)


def test_a_failing_rank_makes_every_rank_fail_with_its_message(tiny_pipe, tmp_path):
    def work(rank):
        if rank == 1:
            calls = []

            def fail_at_the_second_step(module, args):
                calls.append(1)
                if len(calls) == 2:
                    raise RuntimeError("UNet blew up")

            tiny_pipe.unet.register_forward_pre_hook(fail_at_the_second_step)
        return render(tiny_pipe, 4.0, WINDOWS)

    errors = on_ranks(2, work, tmp_path)
    for error in errors:
        assert isinstance(error, RankFailed)
        assert str(error) == "rank 1 of 2 failed: RuntimeError: UNet blew up"


def test_early_checks_and_decisions_are_shared(tiny_pipe, tmp_path):
    def work(rank):
        assert smallest(current_ranks(), 5 - rank) == 4
        # a decode that cannot fit, said on rank 0 (which decodes); rank 1 asked for latents only
        tight = WINDOWS.replace(memory_budget=1000, store="device")
        output_type = "np" if rank == 0 else "latent"
        return tiny_pipe("rain", audio_length_in_s=4.0, num_inference_steps=2, output_type=output_type,
                         tiling=tight)

    errors = on_ranks(2, work, tmp_path)
    assert all(isinstance(e, RankFailed) and "rank 0 of 2 failed: InsufficientMemoryError" in str(e) for e in errors)


def test_without_a_process_group_nothing_changes():
    assert current_ranks() is None
    assert together(None, lambda: 3) == 3
    assert smallest(None, 3) == 3


def test_the_command_line_over_ranks_writes_the_one_process_file(tmp_path):
    """Under torchrun every rank runs the same command: rank 0 writes the WAV, the others denoise their windows."""
    from audioldm_tiled.cli import main

    args = ["rain", "--seconds", "16", "--model", "random:tiny", "--steps", "2", "--quiet"]  # 2 windows
    with one_thread():
        assert main([*args, "-o", str(tmp_path / "one.wav")]) == 0

    def work(rank):
        os.environ["WORLD_SIZE"] = "2"
        return main([*args, "-o", str(tmp_path / f"two-{rank}.wav")])

    assert on_ranks(2, work, tmp_path) == [0, 0]
    assert (tmp_path / "two-0.wav").read_bytes() == (tmp_path / "one.wav").read_bytes()
    assert not (tmp_path / "two-1.wav").exists()
