"""Latents saved with ``output_type="latent"`` (a .pt file) to a WAV, through the tiled VAE decode and the chunked
vocoder. Denoising and decoding can then run on different machines or at different times, like remote VAE decoding
in diffusers' hybrid inference:

    # on the GPU box
    latents = pipe("rain", audio_length_in_s=300, output_type="latent").audios
    torch.save({"latents": latents.cpu(), "audio_length_in_s": 300}, "rain.pt")
    # anywhere
    python samples/decode_latents.py rain.pt -o rain.wav

The file holds the latents tensor itself, or a dict with "latents" and optionally "audio_length_in_s".
"""

from __future__ import annotations

import argparse
import sys

import torch

from audioldm_tiled import TilingConfig
from audioldm_tiled.audio import open_wav
from audioldm_tiled.files import check_output_path
from audioldm_tiled.loading import DEFAULT_MODEL, load_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("latents", help=".pt file from output_type='latent'")
    parser.add_argument("-o", "--output", required=True, help="output .wav")
    parser.add_argument("--seconds", type=float, default=None, help="trim to this length (default: from the file)")
    parser.add_argument("--mode", choices=("exact", "fast"), default="exact", help="VAE tiling mode")
    parser.add_argument("--float", dest="subtype", action="store_const", const="FLOAT", default="PCM_16",
                        help="write 32-bit float samples instead of 16-bit PCM")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local folder or random:ARCH (its VAE and "
                        "vocoder must be the ones that made the latents)")
    args = parser.parse_args(argv)
    output = check_output_path(args.output)
    saved = torch.load(args.latents, map_location="cpu", weights_only=True)
    latents = saved["latents"] if isinstance(saved, dict) else saved
    seconds = args.seconds if args.seconds is not None else (
        saved.get("audio_length_in_s") if isinstance(saved, dict) else None)
    pipe = load_pipeline(args.model, torch.float32, "cuda" if torch.cuda.is_available() else "cpu")
    with open_wav(output, pipe.vocoder.config.sampling_rate, args.subtype) as wav:
        for piece in pipe.stream_latents(latents, seconds, TilingConfig(mode=args.mode)):
            wav.write(piece[0])
    print(f"{output}: {wav.frames} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
