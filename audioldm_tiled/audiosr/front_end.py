"""AudioSR's front end, as the original computes it (``audiosr`` 0.0.7: ``utils.read_wav_file``,
``mel_spectrogram_train``, ``_locate_cutoff_freq``, ``lowpass_filtering_prepare_inference`` and ``lowpass.py``):

1. the input at 48 kHz, its mean removed and its peak scaled to 0.5, padded with zeros to a multiple of 5.12 s;
2. its magnitude STFT (2048 points, Hann window, hop 480, the signal reflected by 784 samples at each end) and
   log-mel (256 bands, 20 Hz to 24 kHz, natural log clamped at 1e-5);
3. the cutoff: the highest STFT bin below which 98.5 % of the magnitude summed over the whole recording lies
   (below 1 kHz the recording is taken as empty and nothing is cut);
4. the low-passed input the model is conditioned on: an order-8 IIR low-pass at the cutoff, run forwards and
   backwards (``sosfiltfilt``), then a resampling down to twice the cutoff and back (``resample_poly``), then the
   low-pass again. Its type (Butterworth, Chebyshev I, elliptic or Bessel) the original draws from NumPy's global
   generator right after seeding it with the render's seed: ``filter_type(seed)`` draws the same one.

Each of these reads the whole recording: the mean and peak, the cutoff, and the IIR filters, whose response has no
end. They are computed here over the whole input.
"""

from __future__ import annotations

import numpy as np
import torch

from .components import HOP_LENGTH, MEL_FMAX, MEL_FMIN, N_FFT, N_MELS, SAMPLE_RATE

CLIP_SECONDS = 5.12  # the input is padded to a whole number of these
FILTER_TYPES = ("butter", "cheby1", "ellip", "bessel")
FILTER_ORDER = 8
CUTOFF_SHARE = 0.985  # of the magnitude below the cutoff
MIN_CUTOFF_HZ = 1000.0  # a lower cutoff: a recording with next to nothing in it, left whole
_mel_bases: dict[tuple[str, torch.dtype], torch.Tensor] = {}


def prepared(waveform: np.ndarray) -> np.ndarray:
    """The original's input (``read_wav_file`` after resampling): mean removed, peak at 0.5, zeros to a multiple of
    5.12 s. ``waveform``: float (samples,) at 48 kHz."""
    waveform = np.asarray(waveform, dtype=np.float32)
    waveform = waveform - np.mean(waveform)
    waveform = waveform / (np.max(np.abs(waveform)) + 1e-8) * 0.5
    clip = round(CLIP_SECONDS * SAMPLE_RATE)
    padded = np.zeros(-(-waveform.shape[0] // clip) * clip, dtype=np.float32)
    padded[: waveform.shape[0]] = waveform
    return padded


def magnitude_and_log_mel(waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(magnitude (B, frames, 1024), log-mel (B, frames, 256)) of ``waveform`` (B, samples) at 48 kHz: one frame
    per 480 samples. The STFT's last bin (24 kHz) is dropped, as the original drops it."""
    pad = (N_FFT - HOP_LENGTH) // 2
    padded = torch.nn.functional.pad(waveform.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    return frames_magnitude_and_log_mel(padded)


def frames_magnitude_and_log_mel(padded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``magnitude_and_log_mel`` of the frames that ``padded`` (B, samples), a stretch of the reflected signal
    starting on a frame, holds whole."""
    import librosa

    key = (str(padded.device), padded.dtype)
    if key not in _mel_bases:
        basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=MEL_FMIN, fmax=MEL_FMAX)
        _mel_bases[key] = torch.from_numpy(basis).to(padded.device, padded.dtype)
    window = torch.hann_window(N_FFT, device=padded.device, dtype=padded.dtype)
    magnitude = torch.stft(padded, N_FFT, hop_length=HOP_LENGTH, win_length=N_FFT, window=window, center=False,
                           normalized=False, onesided=True, return_complex=True).abs()
    log_mel = torch.log(torch.clamp(_mel_bases[key] @ magnitude, min=1e-5))
    return magnitude.transpose(1, 2)[..., :-1], log_mel.transpose(1, 2)


def cutoff_bin(magnitude: torch.Tensor, share: float = CUTOFF_SHARE) -> int:
    """The highest bin (at least 1) whose cumulative magnitude, summed over frames (magnitude: (frames, bins)), is
    below ``share`` of the total; 0 if there is none."""
    return cutoff_bin_of_sums(magnitude.sum(dim=0), share)


def cutoff_bin_of_sums(sums: torch.Tensor, share: float = CUTOFF_SHARE) -> int:
    """``cutoff_bin`` from the magnitude already summed over frames (bins,)."""
    energy = torch.cumsum(torch.as_tensor(sums), dim=0)
    below = torch.nonzero(energy[1:] < energy[-1] * share).flatten()
    return int(below[-1]) + 1 if below.numel() else 0


def cutoff_hz(magnitude: torch.Tensor) -> float:
    """The low-pass cutoff for a recording of STFT ``magnitude`` (frames, 1024): 24 kHz where it is below 1 kHz."""
    return cutoff_hz_of_sums(magnitude.sum(dim=0))


def cutoff_hz_of_sums(sums: torch.Tensor) -> float:
    """``cutoff_hz`` from the magnitude already summed over frames (1024,)."""
    hz = cutoff_bin_of_sums(sums) / sums.shape[-1] * SAMPLE_RATE / 2
    return SAMPLE_RATE / 2 if hz < MIN_CUTOFF_HZ else hz


def filter_type(seed: int) -> str:
    """The low-pass type the original uses for a render seeded with ``seed``: NumPy's legacy generator, seeded
    as the original seeds the global one, drawing once."""
    return str(np.random.RandomState(seed).choice(FILTER_TYPES))


def low_passed(waveform: np.ndarray, cutoff: float, kind: str) -> np.ndarray:
    """``waveform`` (samples,) at 48 kHz through the original's low-pass at ``cutoff`` Hz (``lowpass.lowpass``
    with order 8): IIR forwards and backwards, down to twice the cutoff and back up, IIR again. At 24 kHz the
    filters' normalised frequency is 1, which SciPy refuses: there the input is returned as it is."""
    from scipy import signal

    sos, down = low_pass_design(cutoff, kind)
    if sos is None:
        return np.asarray(waveform, dtype=np.float64)
    filtered = signal.sosfiltfilt(sos, waveform)
    resampled = signal.resample_poly(signal.resample_poly(filtered, down, SAMPLE_RATE), SAMPLE_RATE, down)
    resampled = _fit(resampled, filtered.shape[0])
    return np.ascontiguousarray(_fit(signal.sosfiltfilt(sos, resampled), filtered.shape[0]))


def low_pass_design(cutoff: float, kind: str) -> tuple[np.ndarray | None, int]:
    """The original's order-8 low-pass at ``cutoff`` Hz as second-order sections, and the rate it resamples
    through (twice the cutoff); no filter at 24 kHz, where the normalised frequency is 1 and SciPy refuses it."""
    from scipy import signal

    if kind not in FILTER_TYPES:
        raise ValueError(f"the low-pass type must be one of {FILTER_TYPES}, got {kind!r}")
    normalised = int(cutoff) / (0.5 * SAMPLE_RATE)
    if normalised >= 1:
        return None, SAMPLE_RATE
    design = {"butter": lambda: signal.butter(FILTER_ORDER, normalised, btype="low", output="sos"),
              "cheby1": lambda: signal.cheby1(FILTER_ORDER, 0.1, normalised, btype="low", output="sos"),
              "ellip": lambda: signal.ellip(FILTER_ORDER, 0.1, 60, normalised, btype="low", output="sos"),
              "bessel": lambda: signal.bessel(FILTER_ORDER, normalised, btype="low", output="sos")}
    return design[kind](), int(normalised * SAMPLE_RATE)


def _fit(x: np.ndarray, length: int) -> np.ndarray:
    """``x`` cut or padded with zeros to ``length`` samples."""
    return x[:length] if x.shape[0] >= length else np.pad(x, (0, length - x.shape[0]))
