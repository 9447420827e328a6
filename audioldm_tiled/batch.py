"""Batch rendering: a JSON Lines file of jobs, shared out over ranks, each output written once.

``audioldm-tiled batch jobs.jsonl --out-dir DIR`` runs alone, under ``torchrun --nproc_per_node N`` or under
``srun``. Every rank reads the same jobs and computes the same assignment (longest first, each to the rank with the
least work so far), so no process group is needed. Each output WAV is written atomically with a JSON sidecar; a rerun
skips the jobs whose sidecar says they are done, so a crashed or pre-empted run resumes where it stopped. A job's
output depends only on the job: its seed goes to a CPU generator, whichever rank runs it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import MODES
from .constants import COMMAND_SECONDS, MAX_SEED
from .files import atomic_file, name_problem

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"
# A job that leaves `steps` to the model counts this many in its cost (the ranks are shared out before the model,
# and with it the family's default, is loaded).
COST_STEPS_WHEN_UNSET = 10


class JobError(ValueError):
    """A line of the jobs file that is not a valid job; the message names the file, the line and the field."""


@dataclass(frozen=True)
class BatchJob:
    """One render. ``seed`` defaults to a hash of ``output``, so it does not depend on the order of the file."""

    output: str
    prompt: str | None = None
    timeline: list | None = None
    seconds: float | None = None
    seed: int | None = None
    steps: int | None = None  # None: the model's default (AudioLDM 10, AudioLDM 2 and MusicLDM 200)
    guidance: float | None = None  # None: the model's default (AudioLDM 2.5, AudioLDM 2 3.5, MusicLDM 2.0)
    negative_prompt: str | None = None
    mode: str = "exact"
    input: str | None = None
    strength: float | None = None
    line: int = field(default=0, compare=False)

    @property
    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else zlib.crc32(self.output.encode())

    @property
    def cost(self) -> float:
        """Relative work: seconds of audio times denoising steps (an input's length is read when known)."""
        from .request import source_seconds

        seconds = self.seconds or (self.input and source_seconds(self.input, None)) or COMMAND_SECONDS
        return seconds * (self.steps or COST_STEPS_WHEN_UNSET)

    def request(self, tiling=None):
        """The render this job asks for (``tiling``: the batch's settings, with the job's mode)."""
        import torch

        from .config import TilingConfig
        from .request import Request

        prompt = self.prompt if self.timeline is None else [tuple(s) if isinstance(s, list) else s
                                                            for s in self.timeline]
        return Request.for_command_line(
            prompt=prompt, audio_length_in_s=self.seconds, audio=self.input, strength=self.strength,
            negative_prompt=self.negative_prompt, num_inference_steps=self.steps, guidance_scale=self.guidance,
            generator=torch.Generator("cpu").manual_seed(self.resolved_seed),
            tiling=(tiling or TilingConfig()).replace(mode=self.mode))

    def given(self) -> dict[str, Any]:
        """The job as the file gave it, every field (None where unset): what a rerun compares."""
        return {k: v for k, v in asdict(self).items() if k != "line"}

    def settings(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "line"}
        out["seed"] = self.resolved_seed
        return out


FIELDS = {f for f in BatchJob.__dataclass_fields__ if f != "line"}
# A job's field for each call argument, in the request's messages.
JOB_FIELDS = {"audio_length_in_s": "seconds", "audio": "input", "strength": "strength",
              "num_inference_steps": "steps", "guidance_scale": "guidance", "negative_prompt": "negative_prompt"}


def _number(value: Any, what: str, low: float, *, integer: bool = False, allow_low: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) and \
        math.isfinite(value) and (value >= low if allow_low else value > low)
    if not ok:
        raise ValueError(f"{what} must be {kind} {'>=' if allow_low else '>'} {low:g}, got {value!r}")


def parse_job(data: Any, line: int = 0) -> BatchJob:
    """A BatchJob from one decoded JSON object; ValueError names the field and what is allowed."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; allowed: {sorted(FIELDS)}")
    output = data.get("output")
    if not isinstance(output, str) or not output.endswith(".wav") or os.path.isabs(output) or \
            ".." in Path(output).parts or output.strip() != output or Path(output).name.startswith(".") or \
            "\0" in output:
        raise ValueError(f"'output' must be a relative .wav file name inside the output folder, not hidden, got "
                         f"{output!r}")
    if ("prompt" in data) == ("timeline" in data):
        raise ValueError("give exactly one of 'prompt' and 'timeline'")
    if "prompt" in data and not (isinstance(data["prompt"], str) and data["prompt"].strip()):
        raise ValueError(f"'prompt' must be a non-empty string, got {data['prompt']!r}")
    if "timeline" in data and not isinstance(data["timeline"], list):
        raise ValueError("'timeline' must be a list of [start_s, text] or [start_s, end_s, text]")
    if data.get("seed") is not None:
        _number(data["seed"], "'seed'", 0, integer=True, allow_low=True)
        if data["seed"] > MAX_SEED:
            raise ValueError(f"'seed' must be at most {MAX_SEED}, got {data['seed']}")
    if data.get("mode", "exact") not in MODES:
        raise ValueError(f"'mode' must be one of {MODES}, got {data['mode']!r}")
    if data.get("input") is not None and not isinstance(data["input"], str):
        raise ValueError(f"'input' must be a file path, got {data['input']!r}")
    if data.get("negative_prompt") is not None and not isinstance(data["negative_prompt"], str):
        raise ValueError(f"'negative_prompt' must be a string, got {data['negative_prompt']!r}")
    job = BatchJob(**data, line=line)
    try:
        job.request()  # the request's own rules (lengths, strength, timeline), before any model is loaded
    except ValueError as error:
        message = str(error)
        for argument, name in JOB_FIELDS.items():
            message = message.replace(f"`{argument}`", f"'{name}'")
        raise ValueError(message) from None
    return job


# Longer lines are not jobs: reading stops there instead of filling memory (a jobs file of /dev/zero).
MAX_LINE_BYTES = 1 << 20


def read_jobs(path: str | os.PathLike) -> list[BatchJob]:
    """The jobs of a JSON Lines file, UTF-8 with or without a byte-order mark (one object per line; blank lines
    and lines starting with # are skipped).

    Raises JobError naming the file, the line and the problem; two jobs writing the same output are refused.
    """
    jobs, seen = [], {}
    with open(path, "rb") as f:
        number = 0
        while line := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(line) > MAX_LINE_BYTES:
                raise JobError(f"{path} line {number}: longer than {MAX_LINE_BYTES} bytes; a job is one JSON object "
                               "on one line")
            try:
                text = line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise JobError(f"{path} line {number}: not UTF-8 text ({error.reason} at byte {error.start})") \
                    from None
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            try:
                job = parse_job(json.loads(text), number)
            except RecursionError:
                raise JobError(f"{path} line {number}: JSON nested too deeply") from None
            except ValueError as error:  # json.JSONDecodeError is a ValueError too
                raise JobError(f"{path} line {number}: {error}") from None
            key = os.path.normpath(job.output)
            if key in seen:
                raise JobError(f"{path} line {number}: output {job.output!r} is already written by line {seen[key]}")
            seen[key] = number
            jobs.append(job)
    if not jobs:
        raise JobError(f"{path}: no jobs (one JSON object per line)")
    return jobs


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


def render_job(pipe, job: BatchJob, out_dir: Path, tiling) -> dict[str, Any]:
    """Render one job into ``out_dir / job.output`` (atomically) and return its timings and length."""
    import soundfile

    from .render import render_to_wav

    target = out_dir / job.output
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    render_to_wav(pipe, target, **job.request(tiling).call_arguments())
    return {"render_s": round(time.perf_counter() - start, 3), "samples": soundfile.info(str(target)).frames}


def run_batch(pipe, jobs: list[BatchJob], out_dir: str | os.PathLike, shard: Shard = Shard(), tiling=None,
              model: str | None = None) -> dict[str, list[str]]:
    """Render this rank's share of ``jobs`` into ``out_dir``; returns the outputs done, skipped and failed.

    ``pipe`` is a tiled pipeline, or a function that loads one, called only once a job needs rendering (a rerun
    of finished jobs loads no model). A job already done (``is_done``) is skipped. A job that fails, for any
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
            model_defaults = loaded["pipe"].parent_defaults()  # what a job without steps or guidance runs with
            loaded["defaults"] = {"steps": model_defaults["num_inference_steps"],
                                  "guidance": model_defaults["guidance_scale"]}
            loaded["versions"] = library_versions()
        return loaded["pipe"]

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
            record.update(settings={**loaded["defaults"], **job.settings()}, versions=loaded["versions"])
            record.update(render_job(current, job, out_dir, tiling), status="done")
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
