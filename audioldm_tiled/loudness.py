"""Loudness measured as it streams past: integrated loudness and loudness range (ITU-R BS.1770-4, EBU R128 and
Tech 3342, as ``pyloudnorm`` computes them) and true peak, with memory that does not grow with the audio beyond a
few bytes per 100 ms.

BS.1770 gates 400 ms blocks against the loudness of the whole signal, so the integrated loudness is only known at
the end. ``LoudnessMeter`` keeps each block's mean square (about 10 numbers per second) instead of the samples,
and gates them when asked: the same blocks, the same K-weighting filters (run with their state carried from one
piece to the next) and the same gating as ``pyloudnorm.Meter`` over the whole signal at once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.signal import lfilter

logger = logging.getLogger(__name__)

ABSOLUTE_GATE = -70.0  # LUFS: blocks quieter than this never count (BS.1770-4, Tech 3342)
RELATIVE_GATE = -10.0  # LU below the absolutely gated loudness (BS.1770-4)
RANGE_RELATIVE_GATE = -20.0  # LU below, for the loudness range (Tech 3342)
RANGE_PERCENTILES = (10, 95)  # the loudness range spans these percentiles of the gated short-term loudness
# True peak: the signal is oversampled to at least this rate (4x at 48 kHz, as BS.1770-4's Annex 2) before its peak.
TRUE_PEAK_RATE = 192_000
# The peak limit a loudness target gets when none is given (EBU R128's maximum true peak).
DEFAULT_TRUE_PEAK = -1.0


@dataclass(frozen=True)
class Loudness:
    """What a render measures; None where the audio is too short for the measure (or silent)."""

    integrated_lufs: float | None  # gated integrated loudness (at least 0.4 s of audio)
    range_lu: float | None  # loudness range (at least 1.5 s)
    true_peak_dbtp: float | None  # peak of the 4x (or more) oversampled signal, dB of full scale

    def as_dict(self) -> dict[str, float | None]:
        return {k: None if v is None else round(v, 3) for k, v in asdict(self).items()}


class _Blocks:
    """Mean squares of the K-weighted signal over blocks of ``block`` s, one every ``block * (1 - overlap)`` s, at
    pyloudnorm's sample bounds; only the samples the next unfinished block needs are kept."""

    def __init__(self, rate: int, block: float, overlap: float):
        self.rate, self.block, self.step = rate, block, 1.0 - overlap
        self.powers: list[float] = []
        self._kept = np.zeros(0)  # weighted squares from sample self._start on
        self._start = 0

    def _bounds(self, j: int) -> tuple[int, int]:
        lower = int(self.block * (j * self.step) * self.rate)
        return lower, int(self.block * (j * self.step + 1) * self.rate)

    def add(self, squares: np.ndarray) -> None:
        self._kept = np.concatenate([self._kept, squares])
        end = self._start + self._kept.shape[0]
        while True:
            lower, upper = self._bounds(len(self.powers))
            if upper > end:
                break
            self.powers.append(self._mean_square(lower, upper))
        lower, _ = self._bounds(len(self.powers))
        self._kept, self._start = self._kept[lower - self._start :], lower

    def _mean_square(self, lower: int, upper: int) -> float:
        return float(np.sum(self._kept[lower - self._start : upper - self._start]) / (self.block * self.rate))

    def finish(self, samples: int) -> np.ndarray:
        """The block powers of a signal of ``samples`` samples, pyloudnorm's block count included (its last
        blocks may reach past the end: they hold what there is)."""
        count = int(np.round((samples / self.rate - self.block) / (self.block * self.step))) + 1
        while len(self.powers) < count:
            self.powers.append(self._mean_square(*self._bounds(len(self.powers))))
        return np.asarray(self.powers[:count])


def _block_loudness(powers: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return -0.691 + 10.0 * np.log10(powers)


class LoudnessMeter:
    """Feed mono or multichannel float pieces (samples,) or (samples, channels) with ``add``; ``result()`` gives
    the ``Loudness`` of everything fed. Channels are weighted as BS.1770 weighs L, R, C (1.0 each), up to three."""

    def __init__(self, rate: int, channels: int = 1):
        from pyloudnorm.iirfilter import IIRfilter

        if channels > 3:
            raise ValueError(f"loudness is measured for at most 3 channels (L, R, C), got {channels}")
        # BS.1770's K-weighting designed for this rate as pyloudnorm's meter designs it: a high shelf (+4 dB above
        # 1.5 kHz), then a high pass at 38 Hz.
        stages = (IIRfilter(4.0, 1 / math.sqrt(2), 1500.0, rate, "high_shelf"),
                  IIRfilter(0.0, 0.5, 38.0, rate, "high_pass"))
        self._filters = [(f.b, f.a, f.passband_gain) for f in stages]
        self._state = [[lfilter_zi_zero(b, a) for b, a, _ in self._filters] for _ in range(channels)]
        self.rate, self.channels, self.samples = rate, channels, 0
        self._integrated = _Blocks(rate, 0.400, 0.75)
        self._range = _Blocks(rate, 3.0, 0.97)
        factor = max(1, math.ceil(TRUE_PEAK_RATE / rate))
        self._oversample = None
        if factor > 1:
            import soxr

            self._oversample = soxr.ResampleStream(rate, rate * factor, channels, dtype="float32", quality="HQ")
        self._peak = 0.0

    def add(self, piece: np.ndarray) -> None:
        piece = np.asarray(piece, dtype=np.float32).reshape(piece.shape[0], -1)
        if piece.shape[1] != self.channels:
            raise ValueError(f"the meter measures {self.channels} channel(s), got a piece of {piece.shape[1]}")
        self.samples += piece.shape[0]
        squares = np.zeros(piece.shape[0])
        for channel in range(self.channels):
            weighted = piece[:, channel].astype(np.float64)
            for stage, (b, a, gain) in enumerate(self._filters):
                weighted, self._state[channel][stage] = lfilter(b, a, weighted, zi=self._state[channel][stage])
                weighted = gain * weighted
            squares += weighted * weighted
        self._integrated.add(squares)
        self._range.add(squares)
        self._track_peak(piece, last=False)

    def _track_peak(self, piece: np.ndarray, last: bool) -> None:
        if piece.size:  # the samples themselves bound the true peak from below (the resampler's band stops short)
            self._peak = max(self._peak, float(np.abs(piece).max()))
        if self._oversample is not None:
            piece = self._oversample.resample_chunk(piece, last=last)
        if piece.size:
            self._peak = max(self._peak, float(np.abs(piece).max()))

    def integrated_so_far(self) -> float | None:
        """The gated integrated loudness of the whole blocks added so far (None before the first 0.4 s, or below
        the absolute gate); the blocks are kept as they are, so more audio may follow."""
        powers = np.asarray(self._integrated.powers)
        return _gated(_block_loudness(powers), powers) if powers.size else None

    def result(self) -> Loudness:
        """The loudness of everything added so far; ends the true-peak stream, so call it once, at the end."""
        self._track_peak(np.zeros((0, self.channels), np.float32), last=True)
        peak = 20 * math.log10(self._peak) if self._peak > 0 else None
        integrated = None
        if self.samples >= 0.4 * self.rate:
            powers = self._integrated.finish(self.samples)
            integrated = _gated(_block_loudness(powers), powers)
        return Loudness(integrated, self._loudness_range(), peak)

    def _loudness_range(self) -> float | None:
        """Tech 3342's range over 3 s blocks every 0.09 s, after 1.5 s of silence appended as pyloudnorm does."""
        silence = int(1.5 * self.rate)
        if self.samples + silence < 3.0 * self.rate:
            return None
        squares = np.zeros(silence)
        for channel in range(self.channels):
            zeros = np.zeros(silence)
            for stage, (b, a, gain) in enumerate(self._filters):
                zeros, self._state[channel][stage] = lfilter(b, a, zeros, zi=self._state[channel][stage])
                zeros = gain * zeros
            squares += zeros * zeros
        self._range.add(squares)
        loudness = _block_loudness(self._range.finish(self.samples + silence))
        loudness = loudness[loudness >= ABSOLUTE_GATE]
        if not loudness.size:
            return None
        integrated = 10 * np.log10(np.mean(np.power(10, loudness / 10)))
        loudness = loudness[loudness >= integrated + RANGE_RELATIVE_GATE]
        if not loudness.size:
            return None
        low, high = np.percentile(loudness, RANGE_PERCENTILES)
        return float(high - low)


def lfilter_zi_zero(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """A filter's state at rest: what ``lfilter`` starts from when given no state."""
    return np.zeros(max(len(a), len(b)) - 1)


def _gated(loudness: np.ndarray, powers: np.ndarray) -> float | None:
    """BS.1770-4's gated integrated loudness of blocks with these loudnesses and mean squares."""
    absolute = loudness >= ABSOLUTE_GATE
    if not absolute.any():
        return None
    relative = -0.691 + 10 * np.log10(np.mean(powers[absolute])) + RELATIVE_GATE
    gated = (loudness > relative) & absolute
    return float(-0.691 + 10 * np.log10(np.mean(powers[gated])))


def loudness_gain(measured: Loudness, target_lufs: float, true_peak_dbtp: float | None) -> float:
    """The gain in dB that takes ``measured`` to ``target_lufs`` without its true peak passing ``true_peak_dbtp``.

    Loudness is normalised, never limited: where the target would push the peak over the limit, the gain stops at
    the limit and a warning says what loudness was reached (a limiter would change the sound). Silence, or audio
    too short to measure, keeps its level."""
    if measured.integrated_lufs is None:
        logger.warning("the render is too short or too quiet to measure its loudness; its level is kept")
        return 0.0
    gain = target_lufs - measured.integrated_lufs
    if true_peak_dbtp is not None and measured.true_peak_dbtp is not None \
            and measured.true_peak_dbtp + gain > true_peak_dbtp:
        limited = true_peak_dbtp - measured.true_peak_dbtp
        logger.warning("%.1f LUFS would take the true peak to %.1f dBTP, over the %.1f dBTP limit: normalised to "
                       "%.1f LUFS instead", target_lufs, measured.true_peak_dbtp + gain, true_peak_dbtp,
                       measured.integrated_lufs + limited)
        gain = limited
    return gain
