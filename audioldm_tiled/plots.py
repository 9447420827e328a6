"""Pictures: log-mel spectrograms of long audio (rows of a minute, boundaries marked) and the benchmark plots.

matplotlib is an optional extra (``pip install audioldm-tiled[plot]``). Figures are built with
``matplotlib.figure.Figure``, not pyplot, so nothing depends on a display or a global backend; in Jupyter a returned
figure shows inline.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .audio import MelSettings, log_mel
from .constants import SAMPLE_RATE
from .files import atomic_file

# Line styles for boundary kinds, in the order they are given.
_BOUNDARY_STYLES = [("white", "--"), ("cyan", ":"), ("magenta", "-.")]


def figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'audioldm-tiled[plot]' (or pip install matplotlib)") \
            from None
    return Figure


def require_matplotlib() -> None:
    """Raise the ImportError with the install hint now (before a long generation), if matplotlib is missing."""
    figure_class()


def spectrogram_figure(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, row_seconds: float = 60.0,
                       boundaries: Mapping[str, Sequence[float]] | None = None, title: str | None = None):
    """A log-mel spectrogram of mono ``audio``, in rows of ``row_seconds`` so that minutes stay legible.

    ``boundaries`` maps a label ("denoising windows", "VAE tiles", ...) to times in seconds, drawn as vertical lines
    to inspect seams by eye (``AudioLDMTiledPipeline.seam_positions`` gives them for a render).
    """
    Figure = figure_class()
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if audio.size == 0:
        raise ValueError("audio is empty")
    if not row_seconds > 0:
        raise ValueError(f"row_seconds must be positive, got {row_seconds!r}")
    settings = MelSettings(sample_rate=sample_rate)
    mel = log_mel(audio, settings).numpy().T  # (bands, frames)
    frames_per_second = sample_rate / settings.hop_length
    duration = audio.size / sample_rate
    rows = max(1, math.ceil(duration / row_seconds))
    figure = Figure(figsize=(12, 1.8 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, 1, squeeze=False)[:, 0]
    low, high = np.percentile(mel, [1, 99.9])
    for row, ax in enumerate(axes):
        start, stop = row * row_seconds, min(duration, (row + 1) * row_seconds)
        part = mel[:, int(start * frames_per_second) : max(int(start * frames_per_second) + 1,
                                                            int(math.ceil(stop * frames_per_second)))]
        ax.imshow(part, origin="lower", aspect="auto", cmap="magma", vmin=low, vmax=high,
                  extent=(start, start + part.shape[1] / frames_per_second, 0, mel.shape[0]))
        ax.set_xlim(start, start + row_seconds)
        ax.set_ylabel("mel band")
        for (label, times), (color, style) in zip((boundaries or {}).items(), _BOUNDARY_STYLES):
            inside = [t for t in times if start <= t < stop]
            for k, t in enumerate(inside):
                ax.axvline(t, color=color, linestyle=style, linewidth=0.8, label=label if k == 0 else None)
        if boundaries and row == 0:
            ax.legend(loc="upper right", fontsize="small", framealpha=0.6)
    axes[-1].set_xlabel("time (s)")
    if title:
        figure.suptitle(title)
    return figure


def save_spectrogram(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE,
                     overwrite: bool = True, **kwargs) -> None:
    """``spectrogram_figure(...)`` saved as an image (the format by the file's suffix), atomically
    (``files.atomic_file``: a failure leaves no partial picture and an existing one intact)."""
    figure = spectrogram_figure(audio, sample_rate, **kwargs)
    with atomic_file(path, overwrite) as tmp:
        figure.savefig(tmp, dpi=100, format=Path(path).suffix.lstrip(".").lower() or "png")
