"""One render across gloo ranks on the CPU, asked for with ``ranks="auto"``: the windows are shared out, their
merged predictions summed over the ranks, and the latents equal the single-process run bit for bit; a rank that
fails makes every rank fail with its message instead of waiting in a collective. Without ``ranks`` a process group
changes nothing: each rank renders its own arguments alone."""

import contextlib
import datetime
import os
import socket
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from audioldm_tiled import TilingConfig
from audioldm_tiled.denoise import plan_windows
from audioldm_tiled.distributed import RankFailed, Ranks, ranks_for, smallest, together

# Several windows on 4 s of latents (100 frames): 5 windows of 32 frames.
WINDOWS = TilingConfig(window_frames=32, window_overlap_frames=8)
TIMEOUT = datetime.timedelta(seconds=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_ranks(world: int, work, tmp_path, timeout_s: float = 300) -> list:
    """``work(rank)`` on ``world`` forked gloo ranks; each rank's result (or its exception) comes back by file.
    Ranks still running after ``timeout_s`` are a hang: they are killed and the test fails."""
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

    context = mp.start_processes(rank_main, nprocs=world, start_method="fork", join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"ranks still running after {timeout_s:g} s: a rank waits on a collective that will not come")
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


def shared(pipe, seconds: float, tiling: TilingConfig, **call) -> torch.Tensor:
    """``render`` shared over the default process group's ranks."""
    return render(pipe, seconds, tiling, ranks="auto", **call)


@pytest.mark.parametrize("world,seconds", [(2, 4.0), (3, 4.0), (3, 1.5)])
def test_a_render_over_ranks_equals_one_process_bit_for_bit(tiny_pipe, tmp_path, world, seconds):
    windows = len(plan_windows(int(seconds * 25), WINDOWS).windows)
    assert windows == (5 if seconds == 4.0 else 2)  # 1.5 s: fewer windows than ranks
    with one_thread():
        expected = render(tiny_pipe, seconds, WINDOWS)

    def work(rank):
        assert ranks_for("auto") == Ranks(rank, world)
        steps = []
        latents = shared(tiny_pipe, seconds, WINDOWS,
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
    for latents in on_ranks(2, lambda rank: shared(tiny_pipe, 4.0, WINDOWS), tmp_path):
        assert not torch.equal(latents, expected)


def test_each_rank_renders_its_own_prompts_unless_asked_to_share(tiny_pipe, tmp_path):
    """accelerate's ``split_between_processes`` and DDP evaluation loops: a process group exists, each rank calls
    with its own prompt and seed, and gets exactly what a lone process gets for them."""
    arguments = [("rain", 10), ("birds", 11)]

    def audio(prompt, seed, **call):
        return tiny_pipe(prompt, audio_length_in_s=4.0, num_inference_steps=2, tiling=WINDOWS,
                         generator=torch.Generator().manual_seed(seed), **call).audios

    with one_thread():
        expected = [audio(prompt, seed) for prompt, seed in arguments]

    def work(rank):
        from accelerate import PartialState

        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
        state = PartialState(cpu=True)  # finds the process group this rank already joined
        torch.set_num_threads(1)  # accelerate sets its own thread count on the CPU; the reference ran on one
        with state.split_between_processes(arguments) as mine:
            assert len(mine) == 1
            return audio(*mine[0])

    results = on_ranks(2, work, tmp_path)
    for result, alone in zip(results, expected):
        assert np.array_equal(result, alone)
    assert not np.array_equal(expected[0], expected[1])  # the prompts make different audio


def test_sharing_one_render_with_different_arguments_is_refused_on_every_rank(tiny_pipe, tmp_path):
    def work(rank):
        return tiny_pipe(["rain", "birds"][rank], audio_length_in_s=4.0, num_inference_steps=2, tiling=WINDOWS,
                         ranks="auto", generator=torch.Generator().manual_seed(7))

    errors = on_ranks(2, work, tmp_path)
    for error in errors:
        assert isinstance(error, ValueError) and "rank(s) 1 differ from rank 0's" in str(error), error
    assert str(errors[0]) == str(errors[1])


def test_a_failing_rank_makes_every_rank_fail_with_its_message(tiny_pipe, tmp_path):
    def work(rank):
        if rank == 1:
            calls = []

            def fail_at_the_second_step(module, args):
                calls.append(1)
                if len(calls) == 2:
                    raise RuntimeError("UNet blew up")

            tiny_pipe.unet.register_forward_pre_hook(fail_at_the_second_step)
        return shared(tiny_pipe, 4.0, WINDOWS)

    errors = on_ranks(2, work, tmp_path)
    for error in errors:
        assert isinstance(error, RankFailed)
        assert str(error) == "rank 1 of 2 failed: RuntimeError: UNet blew up"


def test_early_checks_and_decisions_are_shared(tiny_pipe, tmp_path):
    def work(rank):
        assert smallest(ranks_for("auto"), 5 - rank) == 4
        # a decode that cannot fit, said on rank 0 (which decodes); rank 1 asked for latents only
        tight = WINDOWS.replace(memory_budget=1000, store="device")
        output_type = "np" if rank == 0 else "latent"
        return tiny_pipe("rain", audio_length_in_s=4.0, num_inference_steps=2, output_type=output_type,
                         tiling=tight, ranks="auto")

    errors = on_ranks(2, work, tmp_path)
    assert all(isinstance(e, RankFailed) and "rank 0 of 2 failed: InsufficientMemoryError" in str(e) for e in errors)


def test_without_a_process_group_nothing_changes():
    assert ranks_for("auto") is None and ranks_for(None) is None
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


# Decode and vocoder over ranks: tiles of 16 latent frames, vocoder chunks of 64 mel frames.
SPREAD = TilingConfig(enabled=True, tile_frames=16, vocoder_chunk_frames=64, show_progress=False)


def one_process_waveform(tiny, latents, config):
    from audioldm_tiled.vae import iter_decode
    from audioldm_tiled.vocoder import stream_vocode

    mel = (piece.squeeze(1) for piece in iter_decode(tiny["vae"], latents, config))
    return torch.cat(list(stream_vocode(tiny["vocoder"], mel, latents.shape[2] * 4, config)), dim=-1)


def waveform_over_ranks(tiny, latents, config, root=None):
    from audioldm_tiled.distributed_decode import waveform_on_ranks

    pieces = list(waveform_on_ranks(tiny["vae"], tiny["vocoder"], latents, config, ranks_for("auto"), root))
    return torch.cat(pieces, dim=-1) if pieces else None


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("mode,store", [("fast", "device"), ("exact", "disk"), ("exact", "device")])
def test_decode_and_vocoder_over_ranks_equal_one_process(tiny, tmp_path, world, mode, store):
    from audioldm_tiled.vae import decode_job, decode_tiles
    from audioldm_tiled.vae.fast import plan_proxy
    from audioldm_tiled.vae.tasks import halo_frames
    from conftest import EXACT_TOLERANCE, nonstationary_latents, relative_error

    if mode == "fast":  # long enough for a proxy of two rounds, shared out over the ranks: 5 tiles, 19 chunks
        latents, config = nonstationary_latents(1, 301), SPREAD.replace(mode="fast", tile_frames=64, proxy_frames=32)
        tasks = decode_job(tiny["vae"]).tasks
        assert plan_proxy(tasks, 301, 32, halo_frames(tasks), 32).rounds == 2
    else:  # 4 tiles (uneven over 3 ranks), 4 chunks, batch 2
        latents, config = nonstationary_latents(2, 61), SPREAD.replace(mode="exact", store=store)
    tiles = len(decode_tiles(tiny["vae"], latents, config))
    rounds = 2 if mode == "fast" else 0
    with one_thread():
        expected = one_process_waveform(tiny, latents, config)

    def work(rank):
        runs = []
        hook = tiny["vae"].decoder.conv_out.register_forward_hook(lambda module, args, out: runs.append(1))
        try:
            return waveform_over_ranks(tiny, latents, config), len(runs)
        finally:
            hook.remove()

    results = on_ranks(world, work, tmp_path)
    for waveform, _ in results:
        if mode == "fast" or store == "disk":
            assert torch.equal(waveform, expected)
        else:  # the device store's attention is one call over the whole sequence in one process, per key tile here
            assert relative_error(waveform, expected) < EXACT_TOLERANCE
    # each rank ran its own tiles (and its proxy rounds) to the end, and none ran twice
    assert [runs for _, runs in results] == [len(Ranks(r, world).share(tiles)) + len(Ranks(r, world).share(rounds))
                                             for r in range(world)]


def test_more_ranks_than_tiles_and_chunks(tiny, tmp_path):
    latents = torch.randn(1, 8, 20, 16, generator=torch.Generator().manual_seed(3))  # 2 tiles, 2 chunks
    config = SPREAD.replace(mode="exact", store="host")
    with one_thread():
        expected = one_process_waveform(tiny, latents, config)
    results = on_ranks(3, lambda rank: waveform_over_ranks(tiny, latents, config, root=0), tmp_path)
    assert torch.equal(results[0], expected)
    assert results[1] is None and results[2] is None  # the pieces come out on the root alone


def test_a_decode_that_fails_on_one_rank_fails_on_every_rank(tiny, tmp_path):
    latents = torch.randn(1, 8, 61, 16, generator=torch.Generator().manual_seed(4))

    def work(rank):
        if rank == 1:
            def fail(module, args):
                raise RuntimeError("decoder blew up")

            tiny["vae"].decoder.conv_out.register_forward_pre_hook(fail)
        return waveform_over_ranks(tiny, latents, SPREAD.replace(mode="exact"), root=0)

    for error in on_ranks(2, work, tmp_path):
        assert isinstance(error, RankFailed)
        assert str(error) == "rank 1 of 2 failed: RuntimeError: decoder blew up"


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_the_whole_pipeline_over_ranks_equals_one_process(tiny_pipe, tmp_path, mode):
    tiling = WINDOWS.replace(enabled=True, tile_frames=24, vocoder_chunk_frames=128, mode=mode, store="host")
    prompt = [(0, "rain"), (2.5, "thunder")]

    def audio():
        return tiny_pipe(prompt, audio_length_in_s=5.0, num_inference_steps=2, tiling=tiling, ranks="auto",
                         generator=torch.Generator().manual_seed(11)).audios

    with one_thread():
        expected = audio()
    for result in on_ranks(3, lambda rank: audio(), tmp_path):
        assert (result == expected).all()


def test_a_render_to_wav_that_fails_on_another_rank_keeps_the_existing_file(tiny_pipe, tmp_path):
    from audioldm_tiled import render_to_wav

    path = tmp_path / "out.wav"
    path.write_bytes(b"an earlier render")
    tiling = WINDOWS.replace(enabled=True, tile_frames=16, vocoder_chunk_frames=64)

    def work(rank):
        if rank == 1:  # in the forked rank only
            from audioldm_tiled import vocoder

            def fail(*args):
                raise RuntimeError("vocoder blew up")

            vocoder.hifigan_channels_last = fail
        return render_to_wav(tiny_pipe, path, "rain", audio_length_in_s=2.0, num_inference_steps=2, tiling=tiling,
                             ranks="auto")

    for error in on_ranks(2, work, tmp_path):
        assert isinstance(error, RankFailed) and str(error) == "rank 1 of 2 failed: RuntimeError: vocoder blew up"
    assert path.read_bytes() == b"an earlier render"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".pt")) == ["out.wav"]


def test_a_regenerated_span_over_ranks_equals_one_process(tiny_pipe, tmp_path):
    """Edits run through the same engine over ranks: the known region is put back alike on every rank."""
    import numpy as np

    recording = (0.3 * np.sin(np.arange(3 * 16000) / 5)).astype(np.float32)
    tiling = WINDOWS.replace(enabled=True, tile_frames=16, vocoder_chunk_frames=64, store="host")

    def fixed():
        return tiny_pipe("rain", audio=recording, regenerate=(1.0, 2.0), num_inference_steps=2, tiling=tiling,
                         ranks="auto", generator=torch.Generator().manual_seed(5)).audios

    with one_thread():
        expected = fixed()
    for result in on_ranks(2, lambda rank: fixed(), tmp_path):
        assert np.array_equal(result, expected)


def test_a_batch_inside_a_process_group_writes_the_one_rank_files(tiny_pipe, tmp_path):
    """Each rank renders its shard's jobs alone, whatever process group the caller made."""
    import json

    from audioldm_tiled.batch import Shard, run_batch
    from audioldm_tiled.batch_jobs import read_jobs

    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text("\n".join(json.dumps(job) for job in (
        {"output": "rain.wav", "prompt": "rain", "seconds": 4.0, "steps": 2, "seed": 1},
        {"output": "wind.wav", "prompt": "wind", "seconds": 4.0, "steps": 2, "seed": 2})))
    jobs = read_jobs(jobs_file)
    tiling = WINDOWS.replace(show_progress=False)
    with one_thread():
        run_batch(tiny_pipe, jobs, tmp_path / "one", tiling=tiling)
    on_ranks(2, lambda rank: run_batch(tiny_pipe, jobs, tmp_path / "two", Shard(rank, 2), tiling), tmp_path)
    for name in ("rain.wav", "wind.wav"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


@pytest.mark.parametrize("edit", [["--extend", "2"], ["--regenerate", "1:1.5"]])
def test_a_short_edit_over_ranks_ends_together_on_every_rank(tmp_path, edit):
    """An edit's assembly needs fewer generated samples than the decode makes: the root must still take part in
    every collective of the decode, or the other ranks are left waiting on it (torchrun then fails)."""
    import soundfile

    from audioldm_tiled.cli import main

    source = tmp_path / "three.wav"
    soundfile.write(source, (0.1 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32), 16000)
    args = ["rain", "--input", str(source), *edit, "--model", "random:tiny", "--steps", "2", "--quiet"]
    with one_thread():
        assert main([*args, "-o", str(tmp_path / "one.wav")]) == 0

    def work(rank):
        os.environ["WORLD_SIZE"] = "2"
        return main([*args, "-o", str(tmp_path / "two.wav")])

    assert on_ranks(2, work, tmp_path) == [0, 0]
    assert (tmp_path / "two.wav").read_bytes() == (tmp_path / "one.wav").read_bytes()


def test_ranks_may_keep_their_work_in_different_places(tiny_pipe, tmp_path):
    """Where a rank keeps its paused tiles, and its memory budget, do not change the audio: not refused."""
    tiling = WINDOWS.replace(enabled=True, tile_frames=16, store="disk", show_progress=False)
    folders = [tmp_path / "r0", tmp_path / "r1"]
    for folder in folders:
        folder.mkdir()

    def audio(**call):
        return tiny_pipe("rain", audio_length_in_s=4.0, num_inference_steps=2, generator=torch.Generator()
                         .manual_seed(3), **call).audios

    with one_thread():
        expected = audio(tiling=tiling)
    results = on_ranks(2, lambda rank: audio(tiling=tiling.replace(store_dir=folders[rank], memory_budget=10**9 +
                                                                   rank), ranks="auto"), tmp_path)
    for result in results:
        assert np.array_equal(result, expected)


def test_a_bfloat16_render_over_ranks_passes_its_float32_mel_between_ranks(tmp_path):
    """Under bfloat16 the decoder's output is float32 (decode_precision): the ranks exchange the mel as it is."""
    from audioldm_tiled import AudioLDMTiledPipeline
    from audioldm_tiled.testing.architectures import build_components

    pipe = AudioLDMTiledPipeline(**build_components("tiny")).to(dtype=torch.bfloat16)  # not the shared fixture
    pipe.set_progress_bar_config(disable=True)
    tiling = WINDOWS.replace(enabled=True, tile_frames=16, vocoder_chunk_frames=64, store="host")

    def audio(**call):
        return pipe("rain", audio_length_in_s=4.0, num_inference_steps=2, tiling=tiling,
                    generator=torch.Generator().manual_seed(2), **call).audios

    with one_thread():
        expected = audio()
    for result in on_ranks(2, lambda rank: audio(ranks="auto"), tmp_path):
        assert np.array_equal(result, expected)
