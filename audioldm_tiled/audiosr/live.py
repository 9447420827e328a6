"""A live render super-resolved as it comes (``live --upsample``): ``LiveUpsampler``.

AudioSR's figures (the cutoff, the replacement's ratio, the level) are the whole recording's (``recording``); a
live render has no whole, only a past. So its waveform is cut into segments of one AudioSR window, 10.24 s (the
longest input the original takes in one pass), each overlapping the one before by ``OVERLAP_SECONDS``. Each
segment is super-resolved on its own, as the original would super-resolve that clip, but with its level kept
(``keep_level``: the original scales every output's peak to 0.5, which would give each segment its own level),
and crossfaded linearly into the one before across the overlap. Below the cutoff a segment is its input (the
post-processing puts the input's spectrum back there), so the crossfade blends only what the model adds above it.

The first 48 kHz audio comes once the first 10.24 s are rendered; every further segment once 8.96 s more are.
The noise comes from one generator, drawn segment after segment: up to the last whole segment, a render's 48 kHz
audio does not depend on how long it runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import torch

from ..config import TilingConfig
from .components import SAMPLE_RATE
from .front_end import CLIP_SECONDS

SEGMENT_SECONDS = 2 * CLIP_SECONDS  # 10.24 s: one window of the model, what the original takes in one pass
OVERLAP_SECONDS = 1.28  # crossfaded between segments: 16 latent frames, an eighth of a segment's work again


class LiveUpsampler:
    """Mono samples at ``rate`` in, 48 kHz samples out, segment by segment: ``feed`` each piece as it comes and
    hand on what it yields; ``finish`` once the render has ended yields the rest.

    Args:
        pipe: an ``AudioSRTiledPipeline``.
        num_inference_steps, guidance_scale, seed, tiling: as ``AudioSRTiledPipeline.__call__`` takes them; the
            seed also seeds the one generator the segments draw their noise from.
        segment_seconds, overlap_seconds: the segments and their crossfades; the model pads every input to a
            multiple of 5.12 s, so a segment costs what the next multiple of it does.
    """

    def __init__(self, pipe, rate: int, *, num_inference_steps: int = 50, guidance_scale: float = 3.5,
                 seed: int = 0, tiling=None, segment_seconds: float = SEGMENT_SECONDS,
                 overlap_seconds: float = OVERLAP_SECONDS):
        if not 0 < overlap_seconds < segment_seconds:
            raise ValueError(f"`overlap_seconds` must be above 0 and below `segment_seconds` ({segment_seconds:g}), "
                             f"got {overlap_seconds!r}")
        self.pipe, self.rate = pipe, rate
        # no stage's progress bar for every segment: the live render's own bar counts the seconds
        tiling = (tiling or TilingConfig()).replace(show_progress=False)
        self.settings = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                         "seed": seed, "tiling": tiling}
        self.factor = Fraction(SAMPLE_RATE, rate)
        step = self.factor.denominator  # input samples whose 48 kHz count is whole
        self.segment = round(segment_seconds * rate / step) * step
        self.overlap = max(step, round(overlap_seconds * rate / step) * step)
        self._generator = torch.Generator().manual_seed(seed)
        self._input = np.zeros(0, np.float32)  # from the next segment's first sample on
        self._tail: np.ndarray | None = None  # the last segment's output over the overlap, to fade out
        self._finished = False

    def feed(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        """Take ``samples`` (samples,) float; yield the 48 kHz samples (samples,) float32 that are final now."""
        if self._finished:
            raise RuntimeError("the live upsampler has finished; make another for another render")
        self._input = np.concatenate([self._input, np.asarray(samples, dtype=np.float32).reshape(-1)])
        while self._input.shape[0] >= self.segment:
            yield self._next(self.segment)

    def finish(self) -> Iterator[np.ndarray]:
        """Yield what is left once the render has ended: its last segment, shorter than the others."""
        if self._finished:
            return
        left = self._input.shape[0]
        if left > (0 if self._tail is None else self.overlap):
            yield self._next(left)
        elif self._tail is not None:  # the last segment reaches the end already
            yield self._tail[: math.floor(left * self.factor)]
        self._finished = True

    def _next(self, length: int) -> np.ndarray:
        """Segment ``length`` samples long super-resolved and faded into the last; the part of it that no later
        segment overlaps. Nothing changes until the segment is done: an interrupted one is made again."""
        drawn = self._generator.get_state()
        try:
            out = self.pipe(self._input[:length], self.rate, generator=self._generator, keep_level=True,
                            **self.settings).audios[0]
        except BaseException:
            self._generator.set_state(drawn)
            raise
        if self._tail is not None:
            fade = min(self._tail.shape[0], out.shape[0])
            ramp = (np.arange(fade, dtype=np.float32) + 0.5) / fade
            out[:fade] = self._tail[:fade] * (1 - ramp) + out[:fade] * ramp
        if length < self.segment:
            self._input, self._tail = self._input[length:], None
            return out
        hop = self.segment - self.overlap
        cut = int(hop * self.factor)
        self._input, self._tail = self._input[hop:], out[cut:].copy()
        return out[:cut]
