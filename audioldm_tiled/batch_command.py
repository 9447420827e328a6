"""``audioldm-tiled batch JOBS --out-dir DIR``: every job of a JSON Lines file rendered into a folder, alone or
as one rank of many (``batch``, ``batch_jobs``)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .arguments import CliError, device_name, positive_int, positive_number, resolve_device, resolve_dtype
from .constants import DTYPES, UPSAMPLE_MODEL, UPSAMPLE_STEPS
from .loading import DEFAULT_MODEL

logger = logging.getLogger("audioldm_tiled.cli")


def batch_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioldm-tiled batch",
        description="Render every job of a JSON Lines file into a folder, each WAV with a JSON sidecar. Run it "
        "alone, under torchrun --nproc_per_node N, or under srun: each rank renders its share (from RANK/WORLD_SIZE, "
        "SLURM_PROCID/SLURM_NTASKS or --shard). A rerun skips finished jobs.",
    )
    parser.add_argument("jobs", help='JSON Lines file: {"output": "rain.wav", "prompt": "rain", "seconds": 30, '
                        '"seed": 1, "steps": 10, "guidance": 2.5, "mode": "exact"} per line; or "timeline" instead '
                        'of "prompt", or "input" (and "strength") instead of "seconds"')
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the WAVs, sidecars and manifests")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"hub id, local folder, or random:ARCH (default {DEFAULT_MODEL})")
    parser.add_argument("--upsample-model", default=UPSAMPLE_MODEL, metavar="MODEL",
                        help='the AudioSR model of the jobs with "upsample": true, loaded once one needs it (default '
                        f"{UPSAMPLE_MODEL}; a converted folder, or random:audiosr)")
    parser.add_argument("--upsample-steps", type=positive_int("--upsample-steps"), default=UPSAMPLE_STEPS,
                        help=f'AudioSR\'s DDIM steps for the jobs with "upsample": true (default {UPSAMPLE_STEPS})')
    parser.add_argument("--device", default="auto", type=device_name,
                        help="auto (default: cuda:LOCAL_RANK if available, else mps, else cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                        help="auto (default: fp16 on cuda, fp32 elsewhere), fp32, fp16 or bf16")
    parser.add_argument("--memory-budget", type=positive_number("--memory-budget", "GB"), default=None, metavar="GB",
                        help="memory to plan tiles and chunks for (default: most of the free memory)")
    parser.add_argument("--shard", default=None, metavar="i/N",
                        help="render share i of N (0-based) instead of the launcher's RANK/WORLD_SIZE")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (the per-job lines stay)")
    return parser


def batch(args: argparse.Namespace) -> int:
    """The batch command. Alone: 0 when every job of this rank is done, 1 when any failed (see its sidecar).
    Under a launcher (RANK/WORLD_SIZE or Slurm's variables): 0 once every job is done or recorded as failed, so
    that the launcher does not stop the other ranks; the last line counts the failures."""
    from .batch import parse_shard, run_batch, shard_from_environment
    from .batch_jobs import JobError, read_jobs

    try:
        jobs = read_jobs(args.jobs)  # a bad line fails here, before any model is loaded
    except IsADirectoryError:
        raise CliError(f"{args.jobs}: is a directory, not a jobs file") from None
    except OSError as error:
        raise CliError(f"{args.jobs}: cannot read the jobs file ({error.strerror or error})") from None
    except JobError as error:
        raise CliError(str(error)) from None
    shard = parse_shard(args.shard) if args.shard else shard_from_environment()
    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CliError(f"--out-dir {args.out_dir}: {error.strerror or error}") from None
    if not os.access(out_dir, os.W_OK):
        raise CliError(f"--out-dir {args.out_dir}: not writable")
    from .config import TilingConfig
    from .distributed import local_device

    device = local_device(resolve_device(args.device))  # under torchrun or srun: this rank's GPU
    dtype = resolve_dtype(args.dtype, device)

    def load():  # only once a job needs rendering: a rerun of finished jobs loads no model
        from .loading import ModelLoadError, load_pipeline

        try:
            pipe = load_pipeline(args.model, dtype, device)
        except ModelLoadError as error:
            raise CliError(f"--model: {error}") from None
        pipe.set_progress_bar_config(disable=args.quiet)
        return pipe

    def load_upsampler():  # once a job asks for 48 kHz
        from .audiosr.command import load_upsampling

        return load_upsampling(args.upsample_model, args.upsample_steps, dtype, device, "--upsample-model",
                               args.quiet)

    tiling = TilingConfig(memory_budget=None if args.memory_budget is None else int(args.memory_budget * 1e9))
    summary = run_batch(load, jobs, out_dir, shard, tiling, model=args.model, upsample=load_upsampler)
    if not summary["failed"]:
        return 0
    launched = not args.shard and shard.world > 1
    if launched:
        logger.warning("%d job(s) failed on rank %d (see their sidecars and the manifest); exit status 0 so that "
                       "the launcher lets the other ranks finish", len(summary["failed"]), shard.rank)
    return 0 if launched else 1


def main(argv: list[str]) -> int:
    return batch(batch_parser().parse_args(argv))
