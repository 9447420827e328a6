"""Sinks that deliver a render at 48 kHz, super-resolved by AudioSR on its way into another sink.

``UpsampledSink`` takes the render's waveform as any sink does (``sinks``), spools it to disk at the model's rate,
and once the render is whole, which AudioSR's whole-recording figures need (``recording``), hands the inner sink the
48 kHz waveform in pieces: a ``FileSink`` then writes FLAC, Ogg, Opus, MP3 or WAV at 48 or 44.1 kHz, with a loudness
target and tags, as it would the render itself. ``LiveUpsampledSink`` super-resolves a live render segment by
segment as it comes (``audiosr.live``). The recipe each records says what super-resolved it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sinks import drive
from ..spool import Spool
from .components import SAMPLE_RATE
from .live import LiveUpsampler
from .pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS


@dataclass(frozen=True)
class Upsampling:
    """How a render is super-resolved to 48 kHz: the AudioSR pipeline and the settings of its denoising. The render
    functions' and sinks' ``upsample`` takes one, or the pipeline alone for AudioSR's own settings."""

    pipe: Any
    num_inference_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE

    @classmethod
    def of(cls, upsample: Any) -> Upsampling:
        return upsample if isinstance(upsample, cls) else cls(upsample)

    def keywords(self, seed: int, tiling=None) -> dict[str, Any]:
        """The pipeline's keywords for a render seeded with ``seed``."""
        return {"num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
                "seed": seed, "tiling": tiling}

    def recipe(self, recipe: Mapping[str, Any], seed: int, **more: Any) -> dict[str, Any]:
        """``recipe`` with what super-resolved the render under "upsampled"."""
        model = getattr(self.pipe, "name_or_path", None) or "AudioSR"
        return {**recipe, "upsampled": {"model": model, "sample_rate": SAMPLE_RATE,
                                        "num_inference_steps": self.num_inference_steps,
                                        "guidance_scale": self.guidance_scale, "seed": seed, **more}}


class UpsampledSink:
    """The render into ``inner`` at 48 kHz, super-resolved once it is whole by ``upsample`` (an
    ``AudioSRTiledPipeline`` or an ``Upsampling``) with ``seed`` and ``tiling``. One waveform, as a file holds."""

    def __init__(self, inner, upsample, *, seed: int = 0, tiling=None):
        self.inner, self.upsampling, self.seed, self.tiling = inner, Upsampling.of(upsample), seed, tiling
        self._spool: Spool | None = None

    def open(self, sample_rate: int, waveforms: int, recipe: Mapping[str, Any]) -> None:
        if waveforms != 1:
            raise ValueError(f"a super-resolved file holds one waveform; this render makes {waveforms}")
        self._rate = sample_rate
        self._recipe = self.upsampling.recipe(recipe, self.seed)
        self._spool = Spool((1,), np.float32)

    def write(self, piece: np.ndarray) -> None:
        self._spool.append(np.asarray(piece, dtype=np.float32).reshape(1, -1).T)

    def commit(self) -> Any:
        import torch

        try:
            self.inner.open(SAMPLE_RATE, 1, self._recipe)
            generator = torch.Generator().manual_seed(self.seed)
            pieces = self.upsampling.pipe.upsampled(self._spool, self._rate, generator=generator,
                                                    **self.upsampling.keywords(self.seed, self.tiling))
            return drive(pieces, self.inner)
        finally:
            self._close()

    def abort(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


class LiveUpsampledSink:
    """A live render's pieces into ``inner`` at 48 kHz as they come, super-resolved by ``upsample`` segment by
    segment (``audiosr.live.LiveUpsampler``), each at the render's level. A stopped render's last segment is
    super-resolved when it is committed."""

    def __init__(self, inner, upsample, *, seed: int = 0, tiling=None):
        self.inner, self.upsampling, self.seed, self.tiling = inner, Upsampling.of(upsample), seed, tiling
        self._inner_stopped = False

    def open(self, sample_rate: int, waveforms: int, recipe: Mapping[str, Any]) -> None:
        if waveforms != 1:
            raise ValueError(f"a super-resolved render is one waveform; this render makes {waveforms}")
        self._upsampler = LiveUpsampler(self.upsampling.pipe, sample_rate,
                                        **self.upsampling.keywords(self.seed, self.tiling))
        self.inner.open(SAMPLE_RATE, 1, self.upsampling.recipe(
            recipe, self.seed, level="kept", segment_seconds=self._upsampler.segment / sample_rate,
            overlap_seconds=self._upsampler.overlap / sample_rate))

    def write(self, piece: np.ndarray) -> None:
        for out in self._upsampler.feed(np.asarray(piece)[0]):
            try:
                self.inner.write(out[None])
            except BaseException:  # a listener gone, a stop inside the write: nothing more goes in
                self._inner_stopped = True
                raise

    def commit(self) -> Any:
        try:
            if not self._inner_stopped:  # what the render made before it stopped, super-resolved
                for out in self._upsampler.finish():
                    self.inner.write(out[None])
        except BaseException:
            self.inner.abort()
            raise
        return self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()
