"""A batch's jobs: a JSON Lines file read and checked line by line before any model is loaded, each line one
``BatchJob`` that becomes one ``Request`` and one delivered file (format, rate and loudness its own)."""

from __future__ import annotations

import json
import os
import unicodedata
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import MODES
from .constants import COMMAND_SECONDS

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
    format: str | None = None  # None: from the output's extension (wav, flac, ogg, opus, mp3)
    sample_format: str | None = None  # WAV and FLAC: "16" (default), "24", or "float" (WAV)
    sample_rate: int | None = None  # None: the model's
    loudness: float | None = None  # LUFS target
    true_peak: float | None = None  # dBTP limit of a loudness target (default -1)
    upsample: bool | None = None  # true: delivered at 48 kHz, super-resolved by the batch's AudioSR model
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
        from .config import TilingConfig
        from .request import Request

        prompt = self.prompt if self.timeline is None else [tuple(s) if isinstance(s, list) else s
                                                            for s in self.timeline]
        return Request.for_command_line(
            prompt=prompt, audio_length_in_s=self.seconds, audio=self.input, strength=self.strength,
            negative_prompt=self.negative_prompt, num_inference_steps=self.steps, guidance_scale=self.guidance,
            seed=self.resolved_seed,
            tiling=(tiling or TilingConfig()).replace(mode=self.mode))

    def delivery(self) -> dict[str, Any]:
        """``render_to_file``'s arguments for this job's file."""
        from .arguments import SAMPLE_FORMATS

        subtype = None if self.sample_format is None else SAMPLE_FORMATS.get(self.sample_format, self.sample_format)
        return dict(format=self.format, subtype=subtype, sample_rate=self.sample_rate, loudness=self.loudness,
                    true_peak=self.true_peak)

    def given(self) -> dict[str, Any]:
        """The job as the file gave it, every field (None where unset): what a rerun compares."""
        return {k: v for k, v in asdict(self).items() if k != "line"}

    def settings(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "line"}
        out["seed"] = self.resolved_seed
        return out


FIELDS = {f for f in BatchJob.__dataclass_fields__ if f != "line"}
# A job's field for each call argument, in the messages of the request and of the file sink.
JOB_FIELDS = {"audio_length_in_s": "'seconds'", "audio": "'input'", "strength": "'strength'",
              "num_inference_steps": "'steps'", "guidance_scale": "'guidance'", "negative_prompt": "'negative_prompt'",
              "seed": "'seed'", "prompt": "'prompt'", "format": "'format'", "subtype": "'sample_format'",
              "sample_rate": "'sample_rate'", "loudness": "'loudness'", "true_peak": "'true_peak'"}


def parse_job(data: Any, line: int = 0) -> BatchJob:
    """A BatchJob from one decoded JSON object; ValueError names the field and what is allowed."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; allowed: {sorted(FIELDS)}")
    from .formats import FORMATS, check_delivery
    from .request import named_for

    output = data.get("output")
    if not isinstance(output, str) or Path(output).suffix.lower().lstrip(".") not in FORMATS or \
            os.path.isabs(output) or ".." in Path(output).parts or output.strip() != output or \
            Path(output).name.startswith(".") or "\0" in output:
        raise ValueError(f"'output' must be a relative file name inside the output folder, not hidden, ending in "
                         f"{', '.join('.' + key for key in FORMATS)} (in any case), got {output!r}")
    if ("prompt" in data) == ("timeline" in data):
        raise ValueError("give exactly one of 'prompt' and 'timeline'")
    if "prompt" in data and not isinstance(data["prompt"], str):
        raise ValueError(f"'prompt' must be a string, got {data['prompt']!r}")
    if "timeline" in data and not isinstance(data["timeline"], list):
        raise ValueError("'timeline' must be a list of [start_s, text] or [start_s, end_s, text]")
    if data.get("mode", "exact") not in MODES:
        raise ValueError(f"'mode' must be one of {MODES}, got {data['mode']!r}")
    if data.get("input") is not None and not isinstance(data["input"], str):
        raise ValueError(f"'input' must be a file path, got {data['input']!r}")
    if data.get("negative_prompt") is not None and not isinstance(data["negative_prompt"], str):
        raise ValueError(f"'negative_prompt' must be a string, got {data['negative_prompt']!r}")
    if data.get("sample_format") not in (None, "16", "24", "float"):
        raise ValueError(f"'sample_format' must be \"16\", \"24\" or \"float\", got {data['sample_format']!r}")
    if data.get("upsample") not in (None, True, False):
        raise ValueError(f"'upsample' must be true or false, got {data['upsample']!r}")
    job = BatchJob(**data, line=line)
    try:  # the request's own rules (lengths, strength, timeline, seed) and the file's, before any model is loaded
        job.request()
        check_delivery(output, **job.delivery())
    except ValueError as error:
        raise ValueError(named_for(error, JOB_FIELDS)) from None
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
            # One name, however its characters are composed (macOS writes NFD, most editors NFC): one file.
            key = unicodedata.normalize("NFC", os.path.normpath(job.output))
            if key in seen:
                raise JobError(f"{path} line {number}: output {job.output!r} is already written by line {seen[key]}")
            seen[key] = number
            jobs.append(job)
    if not jobs:
        raise JobError(f"{path}: no jobs (one JSON object per line)")
    return jobs
