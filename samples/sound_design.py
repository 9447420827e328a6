"""Three sound-design edits, each written as a WAV with a spectrogram that marks the regions:

    python samples/sound_design.py --out-dir edits [--loop-seconds 120] [--extend 300] [--span 130:145]

- ``loop.wav``: a seamless loop of ``--loop-seconds``, and ``loop-three-times.wav``, the loop played three times in
  a row (the wraps are marked on its spectrogram: nothing should show there);
- ``continued.wav``: ``--input`` (or the loop, if none is given) made ``--extend`` seconds longer; the junction is
  marked;
- ``regenerated.wav``: ``--span`` of that recording remade with ``--span-prompt``; the span is marked, and outside
  it the samples are the input's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from audioldm_tiled import TilingConfig
from audioldm_tiled.audio import load_audio, save_wav
from audioldm_tiled.loading import DEFAULT_MODEL, load_pipeline
from audioldm_tiled.plots import save_spectrogram

RATE = 16_000


def span(text: str) -> tuple[float, float]:
    start, _, end = text.partition(":")
    return float(start), float(end)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, help="folder for the WAVs and spectrograms")
    parser.add_argument("--prompt", default="rain on a tin roof, distant thunder")
    parser.add_argument("--loop-seconds", type=float, default=120.0)
    parser.add_argument("--input", default=None, help="recording to continue and repair (default: the loop)")
    parser.add_argument("--extend", type=float, default=60.0, help="seconds to add to the recording")
    parser.add_argument("--span", type=span, default=(30.0, 45.0), help="START:END of the recording to remake")
    parser.add_argument("--span-prompt", default="steady rain, no thunder")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local folder or random:ARCH")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model, torch.float32, "cuda" if torch.cuda.is_available() else "cpu")
    call = dict(num_inference_steps=args.steps, tiling=TilingConfig(mode="exact"))

    def seeded():
        return torch.Generator().manual_seed(args.seed)

    loop = pipe(args.prompt, audio_length_in_s=args.loop_seconds, loop=True, generator=seeded(), **call).audios[0]
    save_wav(out / "loop.wav", loop)
    period = len(loop) / RATE
    save_wav(out / "loop-three-times.wav", np.tile(loop, 3))
    save_spectrogram(out / "loop-three-times.png", np.tile(loop, 3), boundaries={"wrap": [period, 2 * period]},
                     title="the loop played three times: the wraps are marked")
    print(f"{out / 'loop.wav'}: {period:g} s, and three times in a row")

    recording = load_audio(args.input, RATE) if args.input else loop
    longer = pipe(args.prompt, audio=recording, extend_s=args.extend, generator=seeded(), **call).audios[0]
    save_wav(out / "continued.wav", longer)
    junction = len(recording) / RATE
    save_spectrogram(out / "continued.png", longer, boundaries={"input ends": [junction]},
                     title=f"the recording, then {args.extend:g} s more")
    print(f"{out / 'continued.wav'}: {junction:g} s of input + {args.extend:g} s")

    start, end = args.span
    fixed = pipe(args.span_prompt, audio=recording, regenerate=(start, end), generator=seeded(), **call).audios[0]
    save_wav(out / "regenerated.wav", fixed)
    outside = np.ones(len(recording), dtype=bool)
    outside[int(start * RATE) : int(end * RATE)] = False
    kept = np.array_equal(fixed[outside], recording[outside])
    save_spectrogram(out / "regenerated.png", fixed, boundaries={"regenerated span": [start, end]},
                     title=f"{start:g}-{end:g} s remade with '{args.span_prompt}'")
    print(f"{out / 'regenerated.wav'}: {start:g}-{end:g} s remade; the input's samples kept elsewhere: {kept}")
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(main())
