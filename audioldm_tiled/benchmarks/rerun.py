"""``audioldm-tiled bench rerun``: what a rerun of a finished batch costs, against its number of jobs.

A batch of N jobs is made finished as ``run_batch`` leaves it (each a short WAV with a sidecar saying done for that
job and model), then the ``batch`` command runs again over it in a fresh process: every job is checked and
skipped, no model is loaded. The rows give the wall time of that process and the bytes it wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..arguments import positive_int

MODEL = "random:tiny"
JOB_SECONDS = 0.04  # one latent frame of audio: the WAVs are small, what is measured is the bookkeeping


def make_finished(folder: Path, count: int) -> Path:
    """A jobs file of ``count`` jobs and their finished outputs in ``folder / "out"``; returns the jobs file."""
    import soundfile

    from ..batch import sidecar_path
    from ..batch_jobs import read_jobs

    jobs_file = folder / "jobs.jsonl"
    with open(jobs_file, "w") as f:
        for i in range(count):
            f.write(json.dumps({"output": f"clips/{i // 1000:03d}/{i:06d}.wav", "prompt": f"rain {i}",
                                "seconds": JOB_SECONDS, "steps": 1}) + "\n")
    samples = int(JOB_SECONDS * 16000)
    silence = np.zeros(samples, dtype=np.float32)
    for job in read_jobs(jobs_file):
        wav = folder / "out" / job.output
        wav.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(wav, silence, 16000)
        record = {"job": job.given(), "model": MODEL, "status": "done", "samples": samples}
        sidecar_path(wav).write_text(json.dumps(record))
    return jobs_file


def run_point(count: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs_file = make_finished(folder, count)
        # The child reports its own written bytes (/proc/self/io) after the batch command returns.
        code = ("import sys; from audioldm_tiled.cli import main; status = main(sys.argv[1:]); "
                "print('WCHAR', open('/proc/self/io').read().split('wchar:')[1].split()[0]); sys.exit(status)")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, "batch", str(jobs_file), "--out-dir",
                               str(folder / "out"), "--model", MODEL, "--quiet"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        wall = time.perf_counter() - start
        if done.returncode != 0:
            return {"stage": "rerun", "jobs": count, "error": done.stderr.strip().splitlines()[-1:]}
        written = int(done.stdout.split("WCHAR")[-1].split()[0])
        manifest = json.loads((folder / "out" / "manifest.rank-0-of-1.json").read_text())
        skipped = sum(entry["status"] == "skipped" for entry in manifest["jobs"])
    return {"stage": "rerun", "jobs": count, "skipped": skipped, "time_s": round(wall, 3), "written_bytes": written}


def to_markdown(rows: list[dict]) -> str:
    lines = ["| finished jobs | skipped | rerun time (s) | time per 1000 jobs (s) | bytes written |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['jobs']} | failed: {r['error']} | | | |")
        else:
            lines.append(f"| {r['jobs']} | {r['skipped']} | {r['time_s']:.2f} | {1000 * r['time_s'] / r['jobs']:.3f} "
                         f"| {r['written_bytes']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audioldm-tiled bench rerun", description=__doc__)
    parser.add_argument("--jobs", type=positive_int("--jobs"), nargs="+", default=[1000, 10000])
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    from .runner import check_json_path

    check_json_path(parser, args.json)
    rows = [run_point(count) for count in args.jobs]
    print(to_markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if any("error" in r for r in rows) else 0
