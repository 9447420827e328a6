"""``audioldm-tiled upsample IN -o OUT`` (any audio to 48 kHz with AudioSR) and ``audioldm-tiled convert audiosr
CKPT OUT/`` (the original checkpoint into a folder that ``from_pretrained`` loads)."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np

from ..arguments import CliError, device_name, resolve_device, resolve_dtype
from ..constants import DTYPES, UPSAMPLE_MODEL
from .components import ARCHITECTURES, SAMPLE_RATE

logger = logging.getLogger("audioldm_tiled.cli")
DEFAULT_MODEL = UPSAMPLE_MODEL
MIN_SECONDS = 0.01  # one frame of the 48 kHz mel: shorter input has nothing to super-resolve


def upsample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioldm-tiled upsample",
        description="Super-resolve a recording to 48 kHz with AudioSR: any format soundfile reads, any rate; each "
        "channel on its own.")
    parser.add_argument("input", help="the recording")
    parser.add_argument("-o", "--output", required=True, help="the 48 kHz file (.wav, .flac, .ogg, .opus or .mp3)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"a folder written by 'convert audiosr', or random:audiosr / random:audiosr-tiny for "
                        f"random weights (default {DEFAULT_MODEL})")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--guidance", type=float, default=3.5, help="guidance scale (default 3.5)")
    parser.add_argument("--seed", type=int, default=0, help="the noise and the low-pass filter's type (default 0)")
    parser.add_argument("--mode", choices=("exact", "fast"), default="exact",
                        help="VAE tiling: exact equals one pass, and its attention over the whole recording grows "
                        "with the square of the length; fast estimates the statistics once (default exact)")
    parser.add_argument("--keep-level", action="store_true",
                        help="keep the recording's level (AudioSR scales every output's peak to 0.5 otherwise)")
    parser.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES), help="auto: fp16 on CUDA, else fp32")
    parser.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def check_recording(path: str) -> tuple[int, int, int]:
    """(rate, channels, frames) of the audio file ``path``, checked before any model loads: audio, a rate, long
    enough, finite (read through once, in blocks)."""
    import soundfile as sf

    try:
        info = sf.info(path)
        if info.frames > 0 and info.samplerate >= 1000:
            for block in sf.blocks(path, blocksize=1 << 18, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    raise CliError(f"{path}: holds NaN or infinite samples")
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise CliError(f"{path}: not audio that soundfile reads ({error})") from None
    if info.samplerate < 1000:
        raise CliError(f"{path}: a sample rate of {info.samplerate} Hz is not audio this model takes (1 kHz at the "
                       "least)")
    if info.frames < math.ceil(MIN_SECONDS * info.samplerate):
        raise CliError(f"{path}: {info.frames} samples; AudioSR needs {MIN_SECONDS * 1000:g} ms at the least")
    return int(info.samplerate), int(info.channels), int(info.frames)


def write_pieces(pieces, path: str, channels: int, overwrite: bool = True) -> int:
    """The 48 kHz ``pieces`` (channels, samples) into the file ``path`` (its extension names the format), which
    appears whole or not at all; the frames written."""
    import soundfile as sf

    from ..files import atomic_file
    from ..formats import FORMATS, file_format

    key, subtype = file_format(path)
    frames = 0
    with atomic_file(path, overwrite=overwrite) as tmp, sf.SoundFile(
            tmp, "w", SAMPLE_RATE, channels, format=FORMATS[key].name, subtype=subtype) as file:
        for piece in pieces:
            file.write(piece.T)
            frames += piece.shape[1]
    return frames


def upsample(args: argparse.Namespace) -> int:
    import torch

    from ..files import check_output_path
    from ..formats import FORMATS, check_sample_rate, file_format

    if args.steps < 1:
        raise CliError(f"--steps must be a positive integer, got {args.steps}")
    if not math.isfinite(args.guidance):
        raise CliError(f"--guidance must be a finite number, got {args.guidance}")
    key, _ = file_format(args.output)
    check_sample_rate(key, SAMPLE_RATE, "the output's rate")
    rate, channels, frames = check_recording(args.input)
    seconds = frames / rate
    size = int(seconds * SAMPLE_RATE * channels * FORMATS[key].bytes_per_sample) + (1 << 16)
    check_output_path(args.output, overwrite=not args.no_overwrite, suffix=None, size=size)
    device = resolve_device(args.device)
    pipe = load_upsampler(args.model, resolve_dtype(args.dtype, device), device, "--model", args.quiet)
    from ..config import TilingConfig

    pieces = pipe.upsampled(args.input, num_inference_steps=args.steps, guidance_scale=args.guidance,
                            seed=args.seed, generator=torch.Generator().manual_seed(args.seed),
                            tiling=TilingConfig(mode=args.mode, show_progress=not args.quiet),
                            keep_level=args.keep_level)
    written = write_pieces(pieces, args.output, channels, overwrite=not args.no_overwrite)
    logger.info("wrote %s (%.2f s, %d channel(s), 48 kHz)", args.output, written / SAMPLE_RATE, channels)
    return 0


def load_upsampler(model: str, dtype, device, option: str, quiet: bool = False):
    """The AudioSR pipeline ``model`` names, on ``device``; a ``CliError`` naming ``option`` where it does not load
    or is another kind of model."""
    from ..loading import ModelLoadError, load_pipeline

    try:
        pipe = load_pipeline(model, dtype, device)
    except ModelLoadError as error:
        raise CliError(f"{option}: {error}") from None
    if type(pipe).__name__ != "AudioSRTiledPipeline":
        raise CliError(f"{option}: {model} is a {type(pipe).__name__}, not an AudioSR model")
    pipe.set_progress_bar_config(disable=quiet, desc="AudioSR denoising")
    return pipe


def load_upsampling(model: str, steps: int | None, dtype, device, option: str, quiet: bool = False):
    """What the render functions' ``upsample=`` takes: ``load_upsampler``'s pipeline with AudioSR's ``steps`` (its
    own default when None)."""
    from ..constants import UPSAMPLE_STEPS
    from .sink import Upsampling

    return Upsampling(load_upsampler(model, dtype, device, option, quiet), steps or UPSAMPLE_STEPS)


def convert_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioldm-tiled convert audiosr",
        description="Convert AudioSR's original checkpoint (the file the audiosr package loads, e.g. "
        "haoheliu/audiosr_basic's pytorch_model.bin) into a folder that from_pretrained and --model load.")
    parser.add_argument("checkpoint", help="the original checkpoint file")
    parser.add_argument("output", help="the folder to write (must not exist)")
    parser.add_argument("--arch", default="audiosr", choices=sorted(ARCHITECTURES),
                        help="the checkpoint's layout: audiosr (the public checkpoints) or audiosr-tiny")
    return parser


def convert(args: argparse.Namespace) -> int:
    import torch

    from .convert import convert_state_dict
    from .pipeline import AudioSRTiledPipeline

    if not Path(args.checkpoint).is_file():
        raise CliError(f"{args.checkpoint}: no such checkpoint file")
    if Path(args.output).exists():
        raise CliError(f"{args.output} exists; the converted folder is written to a new path")
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    AudioSRTiledPipeline(**convert_state_dict(state, args.arch)).save_pretrained(args.output)
    logger.info("wrote %s", args.output)
    return 0


def main(argv: list[str]) -> int:
    """``upsample ...`` or ``convert audiosr ...``."""
    if argv[0] == "upsample":
        return upsample(upsample_parser().parse_args(argv[1:]))
    if argv[1:2] != ["audiosr"]:
        raise CliError("convert takes the model family first: audioldm-tiled convert audiosr CKPT OUT/")
    return convert(convert_parser().parse_args(argv[2:]))
