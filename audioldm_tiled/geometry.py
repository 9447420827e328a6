"""Pure tile planning along one axis: the VAE tiles, the vocoder chunks and the denoising windows all come from here.

A tile owns its *core*; it reads its *extent*, the core widened by a halo on each side and clipped to the input::

        0                                                   length
        |------------------------------------------------------|
    tile 0:  [core 0 ........)+halo
    tile 1:             halo+[core 1 ........)+halo
    tile 2:                             halo+[core 2 .........]
                 extent = core +- halo, clipped to [0, length)

Cores are balanced (sizes differ by at most ``multiple``), cover every frame exactly once and the last one ends
flush with the input. With ``fixed_extent`` every extent has the same length (shifted inward at the ends), which is
what batched denoising windows need.

On a *circular* axis (a seamless loop) frame ``length`` is frame 0 again: extents are never clipped or shifted, so
the first tile's extent starts before 0 and the last one's ends past ``length``; ``take_frames`` and
``add_frames`` read and write such extents modulo the length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch


@dataclass(frozen=True)
class Tile:
    """One planned tile: it owns ``[core_start, core_stop)`` and reads ``[start, stop)``."""

    start: int
    stop: int
    core_start: int
    core_stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    @property
    def core_length(self) -> int:
        return self.core_stop - self.core_start

    def scaled(self, factor: int, length: int | None = None) -> Tile:
        """The same tile at a resolution ``factor`` times finer (e.g. latent frames to mel frames)."""
        stop = self.stop * factor if length is None or self.stop * factor < length else length
        core_stop = self.core_stop * factor if length is None or self.core_stop * factor < length else length
        return Tile(self.start * factor, stop, self.core_start * factor, core_stop)


def _check(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def plan_tiles(length: int, tile: int, halo: int = 0, multiple: int = 1, fixed_extent: bool = False,
               circular: bool = False) -> list[Tile]:
    """Plan tiles of core size at most ``tile`` over ``length`` frames.

    Args:
        length: frames to cover (>= 1).
        tile: largest core, in frames. One tile is returned when ``tile >= length``.
        halo: frames read on each side of a core.
        multiple: core boundaries fall on multiples of this (the last stop is ``length`` itself).
        fixed_extent: make every extent ``min(length, tile + 2 * halo)`` long, shifting it inward at the ends.
        circular: the axis wraps around; extents centred on their cores are neither clipped nor shifted.
    """
    _check("length", length, 1)
    _check("tile", tile, 1)
    _check("halo", halo, 0)
    _check("multiple", multiple, 1)
    units = math.ceil(length / multiple)  # cores are built from whole units of `multiple` frames
    tile_units = max(1, tile // multiple)
    count = math.ceil(units / tile_units)
    bounds = [min(length, (units * i // count) * multiple) for i in range(count + 1)]
    bounds[-1] = length
    extent = min(length, tile + 2 * halo)
    tiles = []
    for core_start, core_stop in zip(bounds[:-1], bounds[1:]):
        if fixed_extent:
            centre_start = core_start - (extent - (core_stop - core_start)) // 2
            start = centre_start if circular else min(max(0, centre_start), length - extent)
            stop = start + extent
        else:
            start, stop = halo_extent(core_start, core_stop, halo, length, circular)
        tiles.append(Tile(start, stop, core_start, core_stop))
    return tiles


def halo_extent(core_start: int, core_stop: int, halo: int, length: int, circular: bool = False) -> tuple[int, int]:
    """[start, stop) of a core widened by ``halo`` a side: clipped to [0, length), or not on a circular axis."""
    if circular:
        return core_start - halo, core_stop + halo
    return max(0, core_start - halo), min(length, core_stop + halo)


def join_frames(pieces: list[torch.Tensor], dim: int) -> torch.Tensor | None:
    """``pieces`` concatenated along ``dim`` (the one piece itself, no copy; None for no pieces)."""
    if not pieces:
        return None
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)


def wrapped_runs(start: int, stop: int, length: int) -> list[tuple[int, int]]:
    """[start, stop) on a circular axis of ``length`` frames as runs of real frames [a, b), in order."""
    runs = []
    while start < stop:
        a = start % length
        b = min(length, a + stop - start)
        runs.append((a, b))
        start += b - a
    return runs


def take_frames(x: torch.Tensor, start: int, stop: int, dim: int = 2) -> torch.Tensor:
    """Frames [start, stop) of ``x`` along ``dim``, read modulo its length (a view when no wrap is needed)."""
    runs = wrapped_runs(start, stop, x.shape[dim])
    return join_frames([x.narrow(dim, a, b - a) for a, b in runs], dim)


def add_frames(target: torch.Tensor, start: int, values: torch.Tensor, dim: int = 2) -> None:
    """``target[frames start ...] += values`` along ``dim``, modulo the target's length."""
    offset = 0
    for a, b in wrapped_runs(start, start + values.shape[dim], target.shape[dim]):
        target.narrow(dim, a, b - a).add_(values.narrow(dim, offset, b - a))
        offset += b - a


def frames_at(frames: int, scale: Fraction) -> int:
    """``frames`` input frames at a resolution ``scale`` times the input's: a stride-2 layer turns n frames into
    n // 2, so scales compose by flooring."""
    return math.floor(frames * scale)


class ShrinkingExtent:
    """The frames of a tile's extent still computed by a chain of layers, at the current resolution, counted from
    the extent's first frame: [start, stop). ``core`` is the wanted part, in input frames.

    Before each layer the extent is cut to the core plus what that layer and the ones after it still read, so the
    last layers (in a VAE decoder the widest, at the highest resolution) do not compute the outer halo that only
    the first ones needed. ``start`` stays on the frame pairs of later stride-2 layers when the extent's start, the
    core's and the reaches are multiples of their alignment, as the tile planner and ``tasks.reaches`` make them.
    """

    def __init__(self, frames: int, core: tuple[int, int]):
        self.start, self.stop, self.core, self.scale = 0, frames, core, Fraction(1)

    def core_bounds(self) -> tuple[int, int]:
        return frames_at(self.core[0], self.scale), frames_at(self.core[1], self.scale)

    def cut(self, reach: int) -> tuple[int, int]:
        """Cut to the core +- ``reach``; returns the part kept, relative to the previous start."""
        a, b = self.core_bounds()
        start, stop = max(self.start, a - reach), min(self.stop, b + reach)
        kept = (start - self.start, stop - self.start)
        self.start, self.stop = start, stop
        return kept

    def rescale(self, factor: Fraction) -> None:
        """Follow an upsampler (n frames -> 2n) or a stride-2 downsampler (n frames -> n // 2)."""
        frames = self.stop - self.start
        self.scale *= factor
        self.start = frames_at(self.start, factor)
        self.stop = self.start + frames_at(frames, factor)


@dataclass(frozen=True)
class ProgressiveLayout:
    """Where a progressive (live) render's windows, VAE tiles and vocoder chunks fall; the same for every length,
    so a render's beginning does not depend on where it ends. Window k is denoised to the end before window k + 1
    starts; what it makes final is decoded as soon as the decoder's right halo is final, and vocoded as soon as
    the vocoder's right context is decoded::

        windows (latent frames)   [0 ........ W)
                                        [S ........ S+W)            S = W - overlap: new frames per window
                                                [2S ........ 2S+W)
        decode cores              [0 .... W-h)[.. S+W-h)[.. 2S+W-h)   h: decoder halo, read on each side
        vocoder cores (mel)       [0 .. 4(W-h)-c)[ ... )[ ... )       c: vocoder context, read on each side

    Window k's first ``overlap`` frames are final already (from window k - 1): a known region. After window k the
    frames [0, kS + W) are final, decode tile k owns [D_k, D_k+1) with D_k+1 = kS + W - h, and vocoder chunk k owns
    mel frames [M_k, M_k+1) with M_k+1 = factor * D_k+1 - c: every tile and chunk reads only final input."""

    window: int  # latent frames per window
    overlap: int  # frames each window shares with the one before (known)
    halo: int  # decoder halo, latent frames per side
    context: int  # vocoder context, mel frames per side
    factor: int  # mel frames per latent frame

    def __post_init__(self) -> None:
        for name, minimum in (("window", 1), ("overlap", 0), ("halo", 0), ("context", 0), ("factor", 1)):
            _check(name, getattr(self, name), minimum)
        if self.overlap >= self.window:
            raise ValueError(f"overlap ({self.overlap}) must be shorter than the window ({self.window})")
        if 2 * self.halo > self.window or self.factor * (self.window - self.halo) <= self.context:
            raise ValueError(f"a window of {self.window} latent frames is too short for the decoder's halo of "
                             f"{self.halo} frames a side and the vocoder's context of {self.context} mel frames")

    @property
    def stride(self) -> int:
        return self.window - self.overlap

    @property
    def kept_frames(self) -> int:
        """Final latent frames held between windows: the next window's known region, and the next tile's left
        halo and core start."""
        return max(self.overlap, 2 * self.halo)

    def denoised(self, k: int) -> Tile:
        """Window k: it reads and denoises [start, stop) and makes final [core_start, core_stop) (its new frames)."""
        start = k * self.stride
        return Tile(start, start + self.window, start + (self.overlap if k else 0), start + self.window)

    def decoded(self, k: int) -> Tile:
        """Decode tile k, in latent frames: the core it owns and the final frames it reads."""
        core_start = 0 if k == 0 else self.denoised(k - 1).stop - self.halo
        core_stop = self.denoised(k).stop - self.halo
        return Tile(max(0, core_start - self.halo), core_stop + self.halo, core_start, core_stop)

    def vocoded(self, k: int) -> Tile:
        """Vocoder chunk k, in mel frames: the core it owns and the decoded frames it reads."""
        tile = self.decoded(k)
        core_start = 0 if k == 0 else self.factor * tile.core_start - self.context
        core_stop = self.factor * tile.core_stop - self.context
        return Tile(max(0, core_start - self.context), core_stop + self.context, core_start, core_stop)

    def windows_for(self, mel_frames: int) -> int:
        """How many windows a render needs before its vocoded mel frames reach ``mel_frames``."""
        first = self.vocoded(0).core_stop
        return 1 if mel_frames <= first else 1 + -(-(mel_frames - first) // (self.factor * self.stride))
