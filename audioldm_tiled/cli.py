"""Command line: ``audioldm-tiled PROMPT --seconds S -o out.wav`` and ``audioldm-tiled bench ...``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .arguments import (
    CliError,
    add_delivery_options,
    as_cli_error,
    check_delivery,
    delivery_options,
    describe_loudness,
    device_name,
    positive_int,
    positive_number,
    prompt_or_timeline,
    resolve_device,
    resolve_dtype,
    seed,
    timeline_segment,
)
from .config import STORES
from .constants import DTYPES, MAX_SEED, UPSAMPLE_MODEL, UPSAMPLE_STEPS, UPSAMPLED_RATE
from .errors import RankFailed
from .loading import DEFAULT_MODEL

logger = logging.getLogger("audioldm_tiled.cli")


def _attach_negative_at(argv: list[str]) -> list[str]:
    """``--at -1:rain`` as ``--at=-1:rain``: argparse would take a value starting with "-" for an option."""
    out = []
    for index, arg in enumerate(argv):
        if index and argv[index - 1] == "--at" and arg.startswith("-") and out and out[-1] == "--at":
            out[-1] = f"--at={arg}"
        else:
            out.append(arg)
    return out


def _span(text: str) -> tuple[float, float]:
    start, _, end = text.partition(":")
    try:
        return float(start), float(end)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--regenerate takes START:END in seconds of the input, e.g. 130:145; "
                                         f"got {text!r}") from None


def generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioldm-tiled",
        description="Generate long audio from a text prompt with AudioLDM; writes a WAV file. "
        "Many renders: audioldm-tiled batch --help. Live, resumable renders: audioldm-tiled live --help. "
        "In the browser: audioldm-tiled studio --help. "
        "Benchmarks: audioldm-tiled bench --help.",
    )
    parser.add_argument("prompt", nargs="?", help="text describing the sound (or a timeline: --at, --timeline)")
    parser.add_argument("--at", action="append", type=timeline_segment, metavar="START:TEXT",
                        help="timeline segment: TEXT from START seconds on, e.g. --at 0:'light rain' "
                        "--at 120:thunderstorm (repeatable)")
    parser.add_argument("--timeline", metavar="FILE.json",
                        help="timeline file: a JSON list of [start_s, text] or [start_s, end_s, text]")
    parser.add_argument("--seconds", type=positive_number("--seconds", "seconds"), default=None,
                        help="length of the audio in seconds (default 10; with --input, the input's length)")
    parser.add_argument("--input", metavar="FILE", default=None,
                        help="audio-to-audio: restyle this recording (any length, any format soundfile reads)")
    parser.add_argument("--strength", type=float, default=None,
                        help="with --input: how far towards noise the input goes, in (0, 1] (default 0.5)")
    parser.add_argument("--extend", type=positive_number("--extend", "seconds"), default=None, metavar="SECONDS",
                        help="with --input: continue the recording by SECONDS; its own samples are kept")
    parser.add_argument("--regenerate", action="append", type=_span, default=None, metavar="START:END",
                        help="with --input: remake this span of the recording, e.g. 130:145 (repeatable); the rest "
                             "keeps its own samples")
    parser.add_argument("--context", type=positive_number("--context", "seconds", allow_zero=True), default=None,
                        metavar="SECONDS",
                        help="with --extend: encode only the input's last SECONDS; with --regenerate: seconds of "
                             "context each side of the spans (default 5.12)")
    parser.add_argument("--crossfade", type=float, default=None, metavar="SECONDS",
                        help="with --extend or --regenerate: each crossfade between original and new (default 0.25)")
    parser.add_argument("--loop", action="store_true",
                        help="make a seamless loop: the end runs on into the start with no click")
    parser.add_argument("-o", "--output", required=True,
                        help="output file: .wav, .flac, .ogg (Vorbis), .opus or .mp3 (or name it with --format)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"hub id, local folder, or random:ARCH for random weights (default {DEFAULT_MODEL})")
    parser.add_argument("--upsample", nargs="?", const=UPSAMPLE_MODEL, default=None, metavar="MODEL",
                        help="deliver at 48 kHz: the render super-resolved by AudioSR once it is whole (MODEL: "
                        f"{UPSAMPLE_MODEL} unless named; a converted folder, or random:audiosr)")
    parser.add_argument("--upsample-steps", type=positive_int("--upsample-steps"), default=None,
                        help=f"with --upsample: AudioSR's DDIM steps (default {UPSAMPLE_STEPS})")
    parser.add_argument("--steps", type=positive_int("--steps"), default=None,
                        help="denoising steps (default: the model's, AudioLDM 10, AudioLDM 2 and MusicLDM 200)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the "
                        "model's, AudioLDM 2.5, AudioLDM 2 3.5, MusicLDM 2.0)")
    parser.add_argument("--seed", type=seed, default=0, help=f"random seed, 0 to {MAX_SEED} (default 0)")
    parser.add_argument("--negative-prompt", default=None, help="what the audio should not contain")
    parser.add_argument("--device", default="auto", type=device_name,
                        help="auto (default: cuda if available, else mps, else cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                        help="auto (default: fp16 on cuda, fp32 elsewhere), fp32, fp16 or bf16")
    parser.add_argument("--mode", choices=("exact", "fast"), default="exact", help="VAE tiling mode (default exact)")
    parser.add_argument("--memory-budget", type=positive_number("--memory-budget", "GB"), default=None, metavar="GB",
                        help="memory to plan tiles and chunks for (default: most of the free memory)")
    parser.add_argument("--tile-frames", type=positive_int("--tile-frames"), default=None, metavar="N",
                        help="latent frames per VAE tile (default: what the memory budget allows); under several "
                             "ranks each decodes its share of the tiles, so tiles of at most the length over the "
                             "rank count give every rank a share")
    parser.add_argument("--store", choices=STORES, default="auto",
                        help="where exact mode keeps the whole sequence's paused tiles: device, host memory or "
                             "disk (default auto: the device when they fit the memory budget)")
    parser.add_argument("--store-dir", metavar="DIR", default=None,
                        help="with the disk store: the directory for its temporary files (default: TMPDIR or /tmp)")
    add_delivery_options(parser)
    parser.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--spectrogram", metavar="FILE.png", default=None,
                        help="also save a log-mel spectrogram of the result, in rows of 60 s (needs matplotlib)")
    parser.add_argument("--mark-seams", action="store_true",
                        help="with --spectrogram: draw the denoising window, VAE tile and vocoder chunk boundaries")
    return parser


def _check_input_file(path: str | None) -> None:
    """--input names a readable audio file with samples (checked before any model is loaded)."""
    if path is None:
        return
    import soundfile

    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "is not a regular file" if os.path.exists(path) else \
            "no such file"
        raise CliError(f"--input {path}: {what}")
    try:
        info = soundfile.info(path)
    except Exception as error:  # noqa: BLE001 - unknown format, unreadable: all "cannot read"
        raise CliError(f"--input {path}: cannot read it as audio ({str(error).splitlines()[0][:200]})") from None
    if info.frames == 0:
        raise CliError(f"--input {path}: the file holds no samples")


def build_request(args: argparse.Namespace, ranks: str | None = None):
    """The request the arguments describe, validated before any model is loaded."""
    from .config import TilingConfig
    from .request import Request

    prompt = prompt_or_timeline(args)
    _check_input_file(args.input)
    if args.memory_budget is not None and int(args.memory_budget * 1e9) < 1:
        raise CliError(f"--memory-budget must be at least 1e-9 GB (one byte), got {args.memory_budget:g}")
    if args.store_dir is not None and not (os.path.isdir(args.store_dir) and os.access(args.store_dir, os.W_OK)):
        raise CliError(f"--store-dir must be a writable directory, got {args.store_dir!r}")
    tiling = TilingConfig(mode=args.mode, store=args.store, store_dir=args.store_dir, tile_frames=args.tile_frames,
                          memory_budget=None if args.memory_budget is None else int(args.memory_budget * 1e9))
    try:
        return Request.for_command_line(
            prompt=prompt, audio_length_in_s=args.seconds, audio=args.input, strength=args.strength, loop=args.loop,
            extend_s=args.extend, regenerate=args.regenerate, context_s=args.context, crossfade_s=args.crossfade,
            negative_prompt=args.negative_prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
            seed=args.seed, tiling=tiling, ranks=ranks)
    except ValueError as error:
        raise as_cli_error(error) from None


def generate(args: argparse.Namespace) -> Path:
    from .constants import SAMPLE_RATE
    from .distributed import init_from_environment, local_device
    from .render import render_to_file

    device = local_device(resolve_device(args.device))  # under torchrun or srun: this rank's GPU
    dtype = resolve_dtype(args.dtype, device)
    ranks = init_from_environment(device)  # launched on several ranks: one render, shared out over them
    request = build_request(args, ranks=None if ranks is None else "auto")
    seconds = request.output_seconds(SAMPLE_RATE)
    delivery = delivery_options(args)
    if args.upsample_steps is not None and args.upsample is None:
        raise CliError("--upsample-steps goes with --upsample")
    if args.upsample is not None and ranks is not None:
        raise CliError("--upsample runs in one process: render on several ranks without it, then run "
                       "'audioldm-tiled upsample' on the file")
    # before any model is loaded
    check_delivery(args.output, delivery, seconds, UPSAMPLED_RATE if args.upsample else SAMPLE_RATE)
    output = Path(args.output)
    picture = _check_spectrogram_path(args)
    from .loading import ModelLoadError, load_pipeline

    try:
        pipe = load_pipeline(args.model, dtype, device)
    except ModelLoadError as error:
        raise CliError(f"--model: {error}") from None
    pipe.set_progress_bar_config(disable=args.quiet or (ranks is not None and ranks.rank > 0))
    # Under several ranks each renders its share; rank 0 writes the file.
    try:
        upsample = None
        if args.upsample is not None:  # loaded before the render starts
            from .audiosr.command import load_upsampling

            upsample = load_upsampling(args.upsample, args.upsample_steps, dtype, device, "--upsample", args.quiet)
        delivered = render_to_file(pipe, output, request, upsample=upsample, **delivery)
    except ValueError as error:  # the model's own checks (its shortest length, its prompt inputs)
        raise as_cli_error(error) from None
    if delivered is None:
        return output
    logger.info("wrote %s (%s)", output, describe_loudness(delivered))
    if picture is not None:
        import soundfile

        from .plots import save_spectrogram

        seams = pipe.seam_positions(seconds, request.tiling) if args.mark_seams else None
        audio, rate = soundfile.read(output, dtype="float32")
        try:
            save_spectrogram(picture, audio, rate, overwrite=not args.no_overwrite, boundaries=seams,
                             title=f"{output.name}: {seconds:g} s")
        except OSError as error:
            raise CliError(f"--spectrogram: {error}; the audio was written to {output}") from None
        logger.info("wrote %s", picture)
    return output


def _check_spectrogram_path(args: argparse.Namespace) -> Path | None:
    """The --spectrogram path, checked (and matplotlib found) before anything is generated."""
    if args.spectrogram is None:
        if args.mark_seams:
            raise CliError("--mark-seams marks the spectrogram: give --spectrogram FILE.png too")
        return None
    from .files import check_output_path
    from .plots import require_matplotlib

    try:
        path = check_output_path(args.spectrogram, overwrite=not args.no_overwrite, suffix=".png")
    except (ValueError, OSError) as error:
        raise CliError(f"--spectrogram: {error}") from None
    try:
        require_matplotlib()
    except ImportError as error:
        raise CliError(f"--spectrogram: {error}") from None
    return path


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, so the partial output is removed."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _terminating_signals_unwind():
    """SIGTERM and SIGHUP (Slurm, systemd, timeout, a closed terminal) clean up like Ctrl-C, then exit 128 + N."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum, frame):
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, unwind) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _what_was_kept(argv: list[str]) -> str:
    if argv and argv[0] == "batch":
        return "the jobs finished before are kept; the job in progress was not written"
    if argv and argv[0] == "live":
        output = next((argv[i + 1] for i in range(len(argv) - 1) if argv[i] in ("-o", "--output")), None)
        output = next((a.split("=", 1)[1] for a in argv if a.startswith("--output=")), output)
        if output is None or output == "-":
            return "nothing was kept"
        return f"{output}.part keeps the windows rendered so far; --resume goes on from there"
    return "no output was written"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        with _terminating_signals_unwind():
            if argv and argv[0] == "bench":
                from .benchmarks.cli import main as bench_main

                return bench_main(argv[1:])
            if argv and argv[0] == "batch":
                from .batch_command import main as batch_main

                return batch_main(argv[1:])
            if argv and argv[0] == "studio":
                from .studio_app import main as studio_main

                return studio_main(argv[1:])
            if argv and argv[0] in ("upsample", "convert"):
                from .audiosr.command import main as audiosr_main

                return audiosr_main(argv)
            if argv and argv[0] == "live":
                from .live_command import live, live_parser

                return live(live_parser().parse_args(_attach_negative_at(argv[1:])), (KeyboardInterrupt, Terminated))
            args = generate_parser().parse_args(_attach_negative_at(argv))
            generate(args)
    except (CliError, ValueError, MemoryError) as error:  # MemoryError: a decode that cannot fit, said before denoising
        print(f"audioldm-tiled: error: {str(error) or 'out of memory'}", file=sys.stderr)
        return 2
    except RankFailed as error:  # every rank says it, naming the rank that failed; torchrun's report follows
        print(f"audioldm-tiled: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, a file that appeared under --no-overwrite, a folder gone
        where = f": {error.filename}" if error.filename and str(error.filename) not in (error.strerror or "") else ""
        print(f"audioldm-tiled: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    except SystemExit as exit_:  # argparse's usage errors (status 2) and --help (status 0)
        return int(exit_.code or 0)
    except KeyboardInterrupt:
        print(f"audioldm-tiled: interrupted; {_what_was_kept(argv)}", file=sys.stderr)
        return 130
    except Terminated as stop:
        print(f"audioldm-tiled: stopped by {signal.Signals(stop.signum).name}; {_what_was_kept(argv)}",
              file=sys.stderr)
        return 128 + stop.signum
    return 0
