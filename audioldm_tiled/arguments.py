"""What the command lines share: argparse types whose errors name the option and what it takes, the one-line
user error, the device and dtype, and the prompt or timeline from PROMPT, --at and --timeline."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

from .constants import DTYPES, MAX_SEED


def positive_number(option: str, unit: str, allow_zero: bool = False) -> Callable[[str], float]:
    """An argparse type for a positive (or with ``allow_zero``, non-negative) finite number of ``unit``, its errors
    naming ``option``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a number of {unit}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            kind = "non-negative" if allow_zero else "positive"
            raise argparse.ArgumentTypeError(f"{option} must be a {kind} finite number, got {text!r}")
        return value

    return parse


def positive_int(option: str) -> Callable[[str], int]:
    """An argparse type for an integer >= 1, its errors naming ``option``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be a positive integer, got {text!r}")
        return value

    return parse


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def seed(text: str) -> int:
    """--seed, by the request's rule (``request.check_seed``)."""
    from .request import check_seed

    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {text!r}") from None


def timeline_segment(text: str) -> tuple[float, str]:
    start, _, prompt = text.partition(":")
    try:
        return float(start), prompt.strip()
    except ValueError:
        raise argparse.ArgumentTypeError(f"--at takes START:TEXT with START in seconds, e.g. 120:thunderstorm; "
                                         f"got {text!r}") from None


def device_name(text: str) -> str:
    """--device's spelling, checked while parsing (availability is checked once torch is loaded)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def resolve_device(name: str):
    """The device named, checked; "auto" is cuda if available, else mps, else cpu."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CliError(f"--device: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise CliError(f"--device: unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CliError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CliError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device


def resolve_dtype(name: str, device):
    """The dtype named; "auto" is float16 on CUDA (half the memory and time of float32 there) and float32
    elsewhere (half-precision convolutions are slow on CPUs)."""
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise CliError(f"--dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, DTYPES[name])


def prompt_or_timeline(args: argparse.Namespace):
    """The prompt string, or the timeline, from exactly one of PROMPT, --at and --timeline."""
    given = [name for name, value in (("PROMPT", args.prompt), ("--at", args.at), ("--timeline", args.timeline))
             if value]
    if len(given) != 1:
        raise CliError(f"give exactly one of PROMPT, --at or --timeline (got {', '.join(given) or 'none'})")
    if args.prompt:
        return args.prompt
    timeline = args.at
    if args.timeline:
        import json

        try:
            with open(args.timeline, encoding="utf-8-sig") as f:  # with or without a byte-order mark
                timeline = json.load(f)
        except (OSError, ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
            raise CliError(f"--timeline {args.timeline}: cannot read a JSON timeline ({error})") from None
        if not isinstance(timeline, list):
            raise CliError(f"--timeline {args.timeline}: expected a JSON list of [start_s, text] or "
                           f"[start_s, end_s, text], got {type(timeline).__name__}")
    return [tuple(item) if isinstance(item, list) else item for item in timeline]


def add_delivery_options(parser: argparse.ArgumentParser) -> None:
    """The options of the file a render is delivered as: format, sample encoding, rate, loudness."""
    from .formats import FORMATS

    parser.add_argument("--format", choices=tuple(FORMATS), default=None,
                        help="file format (default: from the output's extension)")
    parser.add_argument("--sample-format", choices=("16", "24", "float"), default=None,
                        help="WAV and FLAC samples: 16-bit (default) or 24-bit PCM, or 32-bit float (WAV)")
    parser.add_argument("--float", dest="sample_format", action="store_const", const="float",
                        help="same as --sample-format float")
    parser.add_argument("--sample-rate", type=positive_int("--sample-rate"), default=None, metavar="HZ",
                        help="the file's sample rate, e.g. 44100 or 48000 (default: the model's, 16000); resampled "
                             "with soxr")
    parser.add_argument("--loudness", type=float, default=None, metavar="LUFS",
                        help="normalise to this integrated loudness (ITU-R BS.1770), e.g. -16 (podcast), -14 "
                             "(streaming), -23 (EBU R128 broadcast)")
    parser.add_argument("--true-peak", type=float, default=None, metavar="DBTP",
                        help="with --loudness: the highest true peak allowed (default -1)")


# --sample-format as soundfile's subtypes
SAMPLE_FORMATS = {"16": "PCM_16", "24": "PCM_24", "float": "FLOAT"}


def delivery_options(args: argparse.Namespace) -> dict:
    """``render_to_file``'s arguments from the delivery options."""
    subtype = None if args.sample_format is None else SAMPLE_FORMATS[args.sample_format]
    return dict(format=args.format, subtype=subtype, sample_rate=args.sample_rate, loudness=args.loudness,
                true_peak=args.true_peak, overwrite=not args.no_overwrite)


def check_delivery(path: str, delivery: dict, seconds: float | None, model_rate: int) -> None:
    """The output file can be written as asked (format, encoding, rate, levels, path, free space), before any
    model is loaded."""
    from .sinks import FileSink

    try:
        FileSink(path, **delivery).check(seconds, model_rate)
    except ValueError as error:
        raise as_cli_error(error) from None


def describe_loudness(delivered) -> str:
    """What a delivered file measures, in one phrase."""
    loudness = delivered.loudness
    parts = [f"{delivered.frames / delivered.sample_rate:g} s at {delivered.sample_rate} Hz"]
    if loudness.integrated_lufs is not None:
        parts.append(f"{loudness.integrated_lufs:.1f} LUFS")
    if loudness.true_peak_dbtp is not None:
        parts.append(f"true peak {loudness.true_peak_dbtp:.1f} dBTP")
    return ", ".join(parts)


# The command line's name for each call argument, in the request's messages.
OPTIONS = {"audio_length_in_s": "--seconds", "audio": "--input", "strength": "--strength", "extend_s": "--extend",
           "regenerate": "--regenerate", "context_s": "--context", "crossfade_s": "--crossfade", "loop": "--loop",
           "num_inference_steps": "--steps", "guidance_scale": "--guidance", "negative_prompt": "--negative-prompt",
           "prompt": "PROMPT", "seed": "--seed", "format": "--format", "subtype": "--sample-format",
           "sample_rate": "--sample-rate", "loudness": "--loudness", "true_peak": "--true-peak"}


def as_cli_error(error: ValueError) -> CliError:
    """A request's error with the command line's option names in place of the call's argument names."""
    from .request import named_for

    return CliError(named_for(error, OPTIONS))
