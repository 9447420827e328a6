"""Prompts to WAV files, one per prompt, each with a JSON sidecar of the seed and settings that made it.

    python samples/generate_wav.py "rain on a tin roof" "distant thunder" --seconds 30 --out-dir renders
    python samples/generate_wav.py --prompts-file prompts.txt --model random:tiny --steps 2

A prompts file holds one prompt per line (blank lines and lines starting with # are skipped). Prompt i gets seed
``--seed + i``, so any one render can be redone alone from its sidecar.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from audioldm_tiled import TilingConfig
from audioldm_tiled.files import check_output_path
from audioldm_tiled.loading import DEFAULT_MODEL, load_pipeline
from audioldm_tiled.render import render_to_wav


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file:
        lines = Path(args.prompts_file).read_text().splitlines()
        prompts += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise SystemExit("generate_wav.py: give prompts as arguments or with --prompts-file")
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompts", nargs="*", help="text prompts")
    parser.add_argument("--prompts-file", help="a text file with one prompt per line")
    parser.add_argument("--out-dir", default=".", help="folder for the WAVs and sidecars (default .)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each render (default 10)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    parser.add_argument("--guidance", type=float, default=2.5, help="guidance scale (default 2.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first prompt (default 0)")
    parser.add_argument("--mode", choices=("exact", "fast"), default="exact", help="VAE tiling mode")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local folder or random:ARCH")
    args = parser.parse_args(argv)
    prompts = read_prompts(args)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [check_output_path(out_dir / f"{i:03d}-{slug(p)}.wav") for i, p in enumerate(prompts)]  # before loading
    pipe = load_pipeline(args.model, torch.float32, "cuda" if torch.cuda.is_available() else "cpu")
    for i, (prompt, path) in enumerate(zip(prompts, paths)):
        seed = args.seed + i
        settings = {"prompt": prompt, "seed": seed, "seconds": args.seconds, "steps": args.steps,
                    "guidance": args.guidance, "mode": args.mode, "model": args.model,
                    "sample_rate": pipe.vocoder.config.sampling_rate}
        render_to_wav(pipe, path, prompt, audio_length_in_s=args.seconds, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, generator=torch.Generator().manual_seed(seed),
                      tiling=TilingConfig(mode=args.mode))
        path.with_suffix(".json").write_text(json.dumps(settings, indent=1) + "\n")
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
