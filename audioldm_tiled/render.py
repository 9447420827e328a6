"""One render streamed straight into a file of any format (what the command line, the samples and the benchmarks
call), and a live render into a WAV file it can resume, or into a pipe."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .audio import wav_bytes
from .callbacks import CALLBACK_ARGUMENTS, Callbacks
from .constants import UPSAMPLED_RATE
from .distributed import guarded, ranks_for
from .live_sinks import CallbackSink, ListenerGone, LiveFileSink, LoudnessFollower, WavStreamSink, check_live_output
from .request import Request
from .sinks import Delivered, FileSink, Sink, Tee, drive

logger = logging.getLogger(__name__)


def render_to_file(pipe, path: str | os.PathLike, prompt: Any = None, *, format: str | None = None,
                   subtype: str | None = None, sample_rate: int | None = None, loudness: float | None = None,
                   true_peak: float | None = None, tags: Mapping[str, str] | None = None, overwrite: bool = True,
                   upsample=None, **call_kwargs: Any) -> Delivered | None:
    """Render one waveform straight into ``path`` (``sinks.FileSink``), in memory that does not grow with the length.

    The path, the format, the rate and the free space for a render of known length are checked before any model
    work; the file appears only once the render has succeeded (an existing file is replaced then, or kept when the
    render fails or is interrupted).

    Args:
        pipe: a tiled pipeline.
        path: the file; its extension names the format (.wav, .flac, .ogg, .opus, .mp3) unless ``format`` does.
        prompt: a prompt or a timeline (one waveform), or a whole ``Request`` (then no ``call_kwargs``).
        format, subtype, sample_rate, loudness, true_peak, tags: as ``FileSink`` takes them.
        overwrite: replace an existing file; with False an existing ``path`` raises before anything runs.
        upsample: an ``AudioSRTiledPipeline``, or an ``audiosr.sink.Upsampling`` with its settings: the file is
            delivered at 48 kHz, the render super-resolved once it is whole (``audiosr.sink.UpsampledSink``; one
            process).
        call_kwargs: the pipeline's call arguments (``audio_length_in_s``, ``num_inference_steps``, ``seed``,
            ``tiling``, callbacks, ...).

    With ``ranks="auto"`` every rank calls it with the same arguments: all of them render their shares, rank 0
    checks the path and writes the file, and a failure on any rank fails them all.

    Returns:
        The ``Delivered`` file (path, rate, length, loudness measured); None on the ranks other than 0.
    """
    callbacks = Callbacks.from_arguments(call_kwargs)
    request = _one_waveform(pipe, prompt, call_kwargs)
    ranks = ranks_for(request.ranks)
    sink = None
    with guarded(ranks):  # a refused path on rank 0 fails every rank, before any work
        if ranks is None or ranks.rank == 0:
            sink = FileSink(path, format=format, subtype=subtype, sample_rate=sample_rate, loudness=loudness,
                            true_peak=true_peak, tags=tags, overwrite=overwrite)
            rate = pipe.geometry.sample_rate
            sink.check(request.output_seconds(rate), rate if upsample is None else UPSAMPLED_RATE)
            if upsample is not None:
                if ranks is not None:
                    raise ValueError("`upsample` runs in one process: render on several ranks without it, then "
                                     "super-resolve the file")
                from .audiosr.sink import UpsampledSink

                sink = UpsampledSink(sink, upsample, seed=request.seed or 0, tiling=request.tiling)
    return pipe.render(request, sink, callbacks)


def _one_waveform(pipe, prompt: Any, call_kwargs: dict[str, Any], progressive: bool = False) -> Request:
    """``prompt`` if it is a whole ``Request`` (then nothing beside it), else the request the call's arguments make;
    either way one waveform, as a file holds."""
    request = Request.given_or_from(prompt, call_kwargs, pipe.reject_unknown_arguments, progressive)
    if request.num_waveforms_per_prompt != 1 or (
        isinstance(request.prompt, list) and len(request.prompt) > 1 and all(isinstance(p, str) for p in request.prompt)
    ):
        raise ValueError("a file holds one waveform: give one prompt (or one timeline) and num_waveforms_per_prompt=1")
    return request


def render_to_wav(pipe, path: str | os.PathLike, prompt: Any = None, *, subtype: str = "PCM_16",
                  overwrite: bool = True, **call_kwargs: Any) -> Path:
    """``render_to_file`` into a WAV file at the model's rate; returns the path written."""
    if Path(path).suffix.lower() != ".wav":
        raise ValueError(f"output path must end in .wav, got {str(path)!r} (render_to_file writes other formats)")
    render_to_file(pipe, path, prompt, subtype=subtype, overwrite=overwrite, **call_kwargs)
    return Path(path)


def render_live(pipe, path: str | os.PathLike, prompt: Any = None, *, subtype: str = "PCM_16",
                resume: bool = False, overwrite: bool = True, stops: tuple[type[BaseException], ...] = (
                    KeyboardInterrupt,), also: Sink | Callable[[np.ndarray], object] | None = None,
                upsample=None, **call_kwargs: Any) -> Path:
    """Render live (``pipe.live``) into the WAV ``path``, window by window, so that a render killed at any moment
    can go on from its last window.

    While it runs the audio grows in ``NAME.wav.part`` and the state after each window is saved to
    ``NAME.wav.live`` (``live_files``). When it ends the part becomes ``path``. An endless render
    (``audio_length_in_s=None``) ends when one of ``stops`` is raised (Ctrl-C): what was rendered becomes
    ``path``. Any other failure leaves both files for ``resume``.

    Args:
        resume: go on from ``NAME.wav.live``: with the part file after a crash, or with the finished ``path``
            to extend it (a longer ``audio_length_in_s``, or endless). What was written stays byte for byte,
            and the file ends as one uninterrupted render of the new length would.
        overwrite: replace an existing ``path`` when a new render ends; with False it must not exist.
        also: another sink fed the same pieces (``live_sinks.PlayerSink``, for ``--play``), or a function called
            with each piece (samples,).
        upsample: an ``AudioSRTiledPipeline`` (or ``audiosr.sink.Upsampling``): the file is 48 kHz,
            super-resolved segment by segment as the render comes (``audiosr.live``), in any format ``FileSink``
            writes; it appears when the render ends, and cannot be resumed (render without it to keep a resumable
            file, then super-resolve that).
        prompt, call_kwargs: ``pipe.live``'s arguments (``audio_length_in_s``, ``num_inference_steps``, ...), or
            a whole ``Request`` as ``prompt``.

    Returns:
        The path written.
    """
    path = Path(path)
    rate = pipe.geometry.sample_rate
    callbacks = {name: call_kwargs.pop(name) for name, _ in CALLBACK_ARGUMENTS if name in call_kwargs}
    request = _one_waveform(pipe, prompt, call_kwargs, progressive=True)
    seconds = request.audio_length_in_s
    if upsample is not None:
        return _render_live_upsampled(pipe, path, request, callbacks, upsample, subtype, resume, overwrite, stops,
                                      also)
    size = None if seconds is None else wav_bytes(seconds * rate, subtype)
    state = check_live_output(path, overwrite, resume, size)
    render = pipe.live(request, resume=state, **callbacks)  # the arguments are checked before any file is made
    sink = LiveFileSink(path, render, subtype, resume, overwrite, None if seconds is None else int(seconds * rate))
    outputs = sink if also is None else Tee(sink, _sink(also))
    outputs.open(rate, 1, render.recipe)
    return drive(render, outputs, stops if seconds is None else ())


def _render_live_upsampled(pipe, path: Path, request: Request, callbacks: dict[str, Any], upsample, subtype: str,
                           resume: bool, overwrite: bool, stops: tuple[type[BaseException], ...],
                           also: Sink | Callable[[np.ndarray], object] | None) -> Path:
    if resume:
        raise ValueError("`resume`: a live render super-resolved to 48 kHz cannot be resumed; render without "
                         "`upsample` for a resumable file, then super-resolve it")
    # PCM_16 is FileSink's own default where the format has a choice; the lossy formats have none to give
    sink = FileSink(path, subtype=None if subtype == "PCM_16" else subtype, overwrite=overwrite)
    sink.check(request.audio_length_in_s, UPSAMPLED_RATE)
    render = pipe.live(request, **callbacks)
    outputs = _upsampled(sink if also is None else Tee(sink, _sink(also)), upsample, request)
    outputs.open(render.sample_rate, 1, render.recipe)
    drive(render, outputs, stops if request.audio_length_in_s is None else ())
    return path


def _upsampled(sink: Sink, upsample, request: Request) -> Sink:
    """``sink`` fed at 48 kHz by AudioSR segment by segment, with the render's seed."""
    from .audiosr.sink import LiveUpsampledSink

    return LiveUpsampledSink(sink, upsample, seed=request.seed or 0)  # a render without a seed draws its own


def _sink(also: Sink | Callable[[np.ndarray], object]) -> Sink:
    """A sink as given (``live_sinks.PlayerSink``), or one that calls a function with each piece."""
    return also if hasattr(also, "write") else CallbackSink(also)


def stream_live(pipe, stream: BinaryIO, prompt: Any = None, *, subtype: str = "PCM_16",
                also: Sink | Callable[[np.ndarray], object] | None = None, loudness: float | None = None,
                true_peak: float | None = None, upsample=None, **call_kwargs: Any) -> int:
    """Render live into ``stream`` as a WAV of unknown length (``-o -``: standard output, for ``sox -t wav - -d``
    or ``ffplay -``). Ends with the render, or quietly when the reader closes the pipe. With ``loudness`` (LUFS)
    the gain follows that target as the render goes (``live_sinks.LoudnessFollower``), its peaks under
    ``true_peak`` (default -1 dB). With ``upsample`` (an ``AudioSRTiledPipeline``) the stream is 48 kHz,
    super-resolved segment by segment (``audiosr.live``). Returns the samples written."""
    render = pipe.live(prompt, **call_kwargs)
    sink = WavStreamSink(stream, subtype)
    outputs = sink if also is None else Tee(sink, _sink(also))
    if loudness is not None:
        outputs = LoudnessFollower(outputs, loudness, -1.0 if true_peak is None else true_peak)
    if upsample is not None:
        outputs = _upsampled(outputs, upsample, render.request)
    try:
        outputs.open(render.sample_rate, 1, render.recipe)
        drive(render, outputs, stops=(ListenerGone,))
    except ListenerGone:  # gone before the first piece, or before the header
        render.close()
    return sink.samples
