"""Benchmark points, each in its own process so that peak memory is that point's alone.

A point is a stage, a variant and a length. The parent starts ``python -m audioldm_tiled.benchmarks.runner
--stage ... --variant ...`` (every field passed by name), watches its resident memory against an optional limit,
and reads back the output (float32, on the CPU) and a JSON row of timings. Ratios and errors are taken within one
run, against the first variant of the same length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from ..constants import DTYPES

# The first variant of each stage is the reference that errors and ratios are taken against.
VARIANTS = {
    # Under a real allocator limit (--memory-limit, see cap_allocator), enabled="auto": "auto" with the budget it
    # reads from the device, "fallback" with one that wrongly says the untiled decode fits, so that the untiled
    # attempt's out-of-memory error is caught and the decode retried in exact tiles.
    # exact-host and exact-disk: exact mode with its paused tiles in host memory or in temporary files.
    "decode": ("untiled", "exact", "fast", "diffusers", "auto", "fallback", "exact-host", "exact-disk"),
    "encode": ("untiled", "exact", "fast", "diffusers"),
    # one-pass is the unmodified SpeechT5HifiGan forward; channels-last is the speed work alone, without chunks
    "vocode": ("one-pass", "channels-last", "chunked"),
    # the command line's streamed path (VAE mode exact or fast): what memory a long soundscape needs end to end
    "stream": ("fast", "exact", "exact-disk"),
    "generate": ("windowed", "single-pass", "windowed-fast"),
    # denoising only (output_type="latent"), windows per UNet call: what a window costs in memory and time
    "windows": ("batch-1", "batch-2", "batch-4"),
    # a render handed out in pieces: windowed (stream) against progressive (live), and live's first piece alone
    "live": ("windowed", "progressive", "first-piece"),
    # AudioSR to 48 kHz: the command line's streamed path against the original package (benchmarks/audiosr.py)
    # tiled-disk: with exact mode's paused tiles in temporary files, as where memory runs out (flat in the length)
    "audiosr": ("tiled", "tiled-disk", "tiled-fast", "original"),
}
# Stages whose variants make different audio by design (another schedule): timed and measured, not compared.
OTHER_AUDIO = ("live", "audiosr")
DEFAULT_STEPS = {"stream": 2, "generate": 10, "windows": 2, "live": 1, "audiosr": 2}
# the others run every variant by default
DEFAULT_VARIANTS = {"stream": ("fast",), "generate": ("windowed", "single-pass"),
                    "decode": ("untiled", "exact", "fast", "diffusers"), "live": ("windowed", "progressive")}
# A child's exit status for a CUDA out-of-memory error (the parent reports it as out of memory).
CUDA_OUT_OF_MEMORY = 3


@dataclass(frozen=True)
class Point:
    """One measurement: what the parent asks a child process to run."""

    stage: str
    variant: str
    seconds: float
    steps: int
    out_path: str
    device: str = "cpu"
    dtype: str = "fp32"
    memory_limit: int | None = None  # bytes
    model: str = "audioldm-s"  # the random architecture of generate, windows and stream

    def argv(self) -> list[str]:
        """The child's command-line arguments, each field by name."""
        args = []
        for key, value in asdict(self).items():
            if value is not None:
                args += [f"--{key.replace('_', '-')}", str(value)]
        return args

    @classmethod
    def parse(cls, argv: list[str]) -> Point:
        parser = argparse.ArgumentParser(prog="audioldm_tiled.benchmarks.runner")
        parser.add_argument("--stage", required=True, choices=sorted(VARIANTS))
        parser.add_argument("--variant", required=True)
        parser.add_argument("--seconds", required=True, type=float)
        parser.add_argument("--steps", required=True, type=int)
        parser.add_argument("--out-path", required=True)
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
        parser.add_argument("--memory-limit", type=int, default=None)
        parser.add_argument("--model", default="audioldm-s")
        return cls(**vars(parser.parse_args(argv)))


def measure(point: Point) -> None:
    """Child process: build only the measured component (so peak memory is that stage's), run one variant, save its
    output (float32, on the CPU), timing and the library's warnings (a fallback, a float32 retry)."""
    import logging
    import resource

    import torch

    from ..memory import OUT_OF_MEMORY
    from .device import Target
    from .stages import STAGES

    target = Target(point.device, point.dtype, point.memory_limit, point.model)
    cuda = point.device.startswith("cuda")
    torch.manual_seed(0)
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage()[:500])
    logging.getLogger("audioldm_tiled").addHandler(handler)
    try:
        with torch.inference_mode():
            out, elapsed, seams, *extra = STAGES[point.stage](target, point.variant, point.seconds, point.steps)
    except OUT_OF_MEMORY as error:
        print(f"out of memory: {error}", file=sys.stderr)
        sys.exit(CUDA_OUT_OF_MEMORY)
    out = out.float().cpu()
    seam = seam_at(out, seams)
    torch.save(out, point.out_path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = {"time_s": elapsed, "peak_rss_bytes": peak, "output_shape": list(out.shape), "seam": seam,
           "device": torch.cuda.get_device_name(point.device) if cuda else "cpu", "dtype": point.dtype,
           **environment()}
    for fields in extra:  # what a stage measures beyond time, memory and seams
        row.update(fields)
    if warnings:
        row["warnings"] = warnings
    if cuda:
        row["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(point.device)
    with open(point.out_path + ".json", "w") as f:
        json.dump(row, f)


def seam_at(out, seams: list) -> float | None:
    """The seam score (see seams.py) of a stage's output at its boundaries: frames of a (B, C, T, F) output, the
    channels and frequency rows as bands; seconds of a waveform. None without boundaries."""
    import math

    from .seams import audio_seam_score, seam_score

    if not seams:
        return None
    if out.dim() == 4:
        score = seam_score(out[0].transpose(0, 1).flatten(1), seams)
    else:
        score = audio_seam_score(out.reshape(-1).float().numpy(), seams)
    return None if math.isnan(score) else score


def environment() -> dict:
    """What a measurement ran on: machine, library versions, date."""
    import datetime
    import platform

    import diffusers
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {"machine": f"{cpu}, {os.cpu_count()} cores, {memory_gb:.0f} GB", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "date": datetime.date.today().isoformat()}


def _rss(pid: int) -> int:
    from ..memory import process_sizes

    return process_sizes(f"/proc/{pid}").get("VmRSS", 0)


def run_child(point: Point, memory_limit: int | None) -> str | None:
    """Run one measurement in its own process; None on success, else why it failed. With ``memory_limit`` (bytes)
    the child is stopped once its resident memory passes it: what a machine with that much free memory would do."""
    child = subprocess.Popen([sys.executable, "-m", "audioldm_tiled.benchmarks.runner", *point.argv()])
    while child.poll() is None:
        if memory_limit is not None and _rss(child.pid) > memory_limit:
            child.kill()
            child.wait()
            return f"out of memory: passed the {memory_limit / 1e9:.1f} GB limit"
        time.sleep(0.05)
    if child.returncode == 0:
        return None
    if child.returncode == CUDA_OUT_OF_MEMORY:
        return "out of memory (CUDA)"
    return "out of memory (killed)" if child.returncode in (-9, 137) else f"exit status {child.returncode}"


def is_memory_failure(row: dict) -> bool:
    """A point that failed for lack of memory: what a benchmark under --memory-limit measures, not an error."""
    return "error" in row and row["error"].startswith("out of memory")


def run_suite(stage: str, lengths: list[float], variants: list[str], steps: int = 0,
              memory_limit: int | None = None, device: str = "cpu", dtype: str = "fp32",
              model: str = "audioldm-s") -> list[dict]:
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            reference, base = None, None
            for variant in variants:
                path = os.path.join(tmp, f"{stage}-{variant}-{seconds}.pt")
                point = Point(stage, variant, seconds, steps, path, device, dtype, memory_limit, model)
                failure = run_child(point, memory_limit)
                row = {"stage": stage, "variant": variant, "seconds": seconds}
                if model != "audioldm-s":
                    row["model"] = model
                if steps:
                    row["steps"] = steps
                if memory_limit is not None:
                    row["memory_limit_bytes"] = memory_limit
                if failure is not None:
                    row["error"] = failure
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    continue
                with open(path + ".json") as f:
                    row.update(json.load(f))
                row["time_per_audio_second"] = row["time_s"] / seconds
                out = torch.load(path).double()
                compared = stage not in OTHER_AUDIO
                if variant == variants[0]:
                    reference, base = out, row
                    if compared:
                        row["snr_db"] = float("inf")
                        row["max_abs_err"] = 0.0
                elif reference is not None:  # no comparison when the reference itself could not run
                    if compared:
                        err = out - reference
                        row["snr_db"] = float(10 * torch.log10(reference.pow(2).mean() / err.pow(2).mean()))
                        row["max_abs_err"] = float(err.abs().max())
                        row["max_rel_err"] = float(err.abs().max() / reference.abs().max())
                    row["time_ratio"] = row["time_s"] / base["time_s"]
                    key = memory_key(row)  # on a GPU, the device's peak; else the process's
                    row["memory_ratio"] = row[key] / base[key]
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def memory_key(row: dict) -> str:
    return "peak_cuda_bytes" if "peak_cuda_bytes" in row else "peak_rss_bytes"


def _relative(row: dict) -> str:
    if "max_rel_err" in row:
        return f"{row['max_rel_err']:.1e}"
    return "0" if row.get("max_abs_err") == 0 else ""  # rows saved before the field existed


def _ratio(row: dict, key: str) -> float | None:
    """A ratio to the reference; 1 for the reference itself, None where the reference could not run."""
    if key in row:
        return row[key]
    return 1.0 if row.get("snr_db") == float("inf") and "max_rel_err" not in row else None


def _number(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def to_markdown(rows: list[dict]) -> str:
    cuda = any("peak_cuda_bytes" in r for r in rows)
    first = any("first_audio_s" in r for r in rows)
    extra = (" peak CUDA (GB) |" if cuda else "") + (" first audio (s) |" if first else "")
    lines = ["| stage | variant | audio (s) | time (s) | s per audio s | peak RSS (GB) |" + extra + " time / base "
             "| memory / base | SNR vs base (dB) | max abs err | max err / max abs | seam score |",
             "|---|---|---|---|---|---|" + "---|" * (cuda + first) + "---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['stage']} | {r['variant']} | {r['seconds']:g} | {r['error']} |"
                         + " |" * (8 + cuda + first))
            continue
        cuda_cell = f" {_number(r.get('peak_cuda_bytes', None) and r['peak_cuda_bytes'] / 1e9, '.2f')} |" if cuda \
            else ""
        if first:
            cuda_cell += f" {_number(r.get('first_audio_s'), '.1f')} |"
        lines.append(
            f"| {r['stage']} | {r['variant']} | {r['seconds']:g} | {r['time_s']:.1f} "
            f"| {r['time_s'] / r['seconds']:.2f} | {r['peak_rss_bytes'] / 1e9:.2f} |{cuda_cell} "
            f"{_number(_ratio(r, 'time_ratio'), '.2f')} | {_number(_ratio(r, 'memory_ratio'), '.2f')} "
            f"| {_number(r.get('snr_db'), '.1f')} | {_number(r.get('max_abs_err'), '.2e')} | {_relative(r)} "
            f"| {_number(r.get('seam'), '.2f')} |"
        )
    return "\n".join(lines)



if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    measure(Point.parse(sys.argv[1:]))


def check_json_path(parser, path: str | None) -> None:
    """``--json``'s folder must exist and be writable before a benchmark runs, not after."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"--json {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        parser.error(f"--json {path}: folder {folder} is not writable")
