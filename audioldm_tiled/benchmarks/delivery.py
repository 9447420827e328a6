"""``audioldm-tiled bench delivery``: what delivering a render costs: a long waveform written through the file sink
as WAV, FLAC, Ogg Vorbis, MP3 or Opus, at the model's 16 kHz or resampled to 48 kHz, with and without a loudness
target, each in its own process (its peak memory its own), against WAV at 16 kHz; and, in the same run, the render
it would deliver (the command line's path, audioldm-s shapes), so that each sink's time is a share of a render's.

The waveform is Gaussian noise under a slowly varying level, handed to the sink in 1 s pieces as the engine hands
them out: the hardest case for FLAC's and the lossy encoders' compression, and loud enough for every loudness
measure (a random-weight model's output is too quiet to measure)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

# variant: (extension, sample rate or None for the model's, loudness target or None)
VARIANTS = {
    "wav-16k": ("wav", None, None),
    "flac-16k": ("flac", None, None),
    "ogg-16k": ("ogg", None, None),
    "mp3-16k": ("mp3", None, None),
    "wav-48k": ("wav", 48000, None),
    "flac-48k": ("flac", 48000, None),
    "ogg-48k": ("ogg", 48000, None),
    "mp3-48k": ("mp3", 48000, None),
    "opus-48k": ("opus", 48000, None),
    "wav-16k-loudness": ("wav", None, -16.0),
    "flac-48k-loudness": ("flac", 48000, -16.0),
    "mp3-48k-loudness": ("mp3", 48000, -16.0),
}
MODEL_RATE = 16000
PIECE_SECONDS = 1.0


def noise_pieces(seconds: float, rate: int = MODEL_RATE, seed: int = 0):
    """The benchmark's waveform, piece by piece (1, samples), made as it is asked for."""
    import numpy as np

    rng = np.random.default_rng(seed)
    total, step = int(seconds * rate), int(PIECE_SECONDS * rate)
    for start in range(0, total, step):
        n = min(step, total - start)
        level = 0.05 * (1.5 + np.sin(2 * np.pi * (start + np.arange(n)) / rate / 37.0))
        yield (level * rng.standard_normal(n)).astype(np.float32)[None]


def deliver_point(variant: str, seconds: float, folder: str) -> dict:
    """Child process: write ``seconds`` of the waveform through a ``FileSink``; time the sink's own work only."""
    from ..sinks import FileSink

    extension, rate, loudness = VARIANTS[variant]
    sink = FileSink(os.path.join(folder, f"{variant}.{extension}"), sample_rate=rate, loudness=loudness)
    spent = 0.0
    start = time.perf_counter()
    sink.open(MODEL_RATE, 1, {"prompt": "noise", "seconds": seconds})
    spent += time.perf_counter() - start
    for piece in noise_pieces(seconds):
        start = time.perf_counter()
        sink.write(piece)
        spent += time.perf_counter() - start
    start = time.perf_counter()
    delivered = sink.commit()
    spent += time.perf_counter() - start
    return {"variant": variant, "seconds": seconds, "time_s": round(spent, 3),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "bytes": os.path.getsize(delivered.path), **delivered.report()}


def render_point(seconds: float, steps: int) -> dict:
    """Child process: the render a file delivers, as ``bench stream`` measures it (audioldm-s shapes, fast mode)."""
    import torch

    from ..config import TilingConfig
    from ..request import Request
    from ..sinks import ArraySink
    from ..testing.architectures import random_pipeline

    pipe = random_pipeline("audioldm-s")
    pipe.set_progress_bar_config(disable=True)
    request = Request(prompt="rain on a tin roof", audio_length_in_s=seconds, num_inference_steps=steps, seed=0,
                      tiling=TilingConfig(mode="fast"))
    start = time.perf_counter()
    with torch.inference_mode():
        pipe.render(request, ArraySink())
    elapsed = time.perf_counter() - start
    return {"variant": "render", "seconds": seconds, "steps": steps, "time_s": round(elapsed, 3),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _child(argv: list[str]) -> dict:
    return json.loads(subprocess.run([sys.executable, "-m", "audioldm_tiled.benchmarks.delivery", "--child",
                                      *argv], check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def run(lengths: list[float], variants: list[str], render_seconds: float, steps: int) -> list[dict]:
    """Every point in its own process; each sink's time against WAV at 16 kHz of the same length, and as a share of
    the render's time per audio second (measured once, at ``render_seconds``)."""
    from .runner import environment

    rows = []
    render = None
    if render_seconds:
        render = _child(["render", str(render_seconds), str(steps)])
        render["time_per_audio_s"] = render["time_s"] / render_seconds
        rows.append(render)
    with tempfile.TemporaryDirectory() as folder:
        for seconds in lengths:
            reference = None
            for variant in variants:
                row = _child([variant, str(seconds), folder])
                reference = reference or row
                row["time_vs_wav_16k"] = round(row["time_s"] / reference["time_s"], 3)
                if render is not None:
                    row["share_of_render"] = round(row["time_s"] / (render["time_per_audio_s"] * seconds), 4)
                rows.append(row)
                for name in os.listdir(folder):
                    os.unlink(os.path.join(folder, name))
    machine = environment()
    return [{**row, **machine} for row in rows]


def to_markdown(rows: list[dict]) -> str:
    lines = ["| variant | seconds | time (s) | peak RSS (GB) | file (MB) | vs wav-16k | share of render | LUFS | "
             "true peak (dBTP) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lufs = r.get("integrated_lufs")
        peak = r.get("true_peak_dbtp")
        lines.append(f"| {r['variant']} | {r['seconds']:g} | {r['time_s']:.2f} | {r['peak_rss_bytes'] / 1e9:.3f} | "
                     f"{r['bytes'] / 1e6:.1f} | {r.get('time_vs_wav_16k', '')} | {r.get('share_of_render', '')} | "
                     f"{'' if lufs is None else f'{lufs:.2f}'} | {'' if peak is None else f'{peak:.2f}'} |"
                     if "bytes" in r else
                     f"| render ({r['steps']} steps) | {r['seconds']:g} | {r['time_s']:.1f} | "
                     f"{r['peak_rss_bytes'] / 1e9:.3f} | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, seconds, rest = argv[1], float(argv[2]), argv[3]
        row = render_point(seconds, int(rest)) if kind == "render" else deliver_point(kind, seconds, rest)
        print(json.dumps(row))
        return 0
    from ..arguments import positive_int, positive_number

    parser = argparse.ArgumentParser(prog="audioldm-tiled bench delivery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=positive_number("--seconds", "seconds"), nargs="+", default=[600])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="the first is the reference (default: all, wav-16k first)")
    parser.add_argument("--render-seconds", type=positive_number("--render-seconds", "seconds", allow_zero=True),
                        default=60.0, help="length of the reference render (0: none), default 60")
    parser.add_argument("--steps", type=positive_int("--steps"), default=2, help="the render's steps (default 2)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = run(args.seconds, args.variants, args.render_seconds, args.steps)
    print(to_markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
