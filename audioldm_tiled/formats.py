"""The files a render can be delivered as: their formats and encodings by extension, the rates their codecs take,
the rules between the delivery arguments (format, encoding, rate, loudness target, peak limit), and the tags a file
carries of the render that made it. ``sinks.FileSink`` writes them."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .constants import VERSION
from .loudness import DEFAULT_TRUE_PEAK


@dataclass(frozen=True)
class FileFormat:
    """A container and its sample encodings, as libsndfile names them."""

    name: str  # libsndfile's format
    subtypes: tuple[str, ...]  # the first is the default
    rates: tuple[int, ...] | None = None  # the only sample rates the codec takes; None: any
    bytes_per_sample: float = 2.0  # an upper bound of the encoded size, for the free-space check


_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# By file extension. Lossy sizes are bounds of their default encoders' rates (Vorbis and Opus about 128 kbit/s,
# MP3 up to 320 kbit/s at 48 kHz: under one byte a sample).
FORMATS = {
    "wav": FileFormat("WAV", ("PCM_16", "PCM_24", "PCM_32", "FLOAT")),
    "flac": FileFormat("FLAC", ("PCM_16", "PCM_24")),
    "ogg": FileFormat("OGG", ("VORBIS",), bytes_per_sample=1.0),
    "opus": FileFormat("OGG", ("OPUS",), rates=(8000, 12000, 16000, 24000, 48000), bytes_per_sample=1.0),
    "mp3": FileFormat("MP3", ("MPEG_LAYER_III",), rates=_MP3_RATES, bytes_per_sample=1.0),
}
SAMPLE_BYTES = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4}
# Tags this library writes and what libsndfile calls them (WAV LIST/INFO, Vorbis comments, ID3).
TAG_NAMES = ("title", "comment", "software", "artist", "album", "date", "genre")


def file_format(path: str | os.PathLike, format: str | None = None, subtype: str | None = None) -> tuple[str, str]:
    """The (extension key, subtype) a file is written with: ``format`` (an extension such as "flac"), else the
    path's extension; ``subtype`` checked against the format, else its default."""
    key = (format or Path(path).suffix.lstrip(".")).lower()
    if key not in FORMATS:
        what = f"`format` {format!r}" if format else f"the extension of {str(path)!r}"
        raise ValueError(f"{what} names no format this library writes; use one of {', '.join(FORMATS)}")
    allowed = FORMATS[key].subtypes
    subtype = allowed[0] if subtype is None else subtype
    if subtype not in allowed:
        raise ValueError(f"`subtype` {subtype!r} is not one of {key}'s: {', '.join(allowed)}")
    return key, subtype


def check_sample_rate(key: str, rate: object, name: str = "sample_rate") -> None:
    """A positive integer rate that the format's codec takes."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or not 1 <= rate <= 768_000:
        raise ValueError(f"`{name}` must be a whole number of Hz from 1 to 768000, got {rate!r}")
    rates = FORMATS[key].rates
    if rates is not None and rate not in rates:
        raise ValueError(f"{key} files take a `{name}` of {', '.join(map(str, rates))} Hz, got {rate}")


def check_delivery(path: str | os.PathLike, format: str | None = None, subtype: str | None = None,
                   sample_rate: int | None = None, loudness: float | None = None,
                   true_peak: float | None = None) -> tuple[str, str, float | None, float | None]:
    """The rules between a file's delivery arguments, without touching the filesystem: returns the format's key,
    the subtype, the loudness target and the true-peak limit (-1 dBTP when a target is given without one)."""
    key, subtype = file_format(path, format, subtype)
    if sample_rate is not None:
        check_sample_rate(key, sample_rate)
    loudness = _check_level("loudness", loudness, -70.0, 0.0)
    true_peak = _check_level("true_peak", true_peak, -70.0, 0.0)
    if true_peak is None and loudness is not None:
        true_peak = DEFAULT_TRUE_PEAK
    return key, subtype, loudness, true_peak


def _check_level(name: str, value: object, lowest: float, highest: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not lowest <= value <= highest:
        raise ValueError(f"`{name}` must be a number from {lowest:g} to {highest:g}, got {value!r}")
    return float(value)


def recipe_tags(recipe: Mapping[str, Any]) -> dict[str, str]:
    """What a file says of itself in its own metadata: the prompt (or the timeline's texts) as its title, the whole
    recipe as JSON in its comment (``json.loads`` reads it back), and this library as its software."""
    import json

    if recipe.get("timeline"):
        title = "; ".join(f"{segment[0]:g} s: {segment[-1]}" for segment in recipe["timeline"])
    else:
        title = recipe.get("prompt") if isinstance(recipe.get("prompt"), str) else ""
    return {"title": title, "comment": json.dumps(dict(recipe), ensure_ascii=False),
            "software": f"audioldm-tiled {VERSION}"}
