"""SciPy's and librosa's whole-signal operations that AudioSR's front end and post-processing use, computed in
passes over a ``spool.Signal`` of any length, equal to the whole-signal call:

- ``filtfilt``: ``scipy.signal.sosfiltfilt`` (odd extension, steady-state initial conditions). The forward pass
  runs block by block carrying the filter's state, which is the same recursion sample for sample; the backward pass
  reads the forward output from its end. Both outputs are spooled.
- ``resample``: ``scipy.signal.resample_poly``. Its FIR filter is finite: each block is resampled with the input
  samples the filter reaches on each side, starting on a multiple of the rational factor's period so that the
  block's output samples are the whole call's, term for term.
- ``padded``: rows of a signal extended past its ends by reflection (``torch.stft``'s padding) or zeros
  (``librosa.stft``'s ``center=True``), for the frames of an STFT taken a block of frames at a time.
- ``istft_range``: samples [lo, hi) of ``librosa.istft`` from the STFT frames that overlap them (a sample's value
  depends on those frames and their window's sum of squares only).

Rows are samples; columns are channels, each filtered on its own.
"""

from __future__ import annotations

import math

import numpy as np

from .. import spool
from ..spool import Reversed, Signal, Spool, blocks


def filtfilt(sos: np.ndarray, signal: Signal, rows: int | None = None) -> Signal:
    """``scipy.signal.sosfiltfilt(sos, x, axis=0)`` of ``signal`` (n, channels), as a float64 ``Signal``."""
    from scipy.signal import sosfilt, sosfilt_zi

    rows, n = rows or spool.BLOCK_ROWS, signal.length
    taps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    edge = 3 * taps
    if n <= edge:
        raise ValueError(f"the signal has {n} samples; the low-pass filter needs more than {edge}")
    first, last = signal.read(0, 1), signal.read(n - 1, n)  # the extension in the signal's dtype, as SciPy's
    head = 2 * first - signal.read(1, edge + 1)[::-1]
    tail = 2 * last - signal.read(n - 1 - edge, n - 1)[::-1]
    steady = sosfilt_zi(sos)[:, :, None]  # (sections, 2, 1): per channel below

    forward = Spool(head.shape[1:], np.float64)
    state = steady * head[0]
    for piece in _pieces([head], signal, rows, [tail]):
        out, state = sosfilt(sos, piece, axis=0, zi=state)
        forward.append(out)
    try:
        backward = Spool(head.shape[1:], np.float64)
        state = steady * forward.read(forward.length - 1, forward.length)[0]
        for lo, hi in _backwards(forward.length, rows):
            out, state = sosfilt(sos, forward.read(lo, hi)[::-1], axis=0, zi=state)
            backward.append(out)
    finally:
        forward.close()
    return Reversed(backward, start=edge, length=n)


def _pieces(before: list[np.ndarray], signal: Signal, rows: int, after: list[np.ndarray]):
    yield from before
    for lo, hi in blocks(signal.length, rows):
        yield signal.read(lo, hi)
    yield from after


def _backwards(length: int, rows: int):
    for hi in range(length, 0, -rows):
        yield max(0, hi - rows), hi


def resample(signal: Signal, up: int, down: int, rows: int | None = None) -> Signal:
    """``scipy.signal.resample_poly(x, up, down, axis=0)`` of ``signal`` (default window and zero padding)."""
    from scipy.signal import resample_poly

    rows = rows or spool.BLOCK_ROWS
    common = math.gcd(up, down)
    up, down = up // common, down // common
    if up == down == 1:
        return signal
    n = signal.length
    reach = -(-(10 * max(up, down) + down) // up) + 2  # input samples the FIR filter reaches on either side
    back = -(-reach // down) * down  # and back to a block start on the period, where the phase is the whole call's
    rows = max(1, rows // down) * down
    out = Spool(signal.read(0, 1).shape[1:], np.float64)
    for lo, hi in blocks(n, rows):
        start = max(0, lo - back)
        block = resample_poly(signal.read(start, min(n, hi + reach)), up, down, axis=0)
        first = (lo - start) * up // down
        count = -(-hi * up // down) - lo * up // down
        out.append(block[first : first + count])
    return out


def padded(signal: Signal, lo: int, hi: int, pad: int, mode: str) -> np.ndarray:
    """Rows [lo, hi) of ``signal`` extended by ``pad`` rows on each side (row ``pad`` is the signal's row 0), by
    ``"reflect"`` (without repeating the edge, as ``torch.nn.functional.pad``) or ``"zeros"``."""
    n = signal.length
    index = np.arange(lo, hi) - pad
    if mode == "reflect":
        index = np.abs(index)
        index = np.where(index >= n, 2 * (n - 1) - index, index)
        first, last = int(index.min()), int(index.max()) + 1
        return signal.read(first, last)[index - first]
    inside = (index >= 0) & (index < n)
    rows = signal.read(max(0, lo - pad), max(0, min(n, hi - pad)))
    out = np.zeros((hi - lo, *rows.shape[1:]), dtype=rows.dtype)
    out[inside] = rows
    return out


def istft_range(frames, lo: int, hi: int, total_frames: int, n_fft: int, hop: int, dtype=np.float32) -> np.ndarray:
    """Samples [lo, hi) (rows) of ``librosa.istft(S, hop_length=hop, n_fft=n_fft, center=True)``, where
    ``frames(t0, t1)`` gives S's frames [t0, t1) as (channels, bins, t1 - t0)."""
    import librosa

    half = n_fft // 2
    t0 = max(0, (lo + half - n_fft) // hop)  # the first frame that reaches sample lo
    t1 = min(total_frames, (hi - 1 + half) // hop + 1)  # one past the last frame that reaches sample hi - 1
    wave = librosa.istft(frames(t0, t1), hop_length=hop, n_fft=n_fft, center=False, dtype=dtype)
    offset = lo - (t0 * hop - half)
    return np.ascontiguousarray(wave[:, offset : offset + hi - lo].T)
