"""Audio in and out: AudioLDM's log-mel front end (reading any file soundfile reads), and atomic WAV writing
(whole or incremental) with soundfile."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from .constants import F_MAX, F_MIN, HOP_LENGTH, LOG_MEL_FLOOR, N_FFT, N_MELS, SAMPLE_RATE, WIN_LENGTH
from .files import OutputError, atomic_file

logger = logging.getLogger(__name__)

MAX_CHANNELS = 16  # more "channels" than this is an array given as (channels, samples)
SUBTYPE_BYTES = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4}  # bytes per sample
SUBTYPES = tuple(SUBTYPE_BYTES)
WAV_HEADER_BYTES = 44


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
             channels: int = 1, overwrite: bool = True) -> Iterator[WavWriter]:
    """A writer whose blocks go into a WAV file that appears at ``path`` only if the block succeeds
    (``files.atomic_file``: a failed or interrupted write leaves no partial file and an existing one intact).

    Raises:
        OutputError: the disk filled ("no space left on device"), or ``path`` appeared meanwhile and
            ``overwrite`` is False.
    """
    if subtype not in SUBTYPES:
        raise ValueError(f"subtype must be one of {SUBTYPES}, got {subtype!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    with atomic_file(path, overwrite) as tmp:
        try:
            with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=channels, subtype=subtype,
                              format="WAV") as f:
                yield WavWriter(f)
        except sf.LibsndfileError as error:  # libsndfile says "System error." where the OS said ENOSPC
            if shutil.disk_usage(tmp.parent).free < _FULL:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            raise OutputError(errno.EIO, f"could not write {str(path)!r}: {error}") from None


# Free space under which a failed write is taken for a full disk: below any block this library writes.
_FULL = 1 << 20


def wav_bytes(samples: float, subtype: str = "PCM_16", channels: int = 1) -> int:
    """The size of a WAV file of ``samples`` frames: what a render of known length needs on disk."""
    return WAV_HEADER_BYTES + int(samples) * channels * SUBTYPE_BYTES[subtype]


class WavWriter:
    """Writes float blocks to a SoundFile, clipped to [-1, 1]; counts frames written."""

    def __init__(self, file: sf.SoundFile):
        self.file = file
        self.frames = 0

    def write(self, audio: np.ndarray) -> None:
        block = _as_frames(audio)
        self.file.write(block)
        self.frames += block.shape[0]


def save_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE,
             subtype: str = "PCM_16", overwrite: bool = True) -> Path:
    """Write ``audio`` (samples,) or (samples, channels), float in [-1, 1], to a WAV file atomically.

    Values are clipped to [-1, 1] before integer conversion. ``subtype`` is a soundfile subtype: "PCM_16"
    (default), "PCM_24", "PCM_32" or "FLOAT".
    """
    frames = _as_frames(audio)
    channels = 1 if frames.ndim == 1 else frames.shape[1]
    with open_wav(path, sample_rate, subtype, channels=channels, overwrite=overwrite) as writer:
        writer.write(frames)
    return Path(path)


# ------------------------------------------------------------------------------------------------------ front end
@dataclass(frozen=True)
class MelSettings:
    """AudioLDM's log-mel: STFT magnitude (Hann window, reflect padding of n_fft / 2 per side), Slaney mel filters,
    ``log(clamp(mel, floor))``. Sample rate, hop and mel count come from the vocoder's config (``from_vocoder``);
    n_fft, window and band edges are not in any diffusers config, and are the original's (constants.py)."""

    sample_rate: int = SAMPLE_RATE
    hop_length: int = HOP_LENGTH
    n_mels: int = N_MELS
    n_fft: int = N_FFT
    win_length: int = WIN_LENGTH
    f_min: float = F_MIN
    f_max: float = F_MAX
    floor: float = LOG_MEL_FLOOR

    @classmethod
    def from_vocoder(cls, vocoder) -> MelSettings:
        from .vocoder import hop_length

        return cls(sample_rate=int(vocoder.config.sampling_rate), hop_length=hop_length(vocoder),
                   n_mels=int(vocoder.config.model_in_dim))


def load_audio(source: str | os.PathLike | np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE,
               source_rate: int | None = None) -> np.ndarray:
    """Mono float32 samples at ``sample_rate`` from a file (any format soundfile reads) or an array.

    Channels are averaged; other rates are resampled with a polyphase filter (scipy's ``resample_poly``). An array
    is (samples,) or (samples, channels) at ``source_rate`` (default: ``sample_rate``), as soundfile returns it.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"audio file {str(path)!r} does not exist")
        try:
            samples, source_rate = sf.read(path, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as error:
            raise ValueError(f"cannot read audio file {str(path)!r}: {error}") from None
    else:
        samples = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else np.asarray(source)
        if samples.ndim not in (1, 2) or not np.issubdtype(samples.dtype, np.number):
            raise ValueError(f"audio must be numeric with shape (samples,) or (samples, channels), got "
                             f"{samples.dtype} {samples.shape}")
        if samples.size == 0:
            raise ValueError("audio is empty (0 samples)")
        if samples.ndim == 2 and samples.shape[1] > MAX_CHANNELS:
            raise ValueError(f"audio must be (samples,) or (samples, channels) as soundfile returns it; "
                             f"{samples.shape} would be {samples.shape[1]} channels: for (channels, samples) pass "
                             "audio.T")
        samples = samples.astype(np.float32).reshape(samples.shape[0], -1)
        source_rate = sample_rate if source_rate is None else source_rate
    if samples.shape[0] == 0:
        raise ValueError("audio is empty (0 samples)")
    if not np.isfinite(samples).all():
        raise ValueError("audio contains NaN or inf")
    mono = samples.mean(axis=1)
    if source_rate != sample_rate:
        common = math.gcd(int(source_rate), int(sample_rate))
        mono = resample_poly(mono, sample_rate // common, int(source_rate) // common).astype(np.float32)
    return mono


def normalize_peak(waveform: np.ndarray, peak: float = 0.5) -> np.ndarray:
    """Remove the mean and scale the peak to ``peak``, as AudioLDM's data loader does; silence stays silent
    (with a warning: the result will be whatever the prompt makes of nothing)."""
    centred = waveform - waveform.mean()
    top = float(np.abs(centred).max())
    if top < 1e-6:
        logger.warning("the input audio is silent (peak %.1e)", top)
    return (centred / (top + 1e-8) * peak).astype(np.float32)


def log_mel(waveform: np.ndarray | torch.Tensor, settings: MelSettings = MelSettings()) -> torch.Tensor:
    """AudioLDM's log-mel of mono samples: float32 (frames, n_mels) with frames = samples // hop + 1."""
    wave = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
    window = torch.hann_window(settings.win_length)
    spec = torch.stft(wave, settings.n_fft, settings.hop_length, settings.win_length, window, center=True,
                      pad_mode="reflect", return_complex=True).abs()
    basis = torch.from_numpy(librosa.filters.mel(sr=settings.sample_rate, n_fft=settings.n_fft,
                                                 n_mels=settings.n_mels, fmin=settings.f_min, fmax=settings.f_max))
    mel = basis @ spec
    return torch.log(mel.clamp(min=settings.floor)).T.contiguous()


def mel_for_vae(waveform: np.ndarray, settings: MelSettings, multiple: int) -> torch.Tensor:
    """Peak-normalised log-mel as the VAE takes it, (1, 1, frames, n_mels), padded with silence (the log floor) to
    a multiple of ``multiple`` frames so that every sample of the input is encoded. The STFT needs more than
    n_fft / 2 samples: a shorter input is padded with silence to n_fft first."""
    if waveform.shape[0] < settings.n_fft:
        waveform = np.pad(waveform, (0, settings.n_fft - waveform.shape[0]))
    mel = log_mel(normalize_peak(waveform), settings)
    pad = -mel.shape[0] % multiple
    mel = torch.cat([mel, mel.new_full((pad, mel.shape[1]), math.log(settings.floor))])
    return mel[None, None]
