"""Audio in and out: AudioLDM's log-mel front end (reading any file soundfile reads), and atomic WAV writing
(whole or incremental) with soundfile."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from .constants import F_MAX, F_MIN, HOP_LENGTH, LOG_MEL_FLOOR, N_FFT, N_MELS, SAMPLE_RATE, WIN_LENGTH

logger = logging.getLogger(__name__)

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
    a multiple of ``multiple`` frames so that every sample of the input is encoded."""
    mel = log_mel(normalize_peak(waveform), settings)
    pad = -mel.shape[0] % multiple
    mel = torch.cat([mel, mel.new_full((pad, mel.shape[1]), math.log(settings.floor))])
    return mel[None, None]
