"""How much each stage loses in half precision: SNR of the VAE decode and the vocoder in bfloat16 (and float16 with
``--fp16``) against float32, on audioldm-s shapes with random weights.

    python docs/experiments/half_precision.py --mel-frames 200 --latent-frames 50

The vocoder is first rescaled to a trained one's activation scale (``unit_scale_activations``): random HiFi-GAN
weights shrink the signal to ~1e-9, which float16 flushes to zero. Each row is printed as soon as it is measured.
Half-precision convolutions are slow on most CPUs; keep the lengths short there.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from diffusers import AutoencoderKL
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from audioldm_tiled.benchmarks.stages import unit_scale_activations
from audioldm_tiled.testing.architectures import ARCHITECTURES


def snr_db(actual: torch.Tensor, reference: torch.Tensor) -> float:
    actual, reference = actual.double(), reference.double()
    return float(10 * torch.log10(reference.pow(2).mean() / (actual - reference).pow(2).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mel-frames", type=int, default=200, help="vocoder input, 100 per second")
    parser.add_argument("--latent-frames", type=int, default=50, help="VAE input, 25 per second")
    parser.add_argument("--fp16", action="store_true", help="float16 too (very slow on most CPUs)")
    args = parser.parse_args()
    dtypes = [torch.bfloat16] + ([torch.float16] if args.fp16 else [])
    spec = ARCHITECTURES["audioldm-s"]
    torch.manual_seed(0)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**spec.vocoder)).eval()
    vae = AutoencoderKL(**spec.vae).eval()
    mel = torch.randn(1, args.mel_frames, 64, generator=torch.Generator().manual_seed(0)) * 2 - 5
    latents = torch.randn(1, 8, args.latent_frames, 16, generator=torch.Generator().manual_seed(1))
    unit_scale_activations(vocoder, mel)
    with torch.no_grad():
        wave, decoded = vocoder(mel), vae.decode(latents).sample
        for dtype in dtypes:
            name = str(dtype).split(".")[-1]
            start = time.perf_counter()
            out = vocoder.to(dtype)(mel.to(dtype)).float()
            vocoder.float()
            print(json.dumps({"stage": "vocoder", "dtype": name, "snr_db": snr_db(out, wave),
                              "snr_db_of_rounding_the_input_alone": snr_db(vocoder(mel.to(dtype).float()), wave),
                              "seconds": time.perf_counter() - start}), flush=True)
            start = time.perf_counter()
            out = vae.to(dtype).decode(latents.to(dtype)).sample.float()
            vae.float()
            print(json.dumps({"stage": "vae decode", "dtype": name, "snr_db": snr_db(out, decoded),
                              "seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
