"""The studio's work, without its page: turning the page's fields into the same ``Request`` the command line and
``batch`` build, rendering it (live where the render allows it, else streamed), keeping each result with its
sidecar and spectrogram in a folder of its own, checking uploads, and cancelling. ``studio_app.py`` lays out the
page (Gradio) on top of it."""

from __future__ import annotations

import gc
import math
import numbers
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .constants import UPSAMPLED_RATE

if TYPE_CHECKING:
    from .sinks import Delivered

# Uploads: larger or longer recordings are refused (``--max-upload-mb``, ``--max-upload-seconds``).
MAX_UPLOAD_MB = 50.0
MAX_UPLOAD_SECONDS = 600.0
MIN_UPLOAD_SECONDS = 0.1  # shorter recordings are too short to edit (or to draw)
# Renders: a result is held whole to be drawn and kept (an hour: 230 MB of float32), so longer ones are refused
# (``--max-seconds``); an endless or day-long bed is the command line's ``live`` work.
MAX_RENDER_SECONDS = 3600.0
# The download's loudness when none is asked for.
AS_RENDERED = "as rendered"


class Cancelled(Exception):
    """The render was cancelled from the page."""


@dataclass(frozen=True)
class Result:
    """One render made since the page was opened: the WAV, its sidecar and its spectrogram, in the studio's
    folder."""

    index: int
    what: str  # "render", "loop", "regenerate 12-15 s", "extend +30 s", "upload"
    seconds: float
    wav: str
    sidecar: str
    picture: str
    segments: tuple[float, ...] = ()  # where prompt segments start, in seconds
    deliveries: tuple[str, ...] = ()  # the same audio made into files to download (other formats, rates, levels)

    def files(self) -> list[str]:
        """What the page offers to download of it."""
        return [self.wav, self.sidecar, *self.deliveries]

    def row(self) -> list:
        return [self.index, self.what, round(self.seconds, 2), Path(self.wav).name]


def timeline_from_rows(rows: Any, prompt: str | None = None) -> str | list:
    """The prompt the page describes: its timeline table, rows of (start s, end s or blank, prompt), where it has
    rows (one row from 0 with no end is one text), else ``prompt``. Blank rows are skipped."""
    rows = [list(r) + [None] * (3 - len(r)) for r in (rows.values.tolist() if hasattr(rows, "values") else rows or [])]
    segments = []
    for number, row in enumerate(rows, start=1):
        if len(row) > 3 and any(cell not in (None, "") for cell in row[3:]):
            raise ValueError(f"timeline row {number} has {len(row)} cells; a row is a start, an optional end and a "
                             "prompt")
        start, end, text = row[:3]
        start, end = _blank_or_number(start), _blank_or_number(end)
        text = "" if text is None else str(text).strip()
        if not text:
            if start is None and end is None:
                continue
            raise ValueError(f"timeline row {number}: the prompt is empty")
        if start is None:
            if segments:
                raise ValueError(f"timeline row {number}: give its start in seconds")
            start = 0.0
        segments.append((start, text) if end is None else (start, end, text))
    if not segments:
        if prompt is None or not prompt.strip():
            raise ValueError("write a prompt, or a timeline of prompts")
        return prompt.strip()
    if len(segments) == 1 and segments[0][0] == 0 and len(segments[0]) == 2:
        return segments[0][1]
    return segments


def _blank_or_number(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"timeline: {value!r} is not a number of seconds") from None
    return None if math.isnan(number) else number


class Studio:
    """The studio's renders on one pipeline, one at a time; results go to ``folder``."""

    def __init__(self, pipe, model: str, folder: str | Path, max_upload_mb: float = MAX_UPLOAD_MB,
                 max_upload_seconds: float = MAX_UPLOAD_SECONDS, max_seconds: float = MAX_RENDER_SECONDS,
                 upsampler=None):
        self.pipe, self.model, self.folder = pipe, model, Path(folder)
        # AudioSR for 48 kHz downloads: a pipeline, or a function that loads one when a download first asks
        self._upsampler = upsampler
        self.max_upload_bytes, self.max_upload_seconds = int(max_upload_mb * 1e6), max_upload_seconds
        self.max_seconds = max_seconds
        self.rate = pipe.vocoder.config.sampling_rate
        self._cancel = threading.Event()
        self._owner: str | None = None  # whose render runs: only they cancel it
        self._count = 0
        self._lock = threading.Lock()
        self.recipe: dict[str, Any] | None = None  # what the last render resolved (steps, guidance, ...)

    # --------------------------------------------------------------------------------------------------- requests
    def request(self, prompt: Any, seconds: float | None, seed: Any, steps: Any, guidance: Any, negative: str | None,
                mode: str = "exact", **fields: Any):
        """The ``Request`` the page's fields describe, as the command line builds it (``for_command_line``)."""

        from .config import TilingConfig
        from .constants import COMMAND_SECONDS
        from .request import Request

        if mode not in ("exact", "fast"):
            raise ValueError(f"the VAE mode must be exact or fast, got {mode!r}")
        if "extend_s" in fields and fields["extend_s"] in (None, ""):
            raise ValueError("`extend_s` is empty: give the seconds to add")
        if seconds in (None, "") and fields.get("audio") is None:  # a live render too: the studio has no endless one
            seconds = COMMAND_SECONDS
        request = Request.for_command_line(
            prompt=prompt, audio_length_in_s=None if seconds in (None, "") else seconds,
            num_inference_steps=None if steps in (None, "", 0) else _whole(steps, "Steps"),
            guidance_scale=None if guidance in (None, "") else guidance, negative_prompt=(negative or "").strip()
            or None, seed=seed,
            tiling=TilingConfig(mode=mode, show_progress=False), **fields)
        for name in ("audio_length_in_s", "extend_s"):
            value = getattr(request, name)
            if value is not None and value > self.max_seconds:
                raise ValueError(f"`{name}` must be at most {self.max_seconds:g} s in the studio (--max-seconds; "
                                 f"longer beds: audioldm-tiled live), got {value:g}")
        return request

    # ------------------------------------------------------------------------------------------------- rendering
    def cancel(self, owner: str | None = None) -> None:
        """Stop the render in progress at its next step or piece, if it is ``owner``'s (a page's session)."""
        if owner == self._owner:
            self._cancel.set()

    def pieces(self, request, progress: Callable[[float, str], object],
               owner: str | None = None) -> Iterator[np.ndarray]:
        """The render's waveform (samples,) piece by piece: live for a progressive request, else streamed; raises
        ``Cancelled`` at the next step or piece once ``owner`` calls ``cancel()``."""
        self._cancel.clear()
        self._owner = owner
        self.recipe = None
        total = request.output_seconds(self.rate)

        def step(pipe, i, t, tensors):
            if self._cancel.is_set():
                raise Cancelled()
            if not request.progressive:
                progress((i + 1) / max(1, pipe.num_timesteps), "denoising")
            return {}

        made = 0
        source = (self.pipe.live if request.progressive else self.pipe.stream)(request, callback_on_step_end=step)
        try:
            for piece in source:
                self.recipe = source.recipe  # what the render resolved, for the sidecar
                if self._cancel.is_set():
                    raise Cancelled()
                made += piece.shape[1]
                if total:
                    stage = "live" if request.progressive else "decode and vocoder"
                    progress(min(1.0, made / self.rate / total), stage)
                yield piece[0]
        finally:
            source.close()
            gc.collect()  # what a cancelled render held goes before the next one starts
            if self.pipe.device.type == "cuda":
                import torch

                torch.cuda.empty_cache()

    def keep(self, audio: np.ndarray, request, what: str, settings: dict[str, Any], started: float,
             segments: tuple[float, ...] = (), boundaries: dict[str, list[float]] | None = None) -> Result:
        """Write a result: its WAV, its sidecar (``batch``'s fields; ``request`` None for an upload) and its
        spectrogram."""
        from .audio import save_wav
        from .batch import library_versions, sidecar_path, write_json
        from .loudness import LoudnessMeter
        from .plots import save_spectrogram

        with self._lock:
            self._count += 1
            index = self._count
        wav = self.folder / f"{index:03d}-{what.split()[0]}.wav"
        save_wav(wav, audio, self.rate)
        seconds = audio.shape[0] / self.rate
        meter = LoudnessMeter(self.rate)  # every result's loudness, asked or not, as batch's sidecars have it
        meter.add(audio)
        record = {"job": settings, "model": self.model, "status": "done", "settings": dict(settings),
                  "versions": library_versions(), "render_s": round(time.perf_counter() - started, 3),
                  "samples": int(audio.shape[0]), **meter.result().as_dict()}
        if request is not None and self.recipe is not None:  # what the model's defaults filled in
            record["settings"].update(steps=self.recipe["steps"], guidance=self.recipe["guidance"])
        write_json(sidecar_path(wav), record)
        picture = wav.with_suffix(".png")
        marks = {"prompt segments": list(segments[1:])} if len(segments) > 1 else {}
        marks.update(boundaries or {})
        # Levels drawn relative to the loudest sample, so that quiet audio is not lost under the log-mel's floor.
        peak = float(np.abs(audio).max()) if audio.size else 0.0
        save_spectrogram(picture, audio / peak if peak > 0 else audio, self.rate, boundaries=marks or None,
                         row_seconds=min(60.0, max(1.0, seconds)), title=f"{wav.name}: {seconds:.2f} s")
        return Result(index, what, seconds, str(wav), str(sidecar_path(wav)), str(picture), segments)

    def deliver(self, result: Result, format: str, sample_rate: Any = None, loudness: Any = None,
                upsample: bool = False) -> Delivered:
        """``result`` as a file to download, through the same sink as every rendered file: ``format`` (wav, flac,
        mp3, ogg, opus), at ``sample_rate`` (blank or 0: the model's, or 48 kHz when upsampled) and ``loudness``
        LUFS (a number, or text that starts with one, as "-16 (podcast)"; blank or ``AS_RENDERED``: as rendered),
        with the render's settings in its tags; read block by block from the result's WAV. ``upsample``: super-
        resolved to 48 kHz by AudioSR on the way (``audiosr.sink.UpsampledSink``)."""
        import json

        import soundfile

        from .sinks import FileSink

        rate = None if sample_rate in (None, "", 0) else _whole(sample_rate, "the sample rate")
        target = None if loudness in (None, "", AS_RENDERED) else loudness
        if isinstance(target, str):
            try:
                target = float(target.split()[0])
            except ValueError:
                raise ValueError(f"the loudness must be a number of LUFS, e.g. -16, got {loudness!r}") from None
        if target is not None and (isinstance(target, bool) or not isinstance(target, numbers.Real)):
            raise ValueError(f"the loudness must be a number of LUFS, got {target!r}")
        name = Path(result.wav).stem + ("-audiosr" if upsample else "") + (f"-{rate // 1000}k" if rate else "") + \
            (f"-{-target:g}LUFS" if target is not None else "") + f".{format}"
        with open(result.sidecar, encoding="utf-8") as f:
            settings = json.load(f)["settings"]
        sink = FileSink(self.folder / name, format=format, sample_rate=rate, loudness=target)
        if upsample:
            from .audiosr.sink import UpsampledSink

            sink.check(model_rate=UPSAMPLED_RATE)  # the format takes 48 kHz, before AudioSR is loaded
            sink = UpsampledSink(sink, self.upsampler(), seed=int(settings.get("seed") or 0))
        sink.open(self.rate, 1, {**settings, "model": self.model})
        try:
            for block in soundfile.blocks(result.wav, blocksize=1 << 16, dtype="float32"):
                sink.write(block[None])
        except BaseException:
            sink.abort()
            raise
        return sink.commit()

    def upsampler(self):
        """The AudioSR pipeline of 48 kHz downloads, loaded the first time one asks."""
        if self._upsampler is None:
            raise ValueError("this studio has no AudioSR model for 48 kHz downloads (audioldm-tiled studio "
                             "--upsample-model MODEL)")
        if callable(self._upsampler) and not hasattr(self._upsampler, "vocoder"):
            self._upsampler = self._upsampler()
        return self._upsampler

    def boundaries(self, request, seconds: float) -> dict[str, list[float]]:
        """Where a render's windows, tiles and chunks meet, for the spectrogram."""
        if request.progressive:
            from .seams import live_seams

            return live_seams(self.pipe, seconds, request.tiling)
        return self.pipe.seam_positions(seconds, request.tiling)

    # ----------------------------------------------------------------------------------------------------- uploads
    def upload(self, path: str | Path) -> Result:
        """An uploaded recording as the current result, after checking it: its size, that soundfile reads it as
        audio, and its length."""
        import soundfile

        path = Path(path)
        size = path.stat().st_size
        if size > self.max_upload_bytes:
            raise ValueError(f"the recording is {size / 1e6:.1f} MB; the studio takes up to "
                             f"{self.max_upload_bytes / 1e6:g} MB")
        try:
            info = soundfile.info(str(path))
        except Exception as error:  # noqa: BLE001 - any unreadable file: say so, not how libsndfile failed
            raise ValueError(f"the upload is not audio soundfile can read ({str(error).splitlines()[0][:120]})") \
                from None
        if info.duration < MIN_UPLOAD_SECONDS:
            raise ValueError(f"the recording lasts {info.duration:.4g} s; the studio takes at least "
                             f"{MIN_UPLOAD_SECONDS:g} s")
        if info.duration > self.max_upload_seconds:
            raise ValueError(f"the recording lasts {info.duration:.1f} s; the studio takes up to "
                             f"{self.max_upload_seconds:g} s")
        from .audio import load_audio

        audio = load_audio(str(path), self.rate)
        started = time.perf_counter()
        return self.keep(audio, None, "upload", {"upload": path.name}, started)


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or \
            value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)

