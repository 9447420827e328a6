"""A timeline JSON to one long WAV, streamed to disk piece by piece (memory does not grow with the length).

    python samples/timeline_soundscape.py scape.json --seconds 300 -o scape.wav

The timeline is a JSON list of ``[start_s, text]`` or ``[start_s, end_s, text]``, e.g.
``[[0, "light rain"], [120, "thunderstorm"], [240, "birds at dawn"]]``: each denoising window is conditioned on the
text of the segments it covers, so the soundscape crossfades from one to the next.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from audioldm_tiled import TilingConfig
from audioldm_tiled.files import check_output_path
from audioldm_tiled.loading import DEFAULT_MODEL, load_pipeline
from audioldm_tiled.render import render_to_wav
from audioldm_tiled.timeline import parse_timeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("timeline", help="timeline JSON file")
    parser.add_argument("--seconds", type=float, required=True, help="length of the soundscape")
    parser.add_argument("-o", "--output", required=True, help="output .wav")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=("exact", "fast"), default="fast",
                        help="VAE tiling mode (default fast: a long render streams tile by tile)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local folder or random:ARCH")
    args = parser.parse_args(argv)
    output = check_output_path(args.output)
    with open(args.timeline) as f:
        timeline = [tuple(segment) for segment in json.load(f)]
    parse_timeline(timeline, args.seconds)  # a bad timeline fails now, not after loading the model
    pipe = load_pipeline(args.model, torch.float32, "cuda" if torch.cuda.is_available() else "cpu")
    render_to_wav(pipe, output, timeline, audio_length_in_s=args.seconds, num_inference_steps=args.steps,
                  generator=torch.Generator().manual_seed(args.seed), tiling=TilingConfig(mode=args.mode))
    print(f"{output}: {args.seconds:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
