"""AudioSR's front end and post-processing for a recording of any length, in passes over spools.

The original computes five figures over the whole recording (``front_end`` says how): the mean and the peak the
input is normalised by, the cutoff its low-pass is designed for, the mel band below which the decoded mel is the
input's, and, after the vocoder, the ratio that scales the input's low STFT bins into the output and the output's
own peak and mean. Here each is summed in a pass over the whole recording before it is used, and the signals
between the passes are spooled to disk (``spool``), so that memory does not grow with the length and each figure is
the whole recording's, as in one pass of the original, wherever a block, tile or window falls. The filters and
transforms run block by block, equal to their whole-signal calls (``passes``).

``prepare`` makes the model's input (``Prepared``: the low-passed recording, its log-mel, the figures);
``post_processed`` turns the vocoder's output into the delivered waveform, piece by piece.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..spool import Fitted, Spool, blocks
from . import front_end, passes
from .components import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE

MEL_PAD = (N_FFT - HOP_LENGTH) // 2  # the reflection around the 48 kHz mel's frames (784 samples)
POST_HOP = N_FFT // 4  # librosa.stft's default hop, which the post-processing uses
FRAME_BLOCK = 1024  # frames per step of a pass (10.24 s of mel)
PEAK = 0.5  # what the original scales its input's and its output's peaks to


@dataclass
class Prepared:
    """What the model and the post-processing need of a recording, channels each on its own:

    ``low``: the normalised, low-passed recording (padded_length, channels) float32; ``low_mel``: its log-mel
    (frames, channels, 1, 256), rows of what the VAE encodes (``spool.Frames`` reads it as (channels, 1, frames,
    256)); ``mel_bands``: bands below which the decoded mel is replaced by ``low_mel``;
    ``post_bins``, ``post_low_energy``: the STFT bin below which the output's spectrum is the input's, and the
    input's magnitude summed over that bin; ``silent``: channels that are all zeros (delivered as zeros).
    """

    length: int
    low: Spool
    low_mel: Spool
    mel_bands: list[int]
    post_bins: list[int]
    post_low_energy: np.ndarray
    silent: np.ndarray
    peak: np.ndarray  # the recording's peak about its mean, which the front end scaled to ``PEAK``

    @property
    def channels(self) -> int:
        return len(self.mel_bands)

    @property
    def padded_length(self) -> int:
        return self.low.length

    def close(self) -> None:
        self.low.close()
        self.low_mel.close()


class _Normalised:
    """The original's input: mean removed, peak at 0.5, float32, zeros to ``length`` past the recording's end."""

    def __init__(self, recording, mean: np.ndarray, peak: np.ndarray, length: int):
        self.recording, self.mean, self.scale, self.length = recording, mean, PEAK / (peak + 1e-8), length

    def read(self, lo: int, hi: int) -> np.ndarray:
        out = np.zeros((hi - lo, self.mean.shape[0]), dtype=np.float32)
        have = max(0, min(hi, self.recording.length) - lo)
        if have:
            out[:have] = (self.recording.read(lo, lo + have) - self.mean) * self.scale
        return out


class _Column:
    def __init__(self, signal, column: int):
        self.signal, self.column, self.length = signal, column, signal.length

    def read(self, lo: int, hi: int) -> np.ndarray:
        return self.signal.read(lo, hi)[:, self.column : self.column + 1]


def prepare(pieces: Iterable[np.ndarray], rate: int, channels: int, seconds: float, seed: int,
            show_progress: bool = True) -> Prepared:
    """The front end over a recording of ``seconds`` that arrives as ``pieces`` (samples, channels) float32 at
    ``rate``; ``seed`` picks the low-pass filter's type (``front_end.filter_type``)."""
    import soxr

    stream = soxr.ResampleStream(rate, SAMPLE_RATE, channels, dtype="float32", quality="VHQ") \
        if rate != SAMPLE_RATE else None
    recording = Spool((channels,), np.float32)
    total, top, bottom = np.zeros(channels), np.full(channels, -np.inf), np.full(channels, np.inf)
    try:
        with _bar(seconds, "AudioSR reading", show_progress) as bar:
            for piece in _resampled(pieces, stream, channels):
                recording.append(piece)
                total += piece.sum(axis=0, dtype=np.float64)
                top, bottom = np.maximum(top, piece.max(axis=0)), np.minimum(bottom, piece.min(axis=0))
                bar.update(piece.shape[0] / SAMPLE_RATE)
        if recording.length == 0:
            raise ValueError("the recording has no samples")
        mean = total / recording.length
        peak = np.maximum(top - mean, mean - bottom)
        clip = round(front_end.CLIP_SECONDS * SAMPLE_RATE)
        normalised = _Normalised(recording, mean, peak, -(-recording.length // clip) * clip)
        with _bar(normalised.length * 3 / SAMPLE_RATE, "AudioSR front end", show_progress) as bar:
            cutoffs = [front_end.cutoff_hz_of_sums(torch.from_numpy(s)) for s in _magnitude_sums(normalised, bar)]
            low = _low_passed(normalised, cutoffs, front_end.filter_type(seed), bar)
        recording.close()
        low_mel, band_sums = _log_mel(low)
        post_sums = np.zeros((channels, N_FFT // 2 + 1))
        for t0, t1 in blocks(_post_frames(low.length), FRAME_BLOCK):
            post_sums += np.abs(_post_stft(low, t0, t1)).sum(axis=2)
        post_bins = [front_end.cutoff_bin_of_sums(torch.from_numpy(s)) for s in post_sums]
        return Prepared(recording.length, low, low_mel,
                        [front_end.cutoff_bin_of_sums(torch.from_numpy(s)) for s in band_sums], post_bins,
                        post_sums[np.arange(channels), post_bins], peak == 0, peak)
    finally:
        recording.close()


def _resampled(pieces: Iterable[np.ndarray], stream, channels: int) -> Iterator[np.ndarray]:
    for piece in pieces:
        piece = np.asarray(piece, dtype=np.float32).reshape(-1, channels)
        if not np.isfinite(piece).all():
            raise ValueError("the recording holds NaN or infinite samples")
        yield stream.resample_chunk(piece) if stream is not None else piece
    if stream is not None:
        yield stream.resample_chunk(np.zeros((0, channels), np.float32), last=True)


def _magnitude_sums(signal, bar) -> np.ndarray:
    """The 48 kHz STFT's magnitude (1024 bins) summed over all frames, per channel (channels, 1024)."""
    sums = 0.0
    for f0, f1 in blocks(signal.length // HOP_LENGTH, FRAME_BLOCK):
        segment = passes.padded(signal, f0 * HOP_LENGTH, (f1 - 1) * HOP_LENGTH + N_FFT, MEL_PAD, "reflect")
        magnitude, _ = front_end.frames_magnitude_and_log_mel(torch.from_numpy(np.ascontiguousarray(segment.T)))
        sums = sums + magnitude.sum(dim=1).double().numpy()
        bar.update((f1 - f0) * HOP_LENGTH / SAMPLE_RATE)
    return sums


def _low_passed(signal, cutoffs: list[float], kind: str, bar) -> Spool:
    """Each channel through ``front_end.low_passed`` at its own cutoff, as float32 (the model's input dtype)."""
    lows = []
    for column, cutoff in enumerate(cutoffs):
        channel = _Column(signal, column)
        sos, down = front_end.low_pass_design(cutoff, kind)
        if sos is None:
            lows.append(channel)
            continue
        filtered = passes.filtfilt(sos, channel)
        there = passes.resample(filtered, down, SAMPLE_RATE)
        back = passes.resample(there, SAMPLE_RATE, down)
        lows.append(passes.filtfilt(sos, Fitted(back, signal.length)))
        for item in (filtered, there, back):
            _close(item)
    out = Spool((len(cutoffs),), np.float32)
    for lo, hi in blocks(signal.length):
        out.append(np.concatenate([low.read(lo, hi) for low in lows], axis=1))
        bar.update(2 * (hi - lo) / SAMPLE_RATE)
    for low in lows:
        _close(low)
    return out


def _close(signal) -> None:
    while signal is not None and not hasattr(signal, "close"):
        signal = getattr(signal, "signal", None)
    if signal is not None:
        signal.close()


def _log_mel(low: Spool) -> tuple[Spool, np.ndarray]:
    """The log-mel of ``low`` spooled (frames, channels, 1, 256), and its exp summed over frames (channels, 256)."""
    mel = Spool((low.row_shape[0], 1, N_MELS), np.float32)
    sums = 0.0
    for f0, f1 in blocks(low.length // HOP_LENGTH, FRAME_BLOCK):
        segment = passes.padded(low, f0 * HOP_LENGTH, (f1 - 1) * HOP_LENGTH + N_FFT, MEL_PAD, "reflect")
        _, log_mel = front_end.frames_magnitude_and_log_mel(torch.from_numpy(np.ascontiguousarray(segment.T)))
        mel.append(log_mel.transpose(0, 1)[:, :, None].numpy())
        sums = sums + torch.exp(log_mel).sum(dim=1).double().numpy()
    return mel, sums


def _post_frames(length: int) -> int:
    return 1 + length // POST_HOP


def _post_stft(signal, t0: int, t1: int) -> np.ndarray:
    """Frames [t0, t1) of ``librosa.stft(x)`` (centred, zeros past the ends), (channels, 1025, t1 - t0)."""
    import librosa

    segment = passes.padded(signal, t0 * POST_HOP, (t1 - 1) * POST_HOP + N_FFT, N_FFT // 2, "zeros")
    return librosa.stft(np.ascontiguousarray(segment.T), n_fft=N_FFT, hop_length=POST_HOP, center=False)


def post_processed(out, prepared: Prepared, show_progress: bool = True,
                   keep_level: bool = False) -> Iterator[np.ndarray]:
    """The delivered waveform (channels, samples) float32 in pieces, ``prepared.length`` samples in all, from the
    vocoder's output ``out`` (samples, channels): the original's ``postprocessing``, then the peak at 0.5 (with
    ``keep_level``: the front end's gain undone instead, so that the output has the recording's level) and the
    mean removed, each over the whole output."""
    frames = _post_frames(out.length)
    if frames != _post_frames(prepared.padded_length):
        raise ValueError(f"the vocoder made {out.length} samples for {prepared.padded_length} of input")
    channels = np.arange(prepared.channels)
    bins = np.asarray(prepared.post_bins)
    with _bar(3 * out.length / SAMPLE_RATE, "AudioSR post-processing", show_progress) as bar:
        energy = np.zeros(prepared.channels)
        for t0, t1 in blocks(frames, FRAME_BLOCK):
            energy += np.abs(_post_stft(out, t0, t1)[channels, bins]).sum(axis=-1)
            bar.update((t1 - t0) * POST_HOP / SAMPLE_RATE)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.nan_to_num(np.clip(prepared.post_low_energy / energy, 0.8, 1.2), nan=1.0)
        below = np.arange(N_FFT // 2 + 1)[None, :, None] < bins[:, None, None]

        def spectrum(t0: int, t1: int) -> np.ndarray:
            low = _post_stft(prepared.low, t0, t1) / ratio[:, None, None].astype(np.float32)
            return np.where(below, low, _post_stft(out, t0, t1))

        with Spool((prepared.channels,), np.float32) as replaced:
            peak, total = np.zeros(prepared.channels), np.zeros(prepared.channels)
            for lo, hi in blocks(out.length):
                piece = passes.istft_range(spectrum, lo, hi, frames, N_FFT, POST_HOP)
                replaced.append(piece)
                peak = np.maximum(peak, np.abs(piece).max(axis=0))
                total += piece.sum(axis=0, dtype=np.float64)
                bar.update((hi - lo) / SAMPLE_RATE)
            with np.errstate(divide="ignore", invalid="ignore"):
                gain = (prepared.peak + 1e-8) / PEAK if keep_level else PEAK / peak  # 1e-8: the front end's
                scale = np.where(prepared.silent | (peak == 0), 0.0, gain)
            mean = total * scale / out.length
            for lo, hi in blocks(min(prepared.length, out.length)):
                yield np.ascontiguousarray((replaced.read(lo, hi) * scale - mean).T.astype(np.float32))
                bar.update((hi - lo) / SAMPLE_RATE)


def _bar(seconds: float, stage: str, show: bool):
    return tqdm(total=round(seconds, 2), desc=stage, unit="s", leave=False,
                disable=not show, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s")
