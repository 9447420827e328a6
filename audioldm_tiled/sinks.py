"""Where a render's waveform goes. The engine (``pipe.render(request, sink)``) hands a sink the pieces as they are
made and then keeps or drops them; a sink never holds more than it must:

- ``open(sample_rate, waveforms, recipe)`` before any denoising, so that a sink that cannot take the render says
  so before the work (``recipe``: what the render is made of, ``plan.render_recipe``); ``write(piece)`` with
  float32 pieces (waveforms, samples); ``commit()`` once the render has succeeded, returning what the sink made;
  ``abort()`` when it failed or was interrupted, leaving nothing behind.
- ``ArraySink``: the waveforms as one numpy array (what ``pipe(...)`` returns).
- ``FileSink``: one waveform into a file of any format libsndfile writes (WAV, FLAC, Ogg Vorbis, Opus, MP3),
  resampled on the way (soxr's streaming resampler), measured (``loudness``), normalised to a loudness target if
  asked, with tags; atomic (``files.atomic_file``) and in memory that does not grow with the length.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

from .files import OutputError, atomic_file, check_output_path
from .formats import FORMATS, SAMPLE_BYTES, TAG_NAMES, check_delivery, check_sample_rate, recipe_tags
from .loudness import Loudness, LoudnessMeter, loudness_gain

logger = logging.getLogger(__name__)


class Sink(Protocol):
    def open(self, sample_rate: int, waveforms: int, recipe: Mapping[str, Any]) -> None: ...

    def write(self, piece: np.ndarray) -> None: ...

    def commit(self) -> Any: ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class Delivered:
    """A file a render made: where, its rate and length, what it measures, the gain a loudness target took, and
    what the render was made of (``plan.render_recipe``)."""

    path: Path
    sample_rate: int
    frames: int
    loudness: Loudness
    gain_db: float = 0.0
    recipe: Mapping[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """What a sidecar records of the file."""
        return {"file": self.path.name, "sample_rate": self.sample_rate, "seconds": self.frames / self.sample_rate,
                **self.loudness.as_dict(), "gain_db": round(self.gain_db, 3)}


def drive(pieces: Iterable[np.ndarray], sink: Sink, stops: tuple[type[BaseException], ...] = ()) -> Any:
    """The one render loop, for every render and every sink: each piece into the opened ``sink``, then its
    ``commit()``, whose result is returned; on any failure its ``abort()``, and the failure goes on up. One of
    ``stops`` raised while rendering (Ctrl-C on an endless render, a listener gone) ends the render early: what was
    written is committed, or, if no piece had come, the sink is aborted and the stop goes on up. The pieces' iterator is
    closed either way (a live render then offloads its models)."""
    written = False
    try:
        for piece in pieces:
            # A stop raised inside a write comes after it: a sink holds signals until what it writes is whole.
            written = True
            sink.write(piece)
    except stops:
        if not written:
            sink.abort()
            raise
        logger.info("stopped early; keeping what was rendered")
    except BaseException:
        sink.abort()
        raise
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    return sink.commit()


class Tee:
    """Several sinks fed the same pieces (a live render written to a file and played); ``commit()`` returns the
    first one's result."""

    def __init__(self, *sinks: Sink):
        self.sinks = sinks

    def open(self, sample_rate: int, waveforms: int, recipe: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.open(sample_rate, waveforms, recipe)

    def write(self, piece: np.ndarray) -> None:
        for sink in self.sinks:
            sink.write(piece)

    def commit(self) -> Any:
        return [sink.commit() for sink in self.sinks][0]

    def abort(self) -> None:
        for sink in self.sinks:
            sink.abort()


_BLOCK = 1 << 16  # frames per read in the loudness pass
# Resampling quality: soxr's "HQ" (20-bit precision, passband to 91 % of Nyquist), its default.
RESAMPLE_QUALITY = "HQ"


class _Resampled:
    """Pieces (samples, channels) at ``rate`` as pieces at ``target``, through soxr's streaming resampler: the
    concatenation equals ``soxr.resample`` of the whole, sample for sample."""

    def __init__(self, rate: int, target: int, channels: int):
        self._stream = None
        if target != rate:
            import soxr

            self._stream = soxr.ResampleStream(rate, target, channels, dtype="float32", quality=RESAMPLE_QUALITY)

    def __call__(self, frames: np.ndarray, last: bool = False) -> np.ndarray:
        return frames if self._stream is None else self._stream.resample_chunk(frames, last=last)


def _frames(piece: np.ndarray, channels: int) -> np.ndarray:
    """A piece (waveforms, samples) as finite float32 frames (samples, channels)."""
    piece = np.asarray(piece, dtype=np.float32)
    if piece.ndim != 2 or piece.shape[0] != channels:
        raise ValueError(f"a piece must be (waveforms={channels}, samples), got {piece.shape}")
    if not np.isfinite(piece).all():
        raise ValueError("the audio contains NaN or inf")
    return np.ascontiguousarray(piece.T)


class ArraySink:
    """Collects the waveforms into one float32 array (waveforms, samples), at ``sample_rate`` if given (soxr)."""

    def __init__(self, sample_rate: int | None = None):
        if sample_rate is not None:
            check_sample_rate("wav", sample_rate)
        self.sample_rate = sample_rate
        self._pieces: list[np.ndarray] = []

    def open(self, sample_rate: int, waveforms: int, recipe: Mapping[str, Any]) -> None:
        self._channels = waveforms
        self._resample = _Resampled(sample_rate, self.sample_rate or sample_rate, waveforms)
        self._pieces = []

    def write(self, piece: np.ndarray) -> None:
        self._pieces.append(self._resample(_frames(piece, self._channels)))

    def commit(self) -> np.ndarray:
        self._pieces.append(self._resample(np.zeros((0, self._channels), np.float32), last=True))
        audio = np.concatenate(self._pieces).T
        self._pieces = []
        return np.ascontiguousarray(audio)

    def abort(self) -> None:
        self._pieces = []


class FileSink:
    """One waveform into the file ``path``, which appears only when the render succeeded.

    Args:
        path: the file; its extension names the format unless ``format`` does: .wav, .flac, .ogg, .opus, .mp3.
        format: one of ``FORMATS`` ("wav", "flac", "ogg", "opus", "mp3") whatever the extension.
        subtype: the sample encoding: WAV "PCM_16" (default), "PCM_24", "PCM_32", "FLOAT"; FLAC "PCM_16"
            (default), "PCM_24"; the lossy formats have one.
        sample_rate: the file's rate in Hz (default: the model's), through soxr's streaming resampler. Opus takes
            8, 12, 16, 24 or 48 kHz; MP3 its nine MPEG rates.
        loudness: a target integrated loudness in LUFS (ITU-R BS.1770-4 / EBU R128), e.g. -16 for podcasts, -23
            for broadcast. The render is measured whole, then scaled in a second pass over a temporary float
            copy beside the file (it needs that much more free space).
        true_peak: the highest true peak a loudness target may reach, in dBTP (default -1 with a target).
        tags: text written into the file's own metadata (``TAG_NAMES``: title, comment, software, ...), over
            what the render's recipe puts there (``recipe_tags``).
        overwrite: replace an existing file; with False an existing ``path`` is refused before anything runs.

    ``commit()`` returns a ``Delivered`` with what the written audio measures: integrated loudness, loudness range
    and true peak, whether or not a target was asked for.
    """

    def __init__(self, path: str | os.PathLike, *, format: str | None = None, subtype: str | None = None,
                 sample_rate: int | None = None, loudness: float | None = None, true_peak: float | None = None,
                 tags: Mapping[str, str] | None = None, overwrite: bool = True):
        self.path = Path(path)
        self.format, self.subtype, self.loudness, self.true_peak = check_delivery(
            self.path, format, subtype, sample_rate, loudness, true_peak)
        self.sample_rate = sample_rate
        self.tags = dict(tags or {})
        unknown = sorted(set(self.tags) - set(TAG_NAMES))
        if unknown:
            raise ValueError(f"`tags` may name {', '.join(TAG_NAMES)}; got {', '.join(unknown)}")
        self.overwrite = overwrite
        self._stack: contextlib.ExitStack | None = None
        self.check()

    def check(self, seconds: float | None = None, model_rate: int | None = None) -> None:
        """Fail now, not after the render, if the file cannot be written: the path, the rate the file would get
        from a model of ``model_rate``, and the free space for ``seconds`` of audio (with the loudness pass's
        temporary copy)."""
        size = None
        if model_rate is not None:
            check_sample_rate(self.format, self.sample_rate or model_rate)
            if seconds is not None:
                samples = seconds * (self.sample_rate or model_rate)
                per_sample = SAMPLE_BYTES.get(self.subtype, FORMATS[self.format].bytes_per_sample)
                size = int(samples * (per_sample + (4 if self.loudness is not None else 0))) + (1 << 16)
        check_output_path(self.path, overwrite=self.overwrite, suffix=None, size=size)

    # ------------------------------------------------------------------------------------------------ the protocol
    def open(self, sample_rate: int, waveforms: int, recipe: Mapping[str, Any]) -> None:
        if waveforms != 1:
            raise ValueError(f"a file holds one waveform; this render makes {waveforms}: give one prompt (or one "
                             "timeline) and num_waveforms_per_prompt=1")
        self.check(model_rate=sample_rate)
        rate = self.sample_rate or sample_rate
        self._rate, self._frames = rate, 0
        self._resample = _Resampled(sample_rate, rate, 1)
        self._meter = LoudnessMeter(rate)
        self._recipe = dict(recipe)
        self._tags = {**recipe_tags(recipe), **self.tags}
        self._stack = contextlib.ExitStack()
        try:
            if self.loudness is None:
                self._file = self._open_output(self._tags)
            else:
                folder = self.path.resolve().parent
                self._raw = self._stack.enter_context(tempfile.TemporaryFile(dir=folder, prefix=".loudness."))
        except BaseException:
            self.abort()  # not a plain close: that would move the half-made file onto an existing one
            raise

    def write(self, piece: np.ndarray) -> None:
        self._take(self._resample(_frames(piece, 1)))

    def commit(self) -> Delivered:
        self._take(self._resample(np.zeros((0, 1), np.float32), last=True))
        measured, gain = self._meter.result(), 0.0
        with self._failing_as_abort():
            if self.loudness is not None:
                gain = loudness_gain(measured, self.loudness, self.true_peak)
                self._file = self._open_output(self._tags)
                measured = self._scaled_copy(10 ** (gain / 20))
            self._file.close()
        stack, self._stack = self._stack, None
        with self._full_disk_named():
            stack.close()  # the atomic file is moved into place here
        return Delivered(self.path, self._rate, self._frames, measured, gain, self._recipe)

    def abort(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.__exit__(_Aborted, _Aborted(), None)  # the temporary files are removed; nothing is raised

    # ------------------------------------------------------------------------------------------------------ inside
    def _open_output(self, tags: Mapping[str, str]) -> sf.SoundFile:
        tmp = self._stack.enter_context(atomic_file(self.path, self.overwrite))
        self._tmp = tmp
        spec = FORMATS[self.format]
        with self._full_disk_named():
            file = sf.SoundFile(tmp, "w", samplerate=self._rate, channels=1, format=spec.name, subtype=self.subtype)
        self._stack.callback(file.close)
        for name, text in tags.items():
            if text:
                setattr(file, name, str(text))
        return file

    def _take(self, frames: np.ndarray) -> None:
        """Measure resampled frames and write them: to the file, or unscaled to the loudness pass's copy."""
        if not frames.size:
            return
        self._meter.add(frames)
        self._frames += frames.shape[0]
        with self._failing_as_abort(), self._full_disk_named():
            if self.loudness is None:
                self._file.write(np.clip(frames, -1.0, 1.0))
            else:
                self._raw.write(frames.astype("<f4").tobytes())

    def _scaled_copy(self, scale: float) -> Loudness:
        """Read the unscaled copy block by block, scale it into the file, and measure what was written."""
        meter = LoudnessMeter(self._rate)
        self._raw.flush()
        self._raw.seek(0)
        while True:
            block = np.frombuffer(self._raw.read(_BLOCK * 4), dtype="<f4")
            if not block.size:
                break
            frames = (block * np.float32(scale)).reshape(-1, 1)
            meter.add(frames)
            with self._full_disk_named():
                self._file.write(np.clip(frames, -1.0, 1.0))
        return meter.result()

    @contextlib.contextmanager
    def _failing_as_abort(self):
        """A failure while writing aborts the sink (temporary files removed) before it propagates."""
        try:
            yield
        except BaseException:
            self.abort()
            raise

    @contextlib.contextmanager
    def _full_disk_named(self):
        """libsndfile reports a full disk as "System error."; say what it is, with the path."""
        try:
            yield
        except sf.LibsndfileError as error:
            folder = self.path.resolve().parent
            if shutil.disk_usage(folder).free < _FULL:
                raise OutputError(errno.ENOSPC, f"no space left on device writing {str(self.path)!r}") from None
            raise OutputError(errno.EIO, f"could not write {str(self.path)!r}: {error}") from None


class _Aborted(Exception):
    """Handed to the atomic file's context so that it removes its temporary file."""


# Free space under which a failed write is taken for a full disk: below any block this library writes.
_FULL = 1 << 20
