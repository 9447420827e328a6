"""WAV written as it is rendered: into a pipe (standard output), or into a file that is a valid WAV after every
piece and can be appended to later (a live render that resumes or extends).

The header is the canonical 44-byte RIFF/WAVE one. A stream's length is not known when its header goes out, so
its RIFF and data sizes are 0xFFFFFFFF, the "unknown length" that sox, ffmpeg and libsndfile read up to the end
of the stream. A file's sizes are rewritten after every piece, so a player, or a resumed render, finds every whole
sample frame written so far.
"""

from __future__ import annotations

import errno
import io
import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from .audio import SUBTYPE_BYTES, SUBTYPES
from .constants import SAMPLE_RATE

HEADER_BYTES = 44
UNKNOWN_SIZE = 0xFFFFFFFF
_PCM, _IEEE_FLOAT = 1, 3


def wav_header(sample_rate: int, subtype: str = "PCM_16", channels: int = 1, frames: int | None = None) -> bytes:
    """The 44-byte header of a WAV holding ``frames`` sample frames (None: a stream of unknown length)."""
    if subtype not in SUBTYPES:
        raise ValueError(f"subtype must be one of {SUBTYPES}, got {subtype!r}")
    width = SUBTYPE_BYTES[subtype]
    data = UNKNOWN_SIZE if frames is None else frames * channels * width
    riff = UNKNOWN_SIZE if frames is None else HEADER_BYTES - 8 + data
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16,
                       _IEEE_FLOAT if subtype == "FLOAT" else _PCM, channels, sample_rate,
                       sample_rate * channels * width, channels * width, 8 * width, b"data", data)


def sample_bytes(samples: np.ndarray, subtype: str = "PCM_16") -> bytes:
    """Float samples (frames,) or (frames, channels) as WAV data, converted by libsndfile as ``soundfile.write``
    converts them, so a live render's file holds what any other render's would."""
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(samples, dtype=np.float32), SAMPLE_RATE, subtype=subtype, format="RAW",
             endian="LITTLE")
    return buffer.getvalue()


class WavStream:
    """A WAV of unknown length written to a binary stream (``sys.stdout.buffer``), flushed after every piece."""

    def __init__(self, stream: BinaryIO, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16", channels: int = 1):
        self.stream, self.subtype = stream, subtype
        self.stream.write(wav_header(sample_rate, subtype, channels))
        self.stream.flush()

    def write(self, samples: np.ndarray) -> None:
        self.stream.write(sample_bytes(samples, self.subtype))
        self.stream.flush()


class BusyError(OSError):
    """Another process is writing the file."""


def lock_for_writing(file, path: str | os.PathLike) -> None:
    """Hold an exclusive lock on ``file`` for as long as it is open, or raise ``BusyError`` at once if another
    process holds one (where the system has no ``fcntl``, nothing is locked)."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BusyError(errno.EBUSY, f"another render is writing {str(path)!r} now; wait for it, or give another "
                        "output") from None


class GrowingWav:
    """A WAV file appended to piece by piece, its header true after every piece.

    ``resume=True`` opens an existing file this class wrote (same rate, subtype and channels), drops a sample
    frame cut short by a crash, and appends after the last whole one.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16",
                 channels: int = 1, resume: bool = False, mode: int = 0o644):
        self.path, self.sample_rate, self.subtype, self.channels = Path(path), sample_rate, subtype, channels
        self.frame_bytes = SUBTYPE_BYTES[subtype] * channels
        # Held open across pieces (closed by close()), and locked while held: a second writer is refused before it
        # can change a byte (the lock goes with the process, so a killed render leaves none behind).
        fd = os.open(self.path, os.O_RDWR | (0 if resume else os.O_CREAT), mode)
        self.file = os.fdopen(fd, "r+b")
        try:
            lock_for_writing(self.file, self.path)
            self.frames = self._whole_frames() if resume else 0
        except BaseException:
            self.file.close()
            raise
        self.file.truncate(HEADER_BYTES + self.frames * self.frame_bytes)
        self._commit()

    def _whole_frames(self) -> int:
        header = self.file.read(HEADER_BYTES)
        expected = wav_header(self.sample_rate, self.subtype, self.channels, 0)
        if len(header) < HEADER_BYTES or header[:4] != b"RIFF" or header[8:36] != expected[8:36] or \
                header[36:40] != b"data":
            raise ValueError(f"{str(self.path)!r} is not a {self.subtype} WAV at {self.sample_rate} Hz with "
                             f"{self.channels} channel(s) written by a live render; it cannot be continued")
        declared = struct.unpack("<I", header[40:44])[0]
        present = os.fstat(self.file.fileno()).st_size - HEADER_BYTES
        return min(declared, present) // self.frame_bytes

    def write(self, samples: np.ndarray) -> None:
        """Append ``samples`` (frames,) or (frames, channels), then make the header say so."""
        data = sample_bytes(samples, self.subtype)
        self.file.seek(HEADER_BYTES + self.frames * self.frame_bytes)
        self.file.write(data)
        self.frames += len(data) // self.frame_bytes
        self._commit()

    def _commit(self) -> None:
        self.file.seek(0)
        self.file.write(wav_header(self.sample_rate, self.subtype, self.channels, self.frames))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> GrowingWav:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
