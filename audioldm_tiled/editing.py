"""Continuing a recording and regenerating spans of it: inpainting along time around a known region.

The input's latents are the *known region*. Denoising runs from noise over the whole latent (windowed, as any
render), and after every scheduler step the known frames are replaced by the input's latents noised to the level
of the next step (the replacement of RePaint, Lugmayr et al. 2022, without its resampling), so the frames denoised
from noise are drawn to fit them; after the last step they are the input's latents exactly. The noise of the
replacement is drawn once from the call's generator.

The output is assembled from the input's **original samples** (at the vocoder's rate, as ``load_audio`` reads the
input) and the generated waveform: original samples everywhere outside the edited ranges, generated ones inside,
with an equal-power crossfade inside each edited range where original audio goes on beyond it. The VAE works on
peak-normalised input, so the generated waveform is first brought to the input's level: scaled by the ratio of the
input's RMS to the reconstruction's over the known region (the frames it reproduces).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .audio import load_audio
from .constants import MAX_SECONDS

# Default crossfade where generated audio meets the original: long enough to hide a change of phase, short
# enough that the original's events (a car passing) do not bleed far into the edit.
DEFAULT_CROSSFADE_S = 0.25
# Default context on each side of a regenerated span: half of AudioLDM's training window (10.24 s), so every
# denoising window over the span also sees known audio.
DEFAULT_SPAN_CONTEXT_S = 5.12


@dataclass(frozen=True)
class Edit:
    """A continuation or a regeneration, in samples of the input at the vocoder's rate.

    ``context``: the input's samples [start, stop) that are encoded (start on a latent frame); the generated
    waveform's sample 0 is input sample ``context[0]``. ``ranges``: the output's sample ranges [a, b) made by the
    model, in order. ``unknown``: the latent frames (from ``context[0]``) denoised from noise. ``length``: output
    samples. ``fade``: crossfade samples."""

    original: np.ndarray
    context: tuple[int, int]
    ranges: list[tuple[int, int]]
    unknown: list[tuple[int, int]]
    length: int
    fade: int
    frame_samples: int

    @property
    def latent_frames(self) -> int:
        """Latent frames the render covers: from the context's start to the end of the last edited range."""
        return math.ceil((max(self.context[1], self.ranges[-1][1]) - self.context[0]) / self.frame_samples)

    def known_mask(self) -> torch.Tensor:
        """(latent frames,) True where the input's latents are known."""
        mask = torch.ones(self.latent_frames, dtype=torch.bool)
        for a, b in self.unknown:
            mask[a:b] = False
        # the input's last, partial frame holds padding: not known
        mask[(self.context[1] - self.context[0]) // self.frame_samples :] = False
        return mask

    def assemble(self, generated: Iterator[np.ndarray], piece_samples: int = 1 << 16) -> Iterator[np.ndarray]:
        """The output, (1, samples) float32 pieces in order, from the generated waveform's pieces (1, samples)."""
        source = _Samples(generated)
        gain = None
        position = 0
        for a, b in self.ranges:
            yield from self._original(position, a, piece_samples)
            if gain is None:
                gain = self._gain(source)
            g = source.take(a - self.context[0], b - self.context[0]) * gain
            left = self.fade if a > 0 else 0
            right = self.fade if b < len(self.original) else 0
            out = g.copy()
            if left:
                out[:left] = _crossfade(self.original[a : a + left], g[:left])
            if right:
                out[-right:] = _crossfade(g[-right:], self.original[b - right : b])
            yield out[None].astype(np.float32)
            position = b
        yield from self._original(position, self.length, piece_samples)

    def _original(self, start: int, stop: int, piece_samples: int) -> Iterator[np.ndarray]:
        for a in range(start, stop, piece_samples):
            yield self.original[a : min(stop, a + piece_samples)][None]

    def _gain(self, source: _Samples) -> float:
        """Input RMS over reconstruction RMS, over the known samples before the first edited range."""
        stop = min(self.ranges[0][0], self.context[1])
        known = self.original[self.context[0] : stop].astype(np.float64)
        made = source.peek(0, stop - self.context[0]).astype(np.float64)
        made_rms = math.sqrt(float(np.mean(made**2))) if made.size else 0.0
        if made_rms == 0 or not known.size:
            return 1.0
        return math.sqrt(float(np.mean(known**2))) / made_rms


def _crossfade(outgoing: np.ndarray, incoming: np.ndarray) -> np.ndarray:
    """Equal-power crossfade (cos, sin) from ``outgoing`` to ``incoming`` over their common length."""
    t = (np.arange(len(outgoing)) + 0.5) / len(outgoing)
    return outgoing * np.cos(0.5 * np.pi * t) + incoming * np.sin(0.5 * np.pi * t)


class _Samples:
    """The generated waveform's pieces read by sample range, in increasing order; samples before the last range
    read are dropped."""

    def __init__(self, pieces: Iterator[np.ndarray]):
        self.pieces, self.held, self.start = iter(pieces), np.zeros(0, dtype=np.float32), 0

    def _fill(self, stop: int) -> None:
        parts = [self.held]
        end = self.start + len(self.held)
        while end < stop:
            piece = next(self.pieces, None)
            if piece is None:
                raise ValueError(f"the generated waveform ended at sample {end}, {stop} were needed")
            parts.append(np.asarray(piece, dtype=np.float32).reshape(-1))
            end += parts[-1].shape[0]
        self.held = np.concatenate(parts) if len(parts) > 1 else parts[0]

    def peek(self, start: int, stop: int) -> np.ndarray:
        self._fill(stop)
        return self.held[start - self.start : stop - self.start]

    def take(self, start: int, stop: int) -> np.ndarray:
        values = self.peek(start, stop).copy()
        self.held, self.start = self.held[stop - self.start :], stop
        return values


def seconds_argument(name: str, value: object, allow_zero: bool = False) -> float:
    """A call argument in seconds: finite, positive (or with ``allow_zero`` non-negative), at most a year."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not (
            (0 <= value if allow_zero else 0 < value) and value <= MAX_SECONDS):
        relation = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be a finite number of seconds {relation} and at most {MAX_SECONDS:g}, "
                         f"got {value!r}")
    return float(value)


def parse_spans(regenerate: object, length_s: float) -> list[tuple[float, float]]:
    """``regenerate`` as sorted (start_s, end_s) spans inside [0, length_s]: one pair or a list of pairs."""
    if isinstance(regenerate, Sequence) and len(regenerate) == 2 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in regenerate):
        regenerate = [regenerate]
    if not isinstance(regenerate, Sequence) or isinstance(regenerate, str) or not regenerate:
        raise ValueError(f"`regenerate` must be a (start_s, end_s) pair or a list of them, got {regenerate!r}")
    spans = []
    for span in regenerate:
        if not isinstance(span, Sequence) or isinstance(span, str) or len(span) != 2:
            raise ValueError(f"`regenerate`: each span must be a (start_s, end_s) pair, got {span!r}")
        start, end = (seconds_argument("regenerate", v, allow_zero=True) for v in span)
        if end <= start:
            raise ValueError(f"`regenerate`: the span {start:g}-{end:g} s is empty or reversed (end <= start)")
        if end > length_s:
            raise ValueError(f"`regenerate`: the span {start:g}-{end:g} s ends past the input, which lasts "
                             f"{length_s:g} s")
        spans.append((start, end))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"`regenerate`: spans overlap at {start:g}-{end:g} s; join them into one")
    return spans


def plan_edit(audio, sample_rate: int, frame_samples: int, extend_s: float | None = None,
              regenerate: object = None, context_s: float | None = None,
              crossfade_s: float | None = None) -> Edit:
    """Read the input and plan a continuation (``extend_s``) or a regeneration (``regenerate``), with checks that
    name the argument at fault."""
    original = load_audio(audio, sample_rate)
    return Edit(original, *edit_geometry(original.shape[0], sample_rate, frame_samples, extend_s, regenerate,
                                         context_s, crossfade_s))


def edit_geometry(total: int, sample_rate: int, frame_samples: int, extend_s: float | None = None,
                  regenerate: object = None, context_s: float | None = None, crossfade_s: float | None = None):
    """An edit's layout over an input of ``total`` samples: the fields of ``Edit`` after ``original``. Raises
    ValueError naming the argument at fault; needs only the input's length, so a request checks it before any
    model is loaded."""
    if (extend_s is None) == (regenerate is None):
        raise ValueError("pass one of `extend_s` (continue the input) and `regenerate` (remake spans of it)")
    crossfade_s = DEFAULT_CROSSFADE_S if crossfade_s is None else seconds_argument("crossfade_s", crossfade_s,
                                                                                   allow_zero=True)
    fade = int(round(crossfade_s * sample_rate))
    if extend_s is not None:
        extension = int(round(seconds_argument("extend_s", extend_s) * sample_rate))
        start = 0
        if context_s is not None:
            keep = int(round(seconds_argument("context_s", context_s) * sample_rate))
            start = max(0, total - keep) // frame_samples * frame_samples
        if fade > total - start:
            raise ValueError(f"`crossfade_s` of {crossfade_s:g} s is longer than the input context of "
                             f"{(total - start) / sample_rate:g} s")
        first_unknown = (total - start) // frame_samples
        frames = math.ceil((total + extension - start) / frame_samples)
        return (start, total), [(total - fade, total + extension)], [(first_unknown, frames)], total + extension, \
            fade, frame_samples
    spans = parse_spans(regenerate, total / sample_rate)
    context = DEFAULT_SPAN_CONTEXT_S if context_s is None else seconds_argument("context_s", context_s, allow_zero=True)
    ranges = [(int(round(a * sample_rate)), int(round(b * sample_rate))) for a, b in spans]
    for (a, b), (sa, sb) in zip(ranges, spans):
        if 2 * fade > b - a:
            raise ValueError(f"`crossfade_s` of {crossfade_s:g} s at each end is longer than half the span "
                             f"{sa:g}-{sb:g} s")
    pad = int(round(context * sample_rate))
    start = max(0, ranges[0][0] - pad) // frame_samples * frame_samples
    stop = min(total, ranges[-1][1] + pad)
    unknown = [((a - start) // frame_samples, -(-(b - start) // frame_samples)) for a, b in ranges]
    return (start, stop), ranges, unknown, total, fade, frame_samples


class KnownRegion:
    """The input's latents on the known frames, put back after every denoising step at that step's noise level."""

    def __init__(self, latents: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, scheduler):
        self.latents, self.noise, self.scheduler = latents, noise, scheduler
        self.mask = mask.to(latents.device)[None, None, :, None]

    def noised(self, timestep: torch.Tensor | None) -> torch.Tensor:
        """The known latents at ``timestep``'s noise level (None: clean)."""
        if timestep is None:
            return self.latents
        t = timestep.reshape(1).expand(self.latents.shape[0])
        return self.scheduler.add_noise(self.latents, self.noise, t)

    def replace(self, latents: torch.Tensor, timestep: torch.Tensor | None) -> torch.Tensor:
        """``latents`` with the known frames set to the input's at ``timestep``'s level."""
        return torch.where(self.mask, self.noised(timestep).to(latents.dtype), latents)
