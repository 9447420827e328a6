"""Prompt timelines: a soundscape whose text changes along time, e.g. rain, then a storm, then birds at dawn.

A timeline is a list of ``(start_s, text)`` or ``(start_s, end_s, text)`` segments. Each denoising window is
conditioned on a mix of the segments' text embeddings, weighted by how many of the window's frames each segment
covers. Windows overlap and slide across a boundary, so the conditioning crossfades over about one window (10 s), and
the merge of the windows' noise predictions smooths the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .constants import MAX_SECONDS
from .geometry import Tile, take_frames


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    text: str


def is_timeline(prompt: Any) -> bool:
    """A list of tuples/lists is a timeline; a string or a list of strings is an ordinary (batch of) prompt(s)."""
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(isinstance(p, (list, tuple)) for p in prompt)


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            abs(value) > MAX_SECONDS:
        raise ValueError(f"prompt timeline: {what} must be a finite number of seconds, at most {MAX_SECONDS:g} "
                         f"(a year), got {value!r}")
    return float(value)


def parse_timeline(prompt: Sequence[Sequence[Any]], length_s: float) -> list[Segment]:
    """Validated segments covering [0, length_s): sorted, non-negative, inside the audio, with non-empty text.

    A segment without an end lasts until the next one starts (the last one until the end of the audio).
    """
    if not is_timeline(prompt):
        raise ValueError("prompt timeline: expected a non-empty list of (start_s, text) or (start_s, end_s, text)")
    raw = []
    for index, item in enumerate(prompt):
        if len(item) not in (2, 3):
            raise ValueError(f"prompt timeline: segment {index} must be (start_s, text) or (start_s, end_s, text), "
                             f"got {item!r}")
        text = item[-1]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"prompt timeline: segment {index} has empty text")
        start = _seconds(item[0], f"segment {index}'s start")
        end = _seconds(item[1], f"segment {index}'s end") if len(item) == 3 else None
        raw.append((start, end, text))
    for index, (start, _, _) in enumerate(raw):
        if start < 0:
            raise ValueError(f"prompt timeline: segment {index} starts at {start:g} s; starts must be >= 0")
        if start >= length_s:
            raise ValueError(f"prompt timeline: segment {index} starts at {start:g} s, beyond the audio's "
                             f"{length_s:g} s")
        if index and start <= raw[index - 1][0]:
            raise ValueError(f"prompt timeline: segments must be sorted by start; segment {index} starts at "
                             f"{start:g} s, not after segment {index - 1}")
    segments = []
    for index, (start, end, text) in enumerate(raw):
        following = raw[index + 1][0] if index + 1 < len(raw) else length_s
        end = following if end is None else end
        if end <= start or end > length_s:
            raise ValueError(f"prompt timeline: segment {index} ends at {end:g} s; it must end after its start "
                             f"({start:g} s) and within the audio ({length_s:g} s)")
        if end > following:
            raise ValueError(f"prompt timeline: segment {index} ends at {end:g} s and overlaps the next one, which "
                             f"starts at {following:g} s")
        segments.append(Segment(start, end, text))
    return segments


def frame_membership(segments: list[Segment], frames: int, frames_per_second: float, start: int = 0) -> torch.Tensor:
    """(frames - start, segments) one-hot: the segment each latent frame from ``start`` on belongs to; frames in a
    gap between segments (or before the first) belong to the nearest one."""
    centres = (torch.arange(start, frames, dtype=torch.float64) + 0.5) / frames_per_second
    starts = torch.tensor([s.start_s for s in segments], dtype=torch.float64)
    ends = torch.tensor([s.end_s for s in segments], dtype=torch.float64)
    distance = torch.clamp(starts[None] - centres[:, None], min=0) + torch.clamp(centres[:, None] - ends[None], min=0)
    return F.one_hot(distance.argmin(dim=1), len(segments)).double()


def window_mix(segments: list[Segment], windows: list[Tile], frames: int, frames_per_second: float) -> torch.Tensor:
    """(windows, segments) weights: the share of each window's frames that each segment covers (rows sum to one).
    A loop's windows wrap around the end (``geometry.take_frames``), so there the last segment flows into the
    first."""
    membership = frame_membership(segments, frames, frames_per_second)
    return torch.stack([take_frames(membership, w.start, w.stop, dim=0).mean(dim=0) for w in windows])


def span_mix(segments: list[Segment], start: int, stop: int, frames_per_second: float) -> torch.Tensor:
    """(segments,) weights of one window over latent frames [start, stop): the share of its frames each segment
    covers (a live render's window, which no list of all windows holds)."""
    return frame_membership(segments, stop, frames_per_second, start=start).mean(dim=0)


def deciding_mix(segments: list[Segment], window: int, stride: int, windows: int | None,
                 frames_per_second: float) -> torch.Tensor:
    """(rows, segments) weights from which the same segments dominate some row as dominate some window of a render
    with ``windows`` windows (None: endless) of ``window`` latent frames every ``stride`` frames, without laying
    out every window: a live timeline may reach a year ahead.

    Each frame belongs to its nearest segment (``frame_membership``), so the frames nearest to one segment form one
    run, its territory. A window inside a territory mixes that segment alone: a territory that holds a whole window
    gives one row of that segment alone, and only the windows across a shorter territory are mixed, a few per
    segment. Territories are found one frame wide on each side (the rows of those windows are exact mixes)."""
    rows = []
    last = math.inf if windows is None else windows - 1
    for index, (low, high) in enumerate(_territories(segments, frames_per_second)):
        inside = -(-(low + 1) // stride)  # the first window starting inside the territory, one frame in
        if inside <= last and inside * stride + window <= high - 1:
            rows.append(F.one_hot(torch.tensor(index), len(segments)).double())
            continue
        first = max(0, (low - 1 - window) // stride + 1)
        stop = last + 1 if high == math.inf else min(last + 1, -(-(high + 1) // stride))
        rows += [span_mix(segments, k * stride, k * stride + window, frames_per_second) for k in range(first, stop)]
    return torch.stack(rows)


def _territories(segments: list[Segment], frames_per_second: float) -> list[tuple[int, float]]:
    """Each segment's latent frames [low, high), give or take one frame at each end: from the middle of the gap
    before it to the middle of the gap after it (the first from frame 0, the last without end)."""
    middles = [(a.end_s + b.start_s) / 2 * frames_per_second for a, b in zip(segments, segments[1:])]
    edges = [0, *(max(0, math.floor(m - 0.5) + 1) for m in middles), math.inf]
    return list(zip(edges, edges[1:]))


def mix_embeddings(embeddings: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """(windows, ..., D) embeddings mixed from (segments, ..., D) with (windows, segments) weights.

    AudioLDM's class embeddings are unit vectors (CLAP, normalised in ``_encode_prompt``); a blend is rescaled to
    unit length so that every window is conditioned in the range the UNet was trained on.
    """
    mixed = torch.einsum("ws,s...d->w...d", mix.to(embeddings.dtype).to(embeddings.device), embeddings)
    return F.normalize(mixed, dim=-1)


def dominant_segments(mix: torch.Tensor) -> tuple[int, ...]:
    """For each window, the segment covering most of its frames (the earlier of two that cover as much): how a
    family whose conditioning cannot be blended (token sequences) switches along a timeline."""
    return tuple(int(i) for i in mix.argmax(dim=1))
