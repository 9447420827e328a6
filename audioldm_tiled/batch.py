"""Batch rendering: a JSON Lines file of jobs, shared out over ranks, each output written once.

``audioldm-tiled batch jobs.jsonl --out-dir DIR`` runs alone, under ``torchrun --nproc_per_node N`` or under
``srun``. Every rank reads the same jobs and computes the same assignment (longest first, each to the rank with the
least work so far), so no process group is needed. Each output file is written atomically (in the job's format, rate
and loudness) with a JSON sidecar that records what made it and what it measures; a rerun skips the jobs whose
sidecar says they are done, so a crashed or pre-empted run resumes where it stopped. A job's output depends only on
the job: its seed goes to a CPU generator, whichever rank runs it. The jobs themselves: ``batch_jobs``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .batch_jobs import BatchJob
from .files import atomic_file, name_problem

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class Shard:
    """This process's place: ``rank`` of ``world`` ranks, and its device index on its node (``local_rank``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0


def parse_shard(text: str) -> Shard:
    """``"i/N"`` (0-based i) as a Shard."""
    try:
        rank, world = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/N with 0 <= i < N, e.g. 0/4; got {text!r}") from None
    if not 0 <= rank < world:
        raise ValueError(f"--shard takes i/N with 0 <= i < N, e.g. 0/4; got {text!r}")
    return Shard(rank, world, 0)


def shard_from_environment(environ: dict[str, str] | None = None) -> Shard:
    """torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else Slurm's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, else 0 of 1.
    One of a pair without the other is refused: every rank would otherwise render every job."""
    env = os.environ if environ is None else environ
    for rank, world, local in (("RANK", "WORLD_SIZE", "LOCAL_RANK"),
                               ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        if (rank in env) != (world in env):
            given, missing = (rank, world) if rank in env else (world, rank)
            raise ValueError(f"{given} is set but {missing} is not: set both, or give --shard i/N")
        if rank in env and world in env:
            try:
                shard = Shard(int(env[rank]), int(env[world]), int(env.get(local, env[rank])))
            except ValueError:
                raise ValueError(f"{rank}={env[rank]!r}, {world}={env[world]!r}: not integers") from None
            if not 0 <= shard.rank < shard.world:
                raise ValueError(f"{rank}={shard.rank} is not a rank of {world}={shard.world}")
            return shard
    return Shard()


def assign(jobs: list[BatchJob], world: int) -> list[list[int]]:
    """BatchJob indices per rank: longest first (seconds x steps), each to the rank with the least work so far; ties
    go to the lower index, so every rank computes the same assignment."""
    load = [0.0] * world
    ranks: list[list[int]] = [[] for _ in range(world)]
    for index in sorted(range(len(jobs)), key=lambda i: (-jobs[i].cost, i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        load[rank] += jobs[index].cost
        ranks[rank].append(index)
    return ranks


def sidecar_path(wav: Path) -> Path:
    return wav.with_name(wav.name + SIDECAR_SUFFIX)


def is_done(wav: Path, job: BatchJob, model: str | None) -> bool:
    """True when ``wav`` holds this job's render: its sidecar says done for the same job and model, and the WAV is
    a valid file of the length the sidecar recorded."""
    import soundfile

    try:
        with open(sidecar_path(wav), encoding="utf-8") as f:
            record = json.load(f)
        if not (isinstance(record, dict) and record.get("status") == "done" and record.get("job") == job.given()
                and record.get("model") == model):
            return False
        frames = soundfile.info(str(wav)).frames
    except (OSError, ValueError, RuntimeError, soundfile.LibsndfileError):
        return False
    return frames > 0 and frames == record.get("samples")


def output_problem(job: BatchJob, out_dir: Path) -> str | None:
    """Why ``job``'s output or sidecar cannot be written, found without any model: it leads out of ``out_dir``
    through a symbolic link, or its name is one the filesystem refuses."""
    root = os.path.realpath(out_dir)
    for path in (out_dir / job.output, sidecar_path(out_dir / job.output)):
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            return f"{job.output!r} leads out of the output folder (to {real!r}) through a symbolic link"
        problem = name_problem(Path(real))
        if problem:
            return problem
    return None


def input_problem(job: BatchJob) -> str | None:
    """Why ``job``'s input cannot be read, found without any model."""
    if job.input is not None and not os.path.isfile(job.input):
        return f"input {job.input!r}: " + ("is not a regular file" if os.path.exists(job.input) else "no such file")
    return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_file(path) as part:
        with open(part, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import diffusers
    import torch
    import transformers

    try:
        own = version("audioldm-tiled")
    except PackageNotFoundError:  # run from a source tree that was not installed
        own = "unknown"
    return {"audioldm_tiled": own, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def render_job(pipe, job: BatchJob, out_dir: Path, tiling, upsampler=None) -> dict[str, Any]:
    """Render one job into ``out_dir / job.output`` (atomically) and return what its sidecar records of it: the
    settings the render resolved, its time, length and loudness. ``upsampler()`` gives the AudioSR pipeline of a
    job that asks for 48 kHz."""
    from .render import render_to_file

    target = out_dir / job.output
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    upsample = None
    if job.upsample:
        if upsampler is None:
            raise ValueError("the job asks for 'upsample', and this batch has no AudioSR model")
        upsample = upsampler()
    delivered = render_to_file(pipe, target, job.request(tiling), upsample=upsample, **job.delivery())
    recipe = delivered.recipe
    upsampled = {"upsampled": recipe["upsampled"]} if "upsampled" in recipe else {}  # what super-resolved it
    return {"settings": {**job.settings(), "steps": recipe["steps"], "guidance": recipe["guidance"]}, **upsampled,
            "render_s": round(time.perf_counter() - start, 3), "samples": delivered.frames, **delivered.report()}


def run_batch(pipe, jobs: list[BatchJob], out_dir: str | os.PathLike, shard: Shard = Shard(), tiling=None,
              model: str | None = None, upsample=None) -> dict[str, list[str]]:
    """Render this rank's share of ``jobs`` into ``out_dir``; returns the outputs done, skipped and failed.

    ``pipe`` is a tiled pipeline, or a function that loads one, called only once a job needs rendering (a rerun
    of finished jobs loads no model); ``upsample`` likewise an ``AudioSRTiledPipeline`` for the jobs that ask for
    48 kHz. A job already done (``is_done``) is skipped. A job that fails, for any
    reason, is recorded in its sidecar (where it can be written) and in this rank's manifest with the error, and
    the others go on. The manifest, ``manifest.rank-<r>-of-<N>.json`` in ``out_dir``, is rewritten atomically
    after every job rendered or failed and at the end, so a rerun of finished jobs takes time linear in their
    number.
    """
    from .config import TilingConfig

    tiling = tiling or TilingConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = assign(jobs, shard.world)[shard.rank]
    summary: dict[str, list[str]] = {"done": [], "skipped": [], "failed": []}
    manifest_path = out_dir / f"manifest.rank-{shard.rank}-of-{shard.world}.json"
    entries: list[dict[str, Any]] = []
    tag = f"rank {shard.rank}/{shard.world}"
    logger.info("%s: %d of %d jobs", tag, len(mine), len(jobs))
    loaded: dict[str, Any] = {}

    def pipeline():
        if not loaded:
            loaded["pipe"] = pipe() if callable(pipe) and not hasattr(pipe, "vocoder") else pipe
            loaded["versions"] = library_versions()
        return loaded["pipe"]

    def upsampler():
        if "upsample" not in loaded:
            loaded["upsample"] = upsample() if callable(upsample) and not hasattr(upsample, "vocoder") else upsample
        return loaded["upsample"]

    def write_manifest() -> None:
        try:
            write_json(manifest_path, {"rank": shard.rank, "world": shard.world, "jobs": entries})
        except OSError as error:
            logger.error("%s: cannot write %s: %s", tag, manifest_path, error)

    for count, index in enumerate(mine, start=1):
        job = jobs[index]
        wav = out_dir / job.output
        entry: dict[str, Any] = {"output": job.output, "line": job.line}
        entries.append(entry)
        unwritable = output_problem(job, out_dir)
        problem = unwritable or input_problem(job)
        if problem is None and is_done(wav, job, model):
            summary["skipped"].append(job.output)
            entry["status"] = "skipped"
            logger.debug("%s: job %d/%d %s: already done, skipped", tag, count, len(mine), job.output)
            continue
        record: dict[str, Any] = {"job": job.given(), "model": model, "rank": shard.rank, "world": shard.world}
        try:
            if problem is not None:
                raise ValueError(problem)
            current = pipeline()
            record.update(render_job(current, job, out_dir, tiling, upsampler if upsample is not None else None),
                          versions=loaded["versions"], status="done")
            summary["done"].append(job.output)
            logger.info("%s: job %d/%d %s: done in %.1f s", tag, count, len(mine), job.output, record["render_s"])
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # noqa: BLE001 - one failed job is recorded; the batch goes on
            record.update(status="failed", error=f"{type(error).__name__}: {error}",
                          traceback=traceback.format_exc(limit=8))
            summary["failed"].append(job.output)
            logger.error("%s: job %d/%d %s: failed: %s", tag, count, len(mine), job.output, record["error"])
        entry.update(status=record["status"], error=record.get("error"))
        if unwritable is None:  # a sidecar beside an output that leads elsewhere would lead there too
            try:
                write_json(sidecar_path(wav), record)
            except OSError as error:
                if record["status"] == "done":  # the WAV without its sidecar is not done: the next run redoes it
                    summary["done"].remove(job.output)
                    summary["failed"].append(job.output)
                entry.update(status="failed", error=f"cannot write the sidecar: {error}")
                logger.error("%s: job %d/%d %s: cannot write its sidecar: %s", tag, count, len(mine), job.output,
                             error)
        write_manifest()
    write_manifest()
    logger.info("%s: %d done, %d skipped, %d failed", tag, len(summary["done"]), len(summary["skipped"]),
                len(summary["failed"]))
    return summary
