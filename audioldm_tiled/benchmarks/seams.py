"""A seam measure: is the spectrum at tile and window boundaries as steady as everywhere else?

Spectral flux is the RMS over mel bands of the change of the log-mel from one frame to the next. A seam (a jump in
level, a dropout, a click) changes the spectrum abruptly at the boundary, so it shows as flux there. The score is

    mean over boundaries of the peak flux near the boundary / median over all other frames of the same peak flux

Taking the same local peak (over ``reach`` frames each side) at the boundaries and elsewhere keeps the two sides
comparable, so audio without seams scores about 1, whatever its content; a value well above 1 means the boundaries
can be told apart from the rest. ``reach`` covers the analysis window: a discontinuity at one sample moves every
STFT frame whose window spans it (n_fft / 2 / hop = 3.2 frames per side for AudioLDM's front end).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..audio import MelSettings, log_mel


def spectral_flux(mel: torch.Tensor) -> torch.Tensor:
    """(frames, bands) log-mel -> (frames - 1,): RMS over bands of the change between consecutive frames."""
    mel = torch.as_tensor(mel, dtype=torch.float64)
    return (mel[1:] - mel[:-1]).pow(2).mean(dim=-1).sqrt()


def seam_score(mel: torch.Tensor, boundaries: Iterable[int], reach: int = 2) -> float:
    """The seam score of a log-mel (frames, bands) at boundary frames (a boundary b lies between frames b-1 and b).

    Boundaries within ``reach`` frames of either end are ignored; NaN if none is left or no frame is far from all of
    them.
    """
    flux = spectral_flux(mel)
    peak = F.max_pool1d(flux[None, None], 2 * reach + 1, stride=1, padding=reach)[0, 0]
    pairs = sorted({b - 1 for b in boundaries if reach <= b - 1 < flux.shape[0] - reach})
    if not pairs:
        return math.nan
    near = torch.zeros(flux.shape[0], dtype=torch.bool)
    for p in pairs:
        near[max(0, p - 2 * reach) : p + 2 * reach + 1] = True  # frames whose local peak could include the seam
    if near.all():
        return math.nan
    return float(peak[pairs].mean() / peak[~near].median())


def audio_seam_score(audio: np.ndarray, boundaries_s: Iterable[float], settings: MelSettings | None = None) -> float:
    """``seam_score`` of a waveform's log-mel, boundaries in seconds; ``reach`` spans the STFT window.

    The waveform is scaled to a peak of 1 first: the score does not depend on level, and quiet audio (random
    weights make outputs of order 1e-10) is not flattened by the log-mel's floor."""
    settings = settings or MelSettings()
    audio = np.asarray(audio, dtype=np.float64)
    top = np.abs(audio).max() if audio.size else 0.0
    audio = (audio / top if top > 0 else audio).astype(np.float32)
    frames_per_second = settings.sample_rate / settings.hop_length
    reach = math.ceil(settings.n_fft / 2 / settings.hop_length)
    boundaries = [round(s * frames_per_second) for s in boundaries_s]
    return seam_score(log_mel(audio, settings), boundaries, reach)
