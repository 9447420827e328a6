"""Audio files: atomic WAV writing (whole or incremental) with soundfile."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from .constants import SAMPLE_RATE

SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "FLOAT")


def check_output_path(path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Fail now, not after a long generation, if ``path`` cannot be written."""
    path = Path(path)
    if path.suffix.lower() != ".wav":
        raise ValueError(f"output path must end in .wav, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"output path {str(path)!r} is a directory")
    if path.exists() and not overwrite:
        raise ValueError(f"output path {str(path)!r} exists (pass overwrite=True or --overwrite to replace it)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} of the output path does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"folder {str(folder)!r} of the output path is not writable")
    return path


def _as_frames(audio: np.ndarray) -> np.ndarray:
    """float32 (samples,) or (samples, channels); clipped to [-1, 1] so integer subtypes never wrap."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must have shape (samples,) or (samples, channels), got {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or inf")
    return np.clip(audio, -1.0, 1.0)


@contextlib.contextmanager
def open_wav(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16",
             channels: int = 1) -> Iterator[sf.SoundFile]:
    """A soundfile writer on a temporary file beside ``path``, renamed onto ``path`` only if the block succeeds.

    An interrupted or failed write leaves no partial file and does not touch an existing ``path``.
    """
    if subtype not in SUBTYPES:
        raise ValueError(f"subtype must be one of {SUBTYPES}, got {subtype!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=channels, subtype=subtype, format="WAV") as f:
            yield _ClippingWriter(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class _ClippingWriter:
    """Writes float blocks to a SoundFile, clipped to [-1, 1]; counts frames written."""

    def __init__(self, file: sf.SoundFile):
        self.file = file
        self.frames = 0

    def write(self, audio: np.ndarray) -> None:
        block = _as_frames(audio)
        self.file.write(block)
        self.frames += block.shape[0]


def save_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE,
             subtype: str = "PCM_16") -> Path:
    """Write ``audio`` (samples,) or (samples, channels), float in [-1, 1], to a WAV file atomically.

    Values are clipped to [-1, 1] before integer conversion. ``subtype`` is a soundfile subtype: "PCM_16"
    (default), "PCM_24", "PCM_32" or "FLOAT".
    """
    frames = _as_frames(audio)
    with open_wav(path, sample_rate, subtype, channels=1 if frames.ndim == 1 else frames.shape[1]) as writer:
        writer.write(frames)
    return Path(path)
