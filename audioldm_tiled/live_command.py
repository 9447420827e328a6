"""``audioldm-tiled live PROMPT (--seconds S | --forever) -o FILE.wav|-``: a live render from the command line,
into a file it can resume and extend, into standard output as a WAV stream, and/or onto the sound card."""

from __future__ import annotations

import argparse
import logging
import sys

from .arguments import (
    CliError,
    as_cli_error,
    device_name,
    positive_int,
    positive_number,
    prompt_or_timeline,
    resolve_device,
    resolve_dtype,
    seed,
    timeline_segment,
)
from .constants import DTYPES, UPSAMPLE_MODEL, UPSAMPLE_STEPS, UPSAMPLED_RATE
from .loading import DEFAULT_MODEL

logger = logging.getLogger("audioldm_tiled.cli")


def live_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioldm-tiled live",
        description="Render progressively and hand the audio out as it is made: the first seconds after one "
        "window, whatever the length. Into a WAV file (resumable: --resume after a crash, or later with a longer "
        "--seconds to extend it), into standard output (-o -, e.g. | ffplay - or | sox -t wav - -d), or onto the "
        "sound card (--play).",
    )
    parser.add_argument("prompt", nargs="?", help="text describing the sound (or a timeline: --at, --timeline)")
    parser.add_argument("--at", action="append", type=timeline_segment, metavar="START:TEXT",
                        help="a timeline segment starting at START seconds; repeat for a soundscape that changes")
    parser.add_argument("--timeline", metavar="FILE.json", help="a JSON list of [start_s, text] or "
                        "[start_s, end_s, text] segments")
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--seconds", type=positive_number("--seconds", "seconds"), default=None,
                        help="length of the audio")
    length.add_argument("--forever", action="store_true",
                        help="render until stopped (Ctrl-C); a file then holds what was rendered")
    parser.add_argument("-o", "--output", default=None, help="output .wav file, or - for standard output")
    parser.add_argument("--resume", action="store_true", help="go on from FILE.wav.live: after a crash, or to "
                        "extend a finished FILE.wav (its samples stay as they are)")
    parser.add_argument("--play", action="store_true", help="also play it on the sound card (needs sounddevice: "
                        "pip install 'audioldm-tiled[play]')")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"hub id, local folder, or random:ARCH for random weights (default {DEFAULT_MODEL})")
    parser.add_argument("--upsample", nargs="?", const=UPSAMPLE_MODEL, default=None, metavar="MODEL",
                        help="48 kHz: super-resolved by AudioSR as it renders, 10.24 s segments crossfaded, the "
                        "first once 10.24 s are rendered; a file may then be any format, and is not resumable "
                        f"(MODEL: {UPSAMPLE_MODEL} unless named)")
    parser.add_argument("--upsample-steps", type=positive_int("--upsample-steps"), default=None,
                        help=f"with --upsample: AudioSR's DDIM steps per segment (default {UPSAMPLE_STEPS})")
    parser.add_argument("--steps", type=positive_int("--steps"), default=None,
                        help="denoising steps per window (default: the model family's)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: "
                        "the model family's)")
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    parser.add_argument("--negative-prompt", default=None, help="what the audio should not contain")
    parser.add_argument("--device", default="auto", type=device_name,
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                        help="auto: fp16 on CUDA, fp32 elsewhere")
    parser.add_argument("--float", dest="subtype", action="store_const", const="FLOAT", default="PCM_16",
                        help="32-bit float samples instead of 16-bit PCM")
    parser.add_argument("--loudness", type=float, default=None, metavar="LUFS",
                        help="with -o - or --play: follow this loudness target as it renders (the gain moves by at "
                        "most 1 dB a window); a file keeps its level, for normalising once it is finished")
    parser.add_argument("--true-peak", type=float, default=None, metavar="DBTP",
                        help="with --loudness: the highest sample peak the gain may reach (default -1)")
    parser.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def live(args: argparse.Namespace, stops: tuple[type[BaseException], ...]) -> int:
    """Run ``audioldm-tiled live``; returns the exit status."""
    from pathlib import Path

    from .audio import wav_bytes
    from .constants import SAMPLE_RATE
    from .live_sinks import check_live_output
    from .request import Request

    if args.output is None and not args.play:
        raise CliError("give -o FILE.wav, -o - (standard output) or --play")
    if args.resume and args.output in (None, "-"):
        raise CliError("--resume goes on with a file: give -o FILE.wav")
    if args.upsample_steps is not None and args.upsample is None:
        raise CliError("--upsample-steps goes with --upsample")
    if args.resume and args.upsample is not None:
        raise CliError("--upsample writes a 48 kHz file that cannot be resumed; render a resumable file without it, "
                       "then run 'audioldm-tiled upsample' on it")
    to_file = args.output not in (None, "-")
    if args.output == "-" and (sys.stdout is None or sys.stdout.closed):  # None: started with it closed
        raise CliError("-o -: standard output is closed; give -o FILE.wav or --play")
    if args.loudness is not None and to_file:
        raise CliError("--loudness follows a target while a render is heard (-o -, --play); a live file keeps its "
                       "level so that it can resume: normalise the finished file with `audioldm-tiled PROMPT "
                       "--loudness` or any loudness tool")
    if args.loudness is None and args.true_peak is not None:
        raise CliError("--true-peak goes with --loudness")
    if to_file and args.upsample is None and Path(args.output).suffix.lower() != ".wav":
        raise CliError(f"-o {args.output}: a live render grows a WAV file that it can resume window by window; for "
                       "FLAC, Ogg, Opus or MP3 render with `audioldm-tiled PROMPT -o FILE`, or convert the WAV")
    try:
        request = Request.for_command_line(
            prompt=prompt_or_timeline(args), audio_length_in_s=args.seconds, progressive=True,
            num_inference_steps=args.steps, guidance_scale=args.guidance, negative_prompt=args.negative_prompt,
            seed=args.seed)
    except ValueError as error:
        raise as_cli_error(error) from None
    if args.loudness is not None:
        from .formats import check_delivery

        try:
            check_delivery("-.wav", loudness=args.loudness, true_peak=args.true_peak)
        except ValueError as error:
            raise as_cli_error(error) from None
    if to_file and args.upsample is not None:
        from .formats import FORMATS, file_format
        from .sinks import FileSink

        try:
            key = file_format(args.output)[0]
        except ValueError as error:
            raise CliError(f"-o {args.output}: {error}") from None
        if args.subtype not in FORMATS[key].subtypes and args.subtype != "PCM_16":
            raise CliError(f"--float: {args.output} is {key}, which holds no float samples; give -o FILE.wav")
        try:  # the rate, the path and the room, as the render will write them
            FileSink(args.output, subtype=None if args.subtype == "PCM_16" else args.subtype,
                     overwrite=not args.no_overwrite).check(args.seconds, UPSAMPLED_RATE)
        except ValueError as error:
            raise as_cli_error(error) from None
    elif to_file:
        size = None if args.seconds is None else wav_bytes(args.seconds * SAMPLE_RATE, args.subtype)
        try:  # the path, the files beside it, another render writing them, what a resume needs
            check_live_output(args.output, overwrite=not args.no_overwrite, resume=args.resume, size=size)
        except ValueError as error:
            raise CliError(str(error)) from None
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    from .live_sinks import LoudnessFollower, PlayerSink, live_files
    from .loading import ModelLoadError, load_pipeline
    from .render import render_live, stream_live
    from .sinks import drive

    try:
        player = PlayerSink() if args.play else None
    except ImportError as error:
        raise CliError(f"--play: {error}") from None
    try:
        pipe = load_pipeline(args.model, dtype, device)
    except ModelLoadError as error:
        raise CliError(f"--model: {error}") from None
    pipe.set_progress_bar_config(disable=args.quiet)
    upsample = None
    if args.upsample is not None:  # loaded before the render starts; its bars would repeat for every segment
        from .audiosr.command import load_upsampling

        upsample = load_upsampling(args.upsample, args.upsample_steps, dtype, device, "--upsample", quiet=True)
    if not to_file:
        level = {} if args.loudness is None else dict(loudness=args.loudness, true_peak=args.true_peak)
        if args.output == "-":
            stream_live(pipe, sys.stdout.buffer, request, subtype=args.subtype, also=player, upsample=upsample,
                        **level)
        else:
            render = pipe.live(request)
            heard = player if not level else LoudnessFollower(player, level["loudness"], level["true_peak"] or -1.0)
            if upsample is not None:
                from .audiosr.sink import LiveUpsampledSink

                heard = LiveUpsampledSink(heard, upsample, seed=args.seed)
            heard.open(render.sample_rate, 1, render.recipe)
            drive(render, heard, stops)
        return 0
    output = render_live(pipe, args.output, request, subtype=args.subtype, resume=args.resume,
                         overwrite=not args.no_overwrite, stops=stops, also=player, upsample=upsample)
    if upsample is not None:
        logger.info("wrote %s (48 kHz, super-resolved as it rendered)", output)
        return 0
    state = live_files(output)[1]
    if state.is_file():
        logger.info("wrote %s; %s keeps where it stands, for --resume", output, state.name)
    else:  # shorter than one whole window: there is no state to go on from
        logger.info("wrote %s (shorter than one window: it cannot be extended with --resume)", output)
    return 0
