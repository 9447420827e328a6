"""``audioldm-tiled bench distributed``: one render in one process against the same render over N ranks.

Each rank is its own process, started as ``torchrun`` starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT in the environment), on gloo for the CPU and NCCL for CUDA; the cores are divided between the ranks, so
every run uses the same machine. Each rank reports its wall time from a barrier after the models are built to the
end of the render, its own peak memory, and the bytes it handed to collectives, counted at the torch.distributed
calls during denoising and during the decode. Rank 0 writes the WAV; the rows say whether it is the one-process
file byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile

from ..arguments import positive_int, positive_number
from .runner import environment

COLLECTIVES = ("all_reduce", "broadcast", "all_gather_object", "broadcast_object_list", "batch_isend_irecv", "send",
               "recv", "send_object_list", "recv_object_list")


def _payload(name: str, args: tuple) -> int:
    """Bytes this rank hands to (or receives from) one call: tensors by size, objects as pickled."""
    if name == "batch_isend_irecv":
        return sum(op.tensor.numel() * op.tensor.element_size() for op in args[0])
    if name.endswith("_object") or name.endswith("_object_list"):
        return len(pickle.dumps(args[1] if name == "all_gather_object" else args[0]))
    return args[0].numel() * args[0].element_size()


def count_bytes(counter: dict[str, int]) -> None:
    """Wrap torch.distributed's calls so that ``counter[name]`` sums the bytes each one moves (this process)."""
    import torch.distributed as dist

    for name in COLLECTIVES:
        original = getattr(dist, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            counter[_name] = counter.get(_name, 0) + _payload(_name, args)
            return _original(*args, **kwargs)

        setattr(dist, name, counted)


def rank_main(args: argparse.Namespace) -> None:
    """One rank: build the pipeline, wait for the others, render to ``out_dir``/out.wav, report as JSON."""
    import torch
    import torch.distributed as dist

    from ..config import TilingConfig
    from ..distributed import init_from_environment, local_device
    from ..render import render_to_wav
    from ..testing.architectures import random_pipeline

    torch.set_num_threads(args.threads)
    device = local_device(torch.device(args.device))
    ranks = init_from_environment(device)
    pipe = random_pipeline(args.model).to(device)
    pipe.set_progress_bar_config(disable=True)
    counter: dict[str, int] = {}
    count_bytes(counter)
    denoising: dict[str, int] = {}

    def after_step(pipe, step, t, tensors):
        if step == args.steps - 1:
            denoising.update(counter)
        return tensors

    if ranks is not None:
        dist.barrier()
    start = time.perf_counter()
    render_to_wav(pipe, Path(args.out_dir) / "out.wav", "rain on a tin roof", audio_length_in_s=args.seconds[0],
                  num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                  tiling=TilingConfig(mode=args.mode, tile_frames=args.tile_frames, store=args.store,
                                      show_progress=False),
                  callback_on_step_end=after_step, ranks=None if ranks is None else "auto")
    wall = time.perf_counter() - start
    rank = 0 if ranks is None else ranks.rank
    row = {"rank": rank, "time_s": wall, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "denoising_bytes": sum(denoising.values()),
           "decode_bytes": sum(counter.values()) - sum(denoising.values()), "calls": counter}
    if device.type == "cuda":
        row["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(device)
    (Path(args.out_dir) / f"rank{rank}.json").write_text(json.dumps(row))
    if ranks is not None:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_point(seconds: float, world: int, args: argparse.Namespace) -> dict:
    """Start ``world`` rank processes for one render and gather their reports into one row."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // world)
    with tempfile.TemporaryDirectory(prefix="audioldm-bench-distributed-") as out_dir:
        port = str(_free_port())
        children = []
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS=str(threads))
            command = [sys.executable, "-m", "audioldm_tiled.benchmarks.distributed", "--rank-main",
                       "--seconds", str(seconds), "--steps", str(args.steps), "--model", args.model,
                       "--mode", args.mode, "--device", args.device, "--threads", str(threads), "--out-dir", out_dir,
                       "--store", args.store,
                       *([] if args.tile_frames is None else ["--tile-frames", str(args.tile_frames)])]
            children.append(subprocess.Popen(command, env=env))
        codes = [child.wait() for child in children]
        row = {"stage": "distributed", "seconds": seconds, "ranks": world, "threads_per_rank": threads,
               "model": args.model, "mode": args.mode, "store": args.store, "steps": args.steps,
               "tile_frames": args.tile_frames,
               "device": args.device, **environment()}
        if any(codes):
            return {**row, "error": f"rank exit codes {codes}"}
        reports = [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in range(world)]
        wav = (Path(out_dir) / "out.wav").read_bytes()
        samples, _ = soundfile.read(Path(out_dir) / "out.wav", dtype="int16")
    return {**row, "samples": samples, "time_s": max(r["time_s"] for r in reports),
            "peak_rss_bytes": [r["peak_rss_bytes"] for r in reports],
            **({"peak_cuda_bytes": [r["peak_cuda_bytes"] for r in reports]} if "peak_cuda_bytes" in reports[0] else {}),
            "denoising_bytes_per_step": [r["denoising_bytes"] / args.steps for r in reports],
            "decode_bytes": [r["decode_bytes"] for r in reports], "calls": [r["calls"] for r in reports],
            "wav_sha256": hashlib.sha256(wav).hexdigest()}


def compare_samples(rows: list[dict]) -> None:
    """Where a WAV is not the one-rank file byte for byte, how far its 16-bit samples are from it: the largest
    difference in least significant bits and how many samples differ. The samples are dropped from the rows."""
    base = {r["seconds"]: r.get("samples") for r in rows if r["ranks"] == 1}
    for r in rows:
        samples = r.pop("samples", None)
        reference = base.get(r["seconds"])
        if samples is None or reference is None or samples.shape != reference.shape:
            continue
        difference = abs(samples.astype("int32") - reference.astype("int32"))
        r["max_lsb_difference"] = int(difference.max())
        r["differing_samples"] = int((difference > 0).sum())


def to_markdown(rows: list[dict]) -> str:
    lines = ["| audio (s) | ranks | time (s) | time / 1 rank | peak RSS per rank (GB) | collective bytes per step "
             "(MB, per rank) | decode collective bytes (MB, per rank) | WAV as 1 rank |",
             "|---|---|---|---|---|---|---|---|"]
    base = {r["seconds"]: r for r in rows if r["ranks"] == 1 and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['seconds']:g} | {r['ranks']} | failed: {r['error']} | | | | | |")
            continue
        one = base.get(r["seconds"])
        ratio = f"{r['time_s'] / one['time_s']:.2f}" if one else "-"
        same = "-" if one is None else ("yes" if one["wav_sha256"] == r["wav_sha256"] else
                                        f"no: {r['differing_samples']} samples, at most {r['max_lsb_difference']} LSB")
        per_rank = lambda values, scale: ", ".join(f"{v / scale:.2f}" for v in values)  # noqa: E731
        lines.append(f"| {r['seconds']:g} | {r['ranks']} | {r['time_s']:.1f} | {ratio} | "
                     f"{per_rank(r['peak_rss_bytes'], 1e9)} | {per_rank(r['denoising_bytes_per_step'], 1e6)} | "
                     f"{per_rank(r['decode_bytes'], 1e6)} | {same} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="audioldm-tiled bench distributed", description=__doc__)
    parser.add_argument("--seconds", type=positive_number("--seconds", "seconds"), nargs="+", default=[60])
    parser.add_argument("--ranks", type=positive_int("--ranks"), nargs="+", default=[1, 2],
                        help="rank counts to compare; the first should be 1, the reference")
    parser.add_argument("--steps", type=positive_int("--steps"), default=2)
    parser.add_argument("--model", default="audioldm-s", help="random architecture: tiny, audioldm-s, ...")
    parser.add_argument("--mode", choices=("exact", "fast"), default="fast", help="VAE decode mode (default fast)")
    parser.add_argument("--tile-frames", type=positive_int("--tile-frames"), default=None,
                        help="latent frames per VAE tile (default: from the memory budget, often one tile, which "
                        "rank 0 decodes alone)")
    parser.add_argument("--store", choices=("auto", "device", "host", "disk"), default="auto",
                        help="where exact mode keeps its paused tiles (default auto)")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_main:
        rank_main(args)
        return 0
    rows = [run_point(seconds, world, args) for seconds in args.seconds for world in args.ranks]
    compare_samples(rows)
    print(to_markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
