"""Benchmarks, run by ``audioldm-tiled bench decode|encode|vocode|stream|generate``: each point in its own process,
so peak RSS is honest.

Not part of the test suite. Components are randomly initialised with the audioldm-s shapes (cost depends only on
shapes). Ratios are taken within one run, against the first variant of the same length. ``stream`` runs the CLI
itself (``random:audioldm-s``, streamed to a WAV) end to end; ``generate`` calls the pipeline windowed and tiled
(memory bounded at any length) or as the parent does (one denoising pass, untiled decode and vocoder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# The first variant of each stage is the reference that errors and ratios are taken against.
VARIANTS = {
    "decode": ("untiled", "exact", "fast", "diffusers"),
    "encode": ("untiled", "exact", "fast", "diffusers"),
    # one-pass is the unmodified SpeechT5HifiGan forward; channels-last is the speed work alone, without chunks
    "vocode": ("one-pass", "channels-last", "chunked"),
    # the CLI's streamed path (VAE mode exact or fast): what memory a long soundscape needs end to end
    "stream": ("fast", "exact"),
    "generate": ("windowed", "single-pass"),
}
DEFAULT_STEPS = {"stream": 2, "generate": 10}
DEFAULT_VARIANTS = {"stream": ("fast",)}  # the others run every variant by default


def _run_decode(variant: str, seconds: float, steps: int):
    import torch
    from diffusers import AutoencoderKL

    from .architectures import ARCHITECTURES
    from .config import TilingConfig
    from .constants import LATENT_FRAMES_PER_SECOND
    from .vae import tiled_decode

    vae = AutoencoderKL(**ARCHITECTURES["audioldm-s"].vae).eval()
    latents = torch.randn(1, 8, int(seconds * LATENT_FRAMES_PER_SECOND), 16)
    start = time.perf_counter()
    if variant == "untiled":
        out = vae.decode(latents).sample
    elif variant == "diffusers":
        vae.enable_tiling()
        out = vae.decode(latents).sample
    else:
        out = tiled_decode(vae, latents, TilingConfig(enabled=True, mode=variant, show_progress=False))
    return out, time.perf_counter() - start


def _run_encode(variant: str, seconds: float, steps: int):
    import torch
    from diffusers import AutoencoderKL

    from .architectures import ARCHITECTURES
    from .config import TilingConfig
    from .constants import MEL_FRAMES_PER_SECOND
    from .vae import tiled_encode

    vae = AutoencoderKL(**ARCHITECTURES["audioldm-s"].vae).eval()
    mel = torch.randn(1, 1, int(seconds * MEL_FRAMES_PER_SECOND), 64) - 4  # around a log-mel's level
    start = time.perf_counter()
    if variant == "untiled":
        out = vae.encode(mel).latent_dist.mean
    elif variant == "diffusers":
        vae.enable_tiling()
        out = vae.encode(mel).latent_dist.mean
    else:
        out = tiled_encode(vae, mel, TilingConfig(enabled=True, mode=variant, show_progress=False)).mean
    return out, time.perf_counter() - start


def _run_vocode(variant: str, seconds: float, steps: int):
    import torch
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    from .architectures import ARCHITECTURES
    from .config import TilingConfig
    from .constants import MEL_FRAMES_PER_SECOND
    from .vocoder import _hifigan_channels_last, chunked_vocode

    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**ARCHITECTURES["audioldm-s"].vocoder)).eval()
    mel = torch.randn(1, int(seconds * MEL_FRAMES_PER_SECOND), 64)
    start = time.perf_counter()
    if variant == "one-pass":
        out = vocoder(mel)
    elif variant == "channels-last":
        out = _hifigan_channels_last(vocoder, mel)
    else:
        out = chunked_vocode(vocoder, mel, TilingConfig(show_progress=False))
    return out, time.perf_counter() - start


def _run_generate(variant: str, seconds: float, steps: int):
    import torch

    from .architectures import random_pipeline
    from .config import TilingConfig

    pipe = random_pipeline("audioldm-s", seed=0)
    pipe.set_progress_bar_config(disable=True)
    windowed = variant == "windowed"  # windows, tiled decode and vocoder; else the parent's single passes
    start = time.perf_counter()
    out = pipe("soft rain on leaves", audio_length_in_s=seconds, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(0), output_type="pt",
               tiling=TilingConfig(windowed=windowed, enabled=windowed, show_progress=False)).audios
    return out, time.perf_counter() - start


def _run_stream(variant: str, seconds: float, steps: int):
    import soundfile
    import torch

    from .cli import main as cli_main

    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "stream.wav")
        start = time.perf_counter()
        code = cli_main(["soft rain on leaves", "--model", "random:audioldm-s", "--seconds", str(seconds), "--steps",
                         str(steps), "--mode", variant, "--quiet", "-o", wav])
        elapsed = time.perf_counter() - start
        if code != 0:
            raise SystemExit(code)
        out = torch.from_numpy(soundfile.read(wav, dtype="float32")[0])
    return out, elapsed


RUNNERS = {"decode": _run_decode, "encode": _run_encode, "vocode": _run_vocode, "stream": _run_stream, "generate": _run_generate}


def _measure(stage: str, variant: str, seconds: float, steps: int, out_path: str) -> None:
    """Child process: build only the measured component (so peak RSS is that stage's), run one variant, save its
    output and timing."""
    import resource

    import torch

    torch.manual_seed(0)
    with torch.inference_mode():
        out, elapsed = RUNNERS[stage](variant, seconds, steps)
    torch.save(out, out_path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(out_path + ".json", "w") as f:
        json.dump({"time_s": elapsed, "peak_rss_bytes": peak, "output_shape": list(out.shape)}, f)


def run_suite(stage: str, lengths: list[float], variants: list[str], steps: int = 0) -> list[dict]:
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            reference = None
            for variant in variants:
                path = os.path.join(tmp, f"{stage}-{variant}-{seconds}.pt")
                code = subprocess.call([sys.executable, "-m", "audioldm_tiled.bench", "--child", stage, variant,
                                        str(seconds), str(steps), path])
                row = {"stage": stage, "variant": variant, "seconds": seconds}
                if steps:
                    row["steps"] = steps
                if code != 0:
                    row["error"] = f"exit status {code} (out of memory?)"
                    rows.append(row)
                    continue
                with open(path + ".json") as f:
                    row.update(json.load(f))
                row["time_per_audio_second"] = row["time_s"] / seconds
                out = torch.load(path).double()
                if reference is None:
                    reference = out
                    row["snr_db"] = float("inf")
                    row["max_abs_err"] = 0.0
                else:
                    err = out - reference
                    row["snr_db"] = float(10 * torch.log10(reference.pow(2).mean() / err.pow(2).mean()))
                    row["max_abs_err"] = float(err.abs().max())
                    row["max_rel_err"] = float(err.abs().max() / reference.abs().max())
                    base = next(r for r in rows if r["seconds"] == seconds and r["variant"] == variants[0])
                    row["time_ratio"] = row["time_s"] / base["time_s"]
                    row["memory_ratio"] = row["peak_rss_bytes"] / base["peak_rss_bytes"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _relative(row: dict) -> str:
    if "max_rel_err" in row:
        return f"{row['max_rel_err']:.1e}"
    return "0" if row["max_abs_err"] == 0 else ""  # rows saved before the field existed


def to_markdown(rows: list[dict]) -> str:
    lines = ["| stage | variant | audio (s) | time (s) | s per audio s | peak RSS (GB) | time / base | memory / base "
             "| SNR vs base (dB) | max abs err | max err / max abs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['stage']} | {r['variant']} | {r['seconds']:g} | {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['stage']} | {r['variant']} | {r['seconds']:g} | {r['time_s']:.1f} | {r['time_s'] / r['seconds']:.2f} "
            f"| {r['peak_rss_bytes'] / 1e9:.2f} | {r.get('time_ratio', 1):.2f} | {r.get('memory_ratio', 1):.2f} "
            f"| {r['snr_db']:.1f} | {r['max_abs_err']:.2e} | {_relative(r)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _measure(argv[1], argv[2], float(argv[3]), int(argv[4]), argv[5])
        return 0
    parser = argparse.ArgumentParser(prog="audioldm-tiled bench", description=__doc__)
    parser.add_argument("stage", choices=sorted(VARIANTS))
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 40, 120])
    parser.add_argument("--variants", nargs="+", default=None, help="first one is the reference")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps for stream/generate (default: stream 2, generate 10)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    variants = args.variants or list(DEFAULT_VARIANTS.get(args.stage, VARIANTS[args.stage]))
    unknown = [v for v in variants if v not in VARIANTS[args.stage]]
    if unknown:
        parser.error(f"--variants for {args.stage} must be among {', '.join(VARIANTS[args.stage])}; got {unknown}")
    steps = args.steps if args.steps is not None else DEFAULT_STEPS.get(args.stage, 0)
    rows = run_suite(args.stage, args.seconds, variants, steps)
    print(to_markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
