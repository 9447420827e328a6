"""``audioldm-tiled studio``: the studio's page (Gradio) and its command line. The work itself is ``studio.py``'s;
here are the fields, the buttons and the queue: one render at a time per device, the others shown their place."""

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .arguments import CliError, describe_loudness, device_name, positive_number, resolve_device, resolve_dtype
from .constants import DTYPES, UPSAMPLE_MODEL
from .loading import DEFAULT_MODEL
from .studio import (
    AS_RENDERED,
    MAX_RENDER_SECONDS,
    MAX_UPLOAD_MB,
    MAX_UPLOAD_SECONDS,
    Cancelled,
    Result,
    Studio,
    timeline_from_rows,
)

logger = logging.getLogger("audioldm_tiled.studio")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
TIMELINE_HEADERS = ["start (s)", "end (s, optional)", "prompt"]
EMPTY_TIMELINE = [[None, None, None], [None, None, None]]
# The page's name for each call argument, in the request's messages.
PAGE_FIELDS = {"audio_length_in_s": "Length (s)", "num_inference_steps": "Steps", "guidance_scale": "Guidance",
               "negative_prompt": "Negative prompt", "extend_s": "Seconds to add", "regenerate": "the span (From, To)",
               "prompt": "Prompt", "audio": "the recording", "crossfade_s": "the crossfade", "seed": "the seed",
               "format": "Download as", "sample_rate": "Sample rate", "loudness": "Loudness (LUFS)"}


def build_app(studio: Studio):
    """The page: a timeline and settings, Render / Regenerate span / Extend / Cancel, the audio (live while it
    renders), the spectrogram, and the renders made since the page was opened with their downloads."""
    import gradio as gr

    from .formats import FORMATS
    from .request import named_for

    tracked = gr.Progress()  # a handler's default: Gradio reports progress through it
    # A 48 kHz download runs AudioSR, minutes on long renders: its stages' bars (reading, front end, denoising, VAE,
    # post-processing) are the page's progress.
    tracked_bars = gr.Progress(track_tqdm=True)

    def fail(error: Exception):
        return gr.Error(named_for(error, PAGE_FIELDS), print_exception=False)

    def outputs_of(result: Result, history: list[Result]):
        files = [path for r in history for path in r.files()]
        table = [r.row() for r in reversed(history)]
        return (gr.skip(), result.wav, result.picture, files, table, result, history,
                f"Render {result.index}: {result.what}, {result.seconds:.2f} s")

    def run(request, what: str, settings: dict[str, Any], history: list[Result], progress, page, segments=(),
            mark=False, live_output=False):
        """Render ``request`` for ``page`` (its gr.Request); a generator of the page's outputs: live pieces, then
        the result."""
        started = time.perf_counter()
        chunks = []
        try:
            for piece in studio.pieces(request, lambda share, desc: progress(share, desc=desc), page.session_hash):
                chunks.append(piece)
                if live_output:
                    yield (studio.rate, (np.clip(piece, -1, 1) * 32767).astype(np.int16)), *[gr.skip()] * 7
        except Cancelled:
            yield (gr.skip(),) * 7 + ("Cancelled: nothing was kept, and the studio is ready.",)
            return
        audio = np.concatenate(chunks)
        boundaries = studio.boundaries(request, audio.shape[0] / studio.rate) if mark else None
        result = studio.keep(audio, request, what, settings, started, tuple(segments), boundaries)
        yield outputs_of(result, history + [result])

    def render(text, rows, seconds, seed, steps, guidance, negative, mode, loop, live, mark, history,
               page: gr.Request, progress=tracked):
        try:
            prompt = timeline_from_rows(rows, text)
            request = studio.request(prompt, seconds, seed, steps, guidance, negative, mode, loop=bool(loop),
                                     progressive=bool(live) and not loop)
        except ValueError as error:
            raise fail(error) from None
        segments = [0.0] if isinstance(prompt, str) else [float(s[0]) for s in prompt]
        settings = {"prompt" if isinstance(prompt, str) else "timeline": prompt, "seconds": seconds, "seed": seed,
                    "steps": steps or None, "guidance": guidance, "negative_prompt": negative or None,
                    "mode": mode, "loop": bool(loop), "live": request.progressive}
        yield from run(request, "loop" if loop else "render", settings, history, progress, page, segments, mark,
                       live_output=request.progressive)

    def regenerate(current, start, end, prompt, seed, steps, guidance, negative, mode, mark, history,
                   page: gr.Request, progress=tracked):
        try:
            if current is None:
                raise ValueError("render something first (or use a recording): there is nothing to regenerate")
            request = studio.request(prompt, None, seed, steps, guidance, negative, mode, audio=current.wav,
                                     regenerate=(start, end))
        except ValueError as error:
            raise fail(error) from None
        settings = {"input": Path(current.wav).name, "prompt": prompt, "regenerate": [start, end], "seed": seed,
                    "steps": steps or None, "guidance": guidance, "mode": mode}
        yield from run(request, f"regenerate {start:g}-{end:g} s", settings, history, progress, page,
                       current.segments, mark)

    def extend(current, seconds, prompt, seed, steps, guidance, negative, mode, mark, history,
               page: gr.Request, progress=tracked):
        try:
            if current is None:
                raise ValueError("render something first (or use a recording): there is nothing to extend")
            request = studio.request(prompt, None, seed, steps, guidance, negative, mode, audio=current.wav,
                                     extend_s=seconds)
        except ValueError as error:
            raise fail(error) from None
        settings = {"input": Path(current.wav).name, "prompt": prompt, "extend_s": seconds, "seed": seed,
                    "steps": steps or None, "guidance": guidance, "mode": mode}
        yield from run(request, f"extend +{seconds:g} s", settings, history, progress, page, current.segments,
                       mark)

    def deliver(current, format, sample_rate, loudness, upsample, history, progress=tracked_bars):
        try:
            if current is None:
                raise ValueError("render something first (or use a recording): there is nothing to download")
            delivered = studio.deliver(current, format, sample_rate, loudness, upsample=bool(upsample))
        except (ValueError, OSError) as error:
            raise fail(error) from None
        updated = dataclasses.replace(current, deliveries=current.deliveries + (str(delivered.path),))
        history = [updated if r.index == current.index else r for r in history]
        files = [path for r in history for path in r.files()]
        return files, updated, history, f"Download {delivered.path.name}: {describe_loudness(delivered)}"

    def use_recording(path, history):
        try:
            if not path:
                raise ValueError("choose a recording to upload first")
            result = studio.upload(path)
        except (ValueError, OSError) as error:
            raise fail(error) from None
        return outputs_of(result, history + [result])

    with gr.Blocks(title="audioldm-tiled studio") as app:
        gr.Markdown("## audioldm-tiled studio\nCompose a timeline, hear it as it renders, fix a span, loop, extend.")
        history = gr.State([])
        current = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(value="light rain on a tin roof", label="Prompt", elem_id="prompt")
                timeline = gr.Dataframe(value=EMPTY_TIMELINE, headers=TIMELINE_HEADERS,
                                        datatype=["number", "number", "str"], type="array", interactive=True,
                                        label="Or a timeline: one prompt per row, from its start (replaces the "
                                        "prompt when filled)", elem_id="timeline")
                negative = gr.Textbox(label="Negative prompt", elem_id="negative")
            with gr.Column(scale=2):
                seconds = gr.Number(value=20, label="Length (s)", elem_id="seconds")
                defaults = studio.pipe.parent_defaults()  # the model family's, as the command line's
                with gr.Row():
                    seed = gr.Number(value=0, label="Seed", precision=0, elem_id="seed")
                    steps = gr.Number(value=defaults["num_inference_steps"], label="Steps", precision=0,
                                      elem_id="steps")
                    guidance = gr.Number(value=defaults["guidance_scale"], label="Guidance", elem_id="guidance")
                with gr.Row():
                    mode = gr.Radio(["exact", "fast"], value="exact", label="VAE tiling", elem_id="mode")
                    live = gr.Checkbox(value=True, label="Hear it while it renders (live)", elem_id="live")
                    loop = gr.Checkbox(value=False, label="Seamless loop", elem_id="loop")
                    mark = gr.Checkbox(value=False, label="Mark windows and tiles", elem_id="mark")
                with gr.Row():
                    render_button = gr.Button("Render", variant="primary", elem_id="render")
                    cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
        status = gr.Markdown("", elem_id="status")
        live_audio = gr.Audio(label="Live", streaming=True, autoplay=True, interactive=False, elem_id="live-audio")
        result_audio = gr.Audio(label="Result", type="filepath", interactive=False, elem_id="result-audio")
        picture = gr.Image(label="Spectrogram (prompt segments marked)", type="filepath", interactive=False,
                           elem_id="spectrogram")
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Regenerate a span of the result**, keeping the rest sample for sample")
                with gr.Row():
                    span_start = gr.Number(value=5, label="From (s)", elem_id="span-start")
                    span_end = gr.Number(value=10, label="To (s)", elem_id="span-end")
                span_prompt = gr.Textbox(value="a dog barks", label="Prompt for the span", elem_id="span-prompt")
                regenerate_button = gr.Button("Regenerate span", elem_id="regenerate")
            with gr.Column():
                gr.Markdown("**Extend the result**")
                extend_seconds = gr.Number(value=10, label="Seconds to add", elem_id="extend-seconds")
                extend_prompt = gr.Textbox(value="light rain on a tin roof", label="Prompt for the continuation",
                                           elem_id="extend-prompt")
                extend_button = gr.Button("Extend", elem_id="extend")
            with gr.Column():
                gr.Markdown(f"**Start from a recording** (up to {studio.max_upload_bytes / 1e6:g} MB and "
                            f"{studio.max_upload_seconds:g} s)")
                upload = gr.File(label="Recording", file_types=["audio"], type="filepath", elem_id="upload")
                upload_button = gr.Button("Use this recording", elem_id="use-recording")
        with gr.Row():
            delivery_format = gr.Dropdown(list(FORMATS), value="flac", label="Download as", elem_id="format")
            delivery_rate = gr.Dropdown([(f"{studio.rate} (the model's)", 0), ("44100", 44100), ("48000", 48000)],
                                        value=0, label="Sample rate", elem_id="sample-rate")
            delivery_loudness = gr.Dropdown([AS_RENDERED, "-14 (streaming)", "-16 (podcast)", "-23 (EBU R128)",
                                             "-24 (ATSC A/85)"], value=AS_RENDERED, allow_custom_value=True,
                                            label="Loudness (LUFS)", elem_id="loudness")
            upsample = gr.Checkbox(value=False, label="48 kHz (AudioSR super-resolution)", elem_id="upsample")
            deliver_button = gr.Button("Make the download", elem_id="deliver")
        renders = gr.Dataframe(headers=["#", "what", "seconds", "file"], label="Renders since the page was opened",
                               interactive=False, elem_id="renders")
        downloads = gr.File(label="Downloads: each WAV with its settings (JSON), and the files made from it",
                            file_count="multiple", interactive=False, elem_id="downloads")

        outputs = [live_audio, result_audio, picture, downloads, renders, current, history, status]
        device = {"concurrency_id": "device", "concurrency_limit": 1}
        events = [
            render_button.click(render, [prompt, timeline, seconds, seed, steps, guidance, negative, mode, loop, live,
                                         mark, history], outputs, api_name="render", **device),
            regenerate_button.click(regenerate, [current, span_start, span_end, span_prompt, seed, steps, guidance,
                                                 negative, mode, mark, history], outputs, api_name="regenerate",
                                    **device),
            extend_button.click(extend, [current, extend_seconds, extend_prompt, seed, steps, guidance, negative,
                                         mode, mark, history], outputs, api_name="extend", **device),
        ]
        upload_button.click(use_recording, [upload, history], outputs, api_name="use_recording", **device)
        deliver_button.click(deliver, [current, delivery_format, delivery_rate, delivery_loudness, upsample, history],
                             [downloads, current, history, status], api_name="deliver", **device)
        def cancel(page: gr.Request) -> None:
            studio.cancel(page.session_hash)

        cancel_button.click(cancel, None, None, api_name="cancel", queue=False, cancels=events)
    return app.queue(default_concurrency_limit=1)


# A studio's results folder, in the temporary folder: the prefix, its process id, then a random part.
FOLDER_PREFIX = "audioldm-tiled-studio-"


def remove_stale_folders(root: str | os.PathLike) -> list[str]:
    """Remove the results folders under ``root`` of studios that no longer run (killed with SIGKILL, nothing
    removed them); returns their names."""
    import re
    import shutil

    from .files import process_running

    removed = []
    for entry in os.scandir(root):
        match = re.fullmatch(rf"{FOLDER_PREFIX}(\d+)-.+", entry.name)
        if match and entry.is_dir(follow_symlinks=False) and not process_running(int(match[1])):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        logger.info("removed the folders of %d studio(s) that no longer run", len(removed))
    return removed


def studio_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioldm-tiled studio",
        description="A local web app to compose a timeline, hear it as it renders, fix a span, loop and extend. "
        "Needs the studio extra: pip install 'audioldm-tiled[studio]'.")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"hub id, local folder, or random:ARCH for random weights (default {DEFAULT_MODEL})")
    parser.add_argument("--upsample-model", default=UPSAMPLE_MODEL, metavar="MODEL",
                        help=f"the AudioSR model of 48 kHz downloads, loaded when one first asks (default "
                        f"{UPSAMPLE_MODEL}; a converted folder, or random:audiosr)")
    parser.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES), help="auto: fp16 on CUDA, else fp32")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", default=None, help="ask for this user and password")
    parser.add_argument("--share", action="store_true", help="also open a public link through Gradio's servers")
    parser.add_argument("--max-upload-mb", type=positive_number("--max-upload-mb", "MB"), default=MAX_UPLOAD_MB,
                        help=f"largest recording accepted (default {MAX_UPLOAD_MB:g} MB)")
    parser.add_argument("--max-upload-seconds", type=positive_number("--max-upload-seconds", "seconds"),
                        default=MAX_UPLOAD_SECONDS,
                        help=f"longest recording accepted (default {MAX_UPLOAD_SECONDS:g} s)")
    parser.add_argument("--max-seconds", type=positive_number("--max-seconds", "seconds"), default=MAX_RENDER_SECONDS,
                        help=f"longest render (default {MAX_RENDER_SECONDS:g} s; each result is held whole to draw "
                        "it)")
    return parser


def main(argv: list[str]) -> int:
    """Run ``audioldm-tiled studio`` until Ctrl-C; its results folder is removed when it exits."""
    args = studio_parser().parse_args(argv)
    auth = None
    if args.auth is not None:
        user, colon, password = args.auth.partition(":")
        if not (user and colon and password):
            raise CliError("--auth takes USER:PASSWORD, both non-empty")
        auth = (user, password)
    if not 0 < args.port < 65536:
        raise CliError(f"--port must be from 1 to 65535, got {args.port}")
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise CliError("the studio needs Gradio: pip install 'audioldm-tiled[studio]'")
    if args.host not in LOOPBACK:
        logger.warning("!" * 78 + "\n!! The studio listens on %s: anyone who can reach this machine on port %d can "
                       "use it%s.\n" + "!" * 78, args.host, args.port,
                       "" if auth else " (no --auth USER:PASSWORD was given)")
    from .loading import ModelLoadError, load_pipeline

    device = resolve_device(args.device)
    try:
        pipe = load_pipeline(args.model, resolve_dtype(args.dtype, device), device)
    except ModelLoadError as error:
        raise CliError(f"--model: {error}") from None
    pipe.set_progress_bar_config(disable=True)
    remove_stale_folders(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix=f"{FOLDER_PREFIX}{os.getpid()}-") as folder:
        # Gradio's copies of the results and uploads go with them (read when Gradio is first imported, below)
        os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(folder, "gradio"))
        def load_upsampler():  # once a download first asks for 48 kHz
            from .audiosr.command import load_upsampler

            try:
                # its bars on: the page shows them while a download is made (``build_app``)
                return load_upsampler(args.upsample_model, resolve_dtype(args.dtype, device), device,
                                      "--upsample-model")
            except CliError as error:
                raise ValueError(str(error)) from None

        studio = Studio(pipe, args.model, folder, args.max_upload_mb, args.max_upload_seconds, args.max_seconds,
                        upsampler=load_upsampler)
        app = build_app(studio)
        try:
            launch(app, studio, args.host, args.port, auth, args.share)
        finally:
            app.close()
    return 0


def launch(app, studio: Studio, host: str, port: int, auth: tuple[str, str] | None = None, share: bool = False,
           block: bool = True):
    """Serve ``app`` (``build_app(studio)``) until Ctrl-C, or in a thread with ``block=False``; with ``auth``
    every route but the login page needs the login (``studio_login``)."""
    from starlette.middleware import Middleware

    from .studio_login import LoginRequired

    return app.launch(server_name=host, server_port=port, auth=auth, share=share,
                      max_file_size=studio.max_upload_bytes, allowed_paths=[str(studio.folder)], show_error=True,
                      app_kwargs={"middleware": [Middleware(LoginRequired)]} if auth else None,
                      prevent_thread_lock=not block, quiet=not block)
