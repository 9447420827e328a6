"""Where a live render's pieces go (``sinks`` has the protocol and the one loop, ``drive``): the WAV file that
grows window by window and resumes after a crash (``LiveFileSink``), a WAV stream of unknown length into a pipe
(``WavStreamSink``), the sound card (``PlayerSink``), or a function called with each piece (``CallbackSink``);
``LoudnessFollower`` in front of any of them brings what is heard towards a loudness target as it goes."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .files import OutputError, check_output_path, commit_file, name_problem, new_file_mode, signals_deferred, target_of
from .wav_stream import lock_for_writing

logger = logging.getLogger(__name__)


class ListenerGone(Exception):
    """The reader of a stream went away (the player was closed): a stop, not a failure."""


def live_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """The files beside a live render's output ``NAME.wav``: ``NAME.wav.part``, the audio so far (a valid WAV
    after every window), and ``NAME.wav.live``, where the render stands (``live.LiveState``). The part becomes
    ``NAME.wav`` when the render ends; the state stays, so that the render can be extended later. Through a
    symbolic link they lie beside the file it leads to, on its filesystem."""
    path = target_of(Path(path))
    return path.with_name(path.name + ".part"), path.with_name(path.name + ".live")


def check_live_output(path: str | os.PathLike, overwrite: bool = True, resume: bool = False,
                      size: int | None = None):
    """Before any model work: that ``path`` and the files beside it can be written (names, folder, free space
    for ``size`` bytes beyond what the part already holds), that no other render is writing them, and what a
    resume needs. Returns the saved ``LiveState`` to go on from, or None for a new render.

    A part without a state (a render stopped before its first whole window) holds nothing to go on from: a new
    render replaces it, and ``resume`` says so."""
    from .live import LiveState

    part, state_path = live_files(path)
    for name in (part, state_path):
        problem = name_problem(name)
        if problem:
            raise ValueError(f"{problem} (a live render writes {part.name} and {state_path.name} beside it)")
    held = part.stat().st_size if part.is_file() else 0
    check_output_path(path, overwrite=overwrite or resume, size=None if size is None else max(0, size - held))
    if part.exists():
        with open(part, "rb") as file:  # refused at once while another render holds it
            lock_for_writing(file, part)
    if state_path.exists() and not state_path.is_file():
        raise ValueError(f"{str(state_path)!r} is not a file (a live render's saved state is one file)")
    if resume:
        if not state_path.is_file():
            if part.exists():
                raise ValueError(f"nothing to resume for {str(path)!r}: {part.name} holds no whole window (the "
                                 "render stopped in its first); start again without --resume")
            raise ValueError(f"nothing to resume for {str(path)!r}: {state_path.name} is missing (a live render "
                             "writes it after every window)")
        state = LiveState.load(state_path)
        if not part.exists() and not Path(path).is_file():
            raise ValueError(f"nothing to resume for {str(path)!r}: neither it nor {part.name} exists")
        return state
    if part.exists():
        if state_path.is_file():
            raise ValueError(f"{str(part)!r} holds an unfinished live render: continue it (--resume, resume=True) "
                             "or remove it")
        logger.info("%s holds no whole window: starting again", part)
        part.unlink()
    return None


class LiveFileSink:
    """A live render's WAV ``path``, grown in ``NAME.wav.part`` (a valid WAV after every window) with the render's
    state after each whole window saved to ``NAME.wav.live`` (``render.live_files``), so that a render killed at
    any moment goes on from its last window. ``commit()`` moves the part onto ``path``; ``abort()`` keeps it for a
    resume, unless nothing was written.

    Args:
        render: the ``LiveRender`` whose pieces come (its samples and state are read after each).
        resume: go on with the part after a crash, or with the finished ``path`` (copied to the part first) to
            extend it; the samples the file holds are not written again.
        keep: samples the finished file holds; None for an endless render.
    """

    def __init__(self, path: str | os.PathLike, render, subtype: str = "PCM_16", resume: bool = False,
                 overwrite: bool = True, keep: int | None = None):
        self.path, self.render, self.subtype = Path(path), render, subtype
        self.resume, self.overwrite, self.keep = resume, overwrite, keep
        self.part, self.state_path = live_files(path)
        self._writer = None

    def open(self, sample_rate: int, waveforms: int, recipe: Mapping[str, Any]) -> None:
        from .wav_stream import GrowingWav

        self._copied = self.resume and not self.part.exists()
        if self._copied:  # extend a finished render: the file itself changes only once this succeeds
            copying = self.part.with_name(self.part.name + ".copying")
            try:  # whole or not at all: an interrupted copy is no part to resume from
                shutil.copy2(self.path, copying)
                os.replace(copying, self.part)
            finally:
                copying.unlink(missing_ok=True)
        try:
            self._writer = GrowingWav(self.part, sample_rate, self.subtype, resume=self.resume,
                                      mode=new_file_mode(self.path))
        except BaseException:
            self._drop_copy()
            raise
        written, state = self._writer.frames, self.render.state
        self._opened_with = written
        if self.resume and written < state.samples:
            self.abort()
            raise ValueError(f"{str(self.part)!r} holds {written} samples, fewer than its state's {state.samples}; "
                             "it cannot be resumed")
        if self.keep is not None and written > self.keep:
            self.abort()
            raise ValueError(f"{str(self.part)!r} already holds {written / sample_rate:g} s, more than the "
                             f"{self.keep / sample_rate:g} s asked for")
        self._position, self._saved = self.render.samples, self.render.state  # the first sample to come, the state

    def write(self, piece: np.ndarray) -> None:
        start, self._position = self._position, self.render.samples
        piece = piece[0, max(0, self._writer.frames - start) :]  # what the file holds already is not written again
        try:
            with signals_deferred():  # Ctrl-C waits for the piece, its header and its state
                if piece.size:
                    self._writer.write(piece)
                if self.render.state is not self._saved:
                    self._saved = self.render.state
                    self._saved.save(self.state_path)
        except OSError as error:
            if error.errno != errno.ENOSPC or self._writer.frames == 0:
                raise
            # A full disk ends the render as a stop does: what the header counts is kept, with the last state saved
            # (a piece whose state could not be saved is skipped when the render resumes).
            seconds = self._writer.frames / self._writer.sample_rate
            self.commit()
            raise OutputError(errno.ENOSPC, f"no space left on device after {seconds:.1f} s: they are kept in "
                              f"{str(self.path)!r} with their state; --resume goes on once there is room") from None

    @property
    def frames(self) -> int:
        return 0 if self._writer is None else self._writer.frames

    def commit(self) -> Path:
        self._writer.close()
        try:
            commit_file(self.part, self.path, overwrite=self.overwrite or self.resume)
        except OutputError as error:  # a file appeared at the path meanwhile, under --no-overwrite
            raise OutputError(error.errno, f"{error}; it is kept in {str(self.part)!r}") from None
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            if not self.resume and self._writer.frames == 0:  # nothing rendered: nothing to resume either
                self.part.unlink(missing_ok=True)
            elif self._writer.frames <= self._opened_with:  # a refused or stopped extension added nothing
                self._drop_copy()
            self._writer = None

    def _drop_copy(self) -> None:
        """A copy of the finished file made for an extension that added nothing goes: the file is still there,
        and a copy left behind would block every later render of it."""
        if getattr(self, "_copied", False):
            self.part.unlink(missing_ok=True)


class WavStreamSink:
    """A WAV of unknown length into a pipe (``-o -``: standard output, for ``sox -t wav - -d`` or ``ffplay -``).
    When the reader closes the pipe, the render ends quietly (``ListenerGone``, a stop); ``commit()`` returns the
    samples written."""

    def __init__(self, stream: BinaryIO, subtype: str = "PCM_16"):
        self.stream, self.subtype, self.samples = stream, subtype, 0

    def open(self, sample_rate: int, waveforms: int, recipe: Mapping[str, Any]) -> None:
        from .wav_stream import WavStream

        with self._listener_gone_on_broken_pipe():  # the header: a reader gone before it (`-o - | true`)
            self._writer = WavStream(self.stream, sample_rate, self.subtype)

    def write(self, piece: np.ndarray) -> None:
        with self._listener_gone_on_broken_pipe():
            self._writer.write(piece[0])
        self.samples += piece.shape[1]

    @contextlib.contextmanager
    def _listener_gone_on_broken_pipe(self):
        try:
            yield
        except BrokenPipeError:  # the player was closed: the listener has stopped
            with contextlib.suppress(OSError, ValueError):  # nothing more can go into the pipe, at exit neither
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
            raise ListenerGone() from None

    def commit(self) -> int:
        return self.samples

    def abort(self) -> None:
        pass


class PlayerSink:
    """The default sound card, each piece played as it comes (blocking while it plays): needs ``sounddevice`` and
    PortAudio (``pip install 'audioldm-tiled[play]'``), checked when the sink is made; a machine without an output
    device is named when it opens."""

    def __init__(self):
        try:
            import sounddevice
        except (ImportError, OSError) as error:  # OSError: the package is there but PortAudio is not
            raise ImportError(f"playing needs the sounddevice package and PortAudio: pip install "
                              f"'audioldm-tiled[play]' ({error})") from None
        self._sounddevice, self._stream = sounddevice, None

    def open(self, sample_rate: int, waveforms: int, recipe: Mapping[str, Any]) -> None:
        try:
            self._stream = self._sounddevice.OutputStream(samplerate=sample_rate, channels=1, dtype="float32")
            self._stream.start()
        except Exception as error:  # noqa: BLE001 - PortAudioError and its kin: no device, a busy one
            self._stream = None
            raise OSError(f"cannot play on the sound card: {error}") from None

    def write(self, piece: np.ndarray) -> None:
        self._stream.write(np.ascontiguousarray(piece[0], dtype=np.float32).reshape(-1, 1))

    def commit(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class CallbackSink:
    """``function(samples)`` with each piece's first waveform."""

    def __init__(self, function: Callable[[np.ndarray], object]):
        self.function = function

    def open(self, sample_rate: int, waveforms: int, recipe: Mapping[str, Any]) -> None:
        pass

    def write(self, piece: np.ndarray) -> None:
        if piece.size:
            self.function(piece[0])

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass


class LoudnessFollower:
    """A sink in front of another that brings a live render towards ``target`` LUFS as it is heard: each piece is
    scaled by a gain that follows the integrated loudness measured so far (of the unscaled render), moving by at
    most ``step_db`` per piece (a ramp across the piece: no click) within ``range_db`` either way, and lowered
    where a piece's sample peak would pass ``peak_db``. Integrated loudness needs the whole signal, which a live
    render never has: the first 0.4 s keep their level, a change in the sound reaches the gain a few pieces later,
    and the result ends near the target, not on it (``docs/delivery.md``)."""

    def __init__(self, sink, target: float, peak_db: float = -1.0, step_db: float = 1.0, range_db: float = 20.0):
        self.sink, self.target, self.peak_db = sink, target, peak_db
        self.step_db, self.range_db = step_db, range_db
        self.gain_db = 0.0

    def open(self, sample_rate: int, waveforms: int, recipe: Mapping[str, Any]) -> None:
        from .loudness import LoudnessMeter

        self._meter = LoudnessMeter(sample_rate)
        self.sink.open(sample_rate, waveforms, recipe)

    def write(self, piece: np.ndarray) -> None:
        self._meter.add(piece[0])
        so_far = self._meter.integrated_so_far()
        wanted = self.gain_db if so_far is None else min(self.range_db, max(-self.range_db, self.target - so_far))
        gain = self.gain_db + min(self.step_db, max(-self.step_db, wanted - self.gain_db))
        ramp = np.linspace(10 ** (self.gain_db / 20), 10 ** (gain / 20), piece.shape[1], dtype=np.float32)
        scaled = piece * ramp
        peak, limit = float(np.abs(scaled).max(initial=0.0)), 10 ** (self.peak_db / 20)
        if peak > limit:
            scaled *= limit / peak
            gain -= 20 * np.log10(peak / limit)
        self.gain_db = gain
        self.sink.write(scaled)

    def commit(self) -> Any:
        return self.sink.commit()

    def abort(self) -> None:
        self.sink.abort()
