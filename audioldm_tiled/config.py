"""One validated configuration object for every tiled stage: VAE decode, vocoder and denoising windows."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Literal

Enabled = bool | Literal["auto"]

MODES = ("exact", "fast")
WEIGHTINGS = ("cosine", "triangular", "uniform")
VOCODER_PRECISIONS = ("auto", "model", "float32")
DECODE_PRECISIONS = ("auto", "model", "output", "float32")
STORES = ("auto", "device", "host", "disk")
# The length of the clips AudioLDM and its relatives were trained on: one denoising window, unless set otherwise.
TRAINING_SECONDS = 10.24
DEFAULT_OVERLAP = 0.375  # of a window: neighbouring windows share 96 of AudioLDM's 256 frames


def _check_positive_int(name: str, value: object, allow_none: bool = True, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"TilingConfig.{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class TilingConfig:
    """How long audio is cut into pieces. Every field has a default that works; lengths in latent frames (25 per s)."""

    enabled: Enabled = "auto"  # True: always tile; False: never (fail hard on OOM); "auto": tile when untiled won't fit
    mode: str = "exact"  # "exact": pooled GroupNorm statistics, equals untiled; "fast": statistics estimated once
    tile_frames: int | None = None  # latent frames per tile core; None: chosen from memory_budget
    pad_frames: int | None = None  # fast mode halo per side in latent frames; None: the decoder's receptive field
    memory_budget: int | None = None  # bytes; None: free memory of the device (available RAM on CPU)
    store: str = "auto"  # exact mode's paused tiles: "device", "host" memory, "disk"; "auto": device if they fit
    store_dir: str | os.PathLike | None = None  # store="disk": where the temporary files go; None: TMPDIR or /tmp
    proxy_frames: int = 256  # fast mode: latent frames per proxy round (rounds: up to a quarter of the decode)
    vocoder_chunk_frames: int | None = None  # mel frames per vocoder chunk core; None: chosen from memory_budget
    vocoder_context_frames: int | None = None  # mel frames of context per side; None: the vocoder's receptive field
    vocoder_precision: str = "auto"  # "auto": float32 for bfloat16 weights, else theirs; "model"; "float32"
    decode_precision: str = "auto"  # "model": the VAE's dtype; "output": its last GroupNorm, activation and conv_out
    # in float32; "float32": the whole decoder in float32 (half weights widened as used); "auto": "float32" for a
    # bfloat16 VAE, else "model". Either way but "model", the mel reaches the vocoder in float32
    windowed: bool = True  # denoise in overlapping time windows when the latent is longer than one window
    window_frames: int | None = None  # latent frames per denoising window; None: the training clip, 10.24 s (256
    # latent frames for AudioLDM's 40 ms frames)
    window_overlap_frames: int | None = None  # frames shared by neighbouring windows; None: 37.5 % of the window
    window_weighting: str = "cosine"  # merge weights across a window: "cosine", "triangular" or "uniform"
    window_batch_size: int | None = None  # windows per UNet call; None: chosen from memory_budget
    show_progress: bool = True  # progress bars over tiles when called outside a pipeline

    def __post_init__(self) -> None:
        if self.enabled not in (True, False, "auto"):
            raise ValueError(f"TilingConfig.enabled must be True, False or 'auto', got {self.enabled!r}")
        if self.mode not in MODES:
            raise ValueError(f"TilingConfig.mode must be one of {MODES}, got {self.mode!r}")
        _check_positive_int("tile_frames", self.tile_frames)
        _check_positive_int("pad_frames", self.pad_frames, minimum=0)
        _check_positive_int("memory_budget", self.memory_budget)
        _check_positive_int("proxy_frames", self.proxy_frames, allow_none=False, minimum=8)
        _check_positive_int("vocoder_chunk_frames", self.vocoder_chunk_frames)
        _check_positive_int("vocoder_context_frames", self.vocoder_context_frames, minimum=0)
        _check_positive_int("window_frames", self.window_frames, minimum=8)
        if self.window_frames is not None and self.window_frames % 8:
            raise ValueError(f"TilingConfig.window_frames must be a multiple of 8, got {self.window_frames}")
        _check_positive_int("window_overlap_frames", self.window_overlap_frames, minimum=0)
        if None not in (self.window_frames, self.window_overlap_frames) and \
                self.window_overlap_frames * 2 > self.window_frames:
            raise ValueError(
                "TilingConfig.window_overlap_frames must be at most half of window_frames "
                f"({self.window_frames // 2}), got {self.window_overlap_frames}"
            )
        if self.vocoder_precision not in VOCODER_PRECISIONS:
            raise ValueError(f"TilingConfig.vocoder_precision must be one of {VOCODER_PRECISIONS}, "
                             f"got {self.vocoder_precision!r}")
        if self.decode_precision not in DECODE_PRECISIONS:
            raise ValueError(f"TilingConfig.decode_precision must be one of {DECODE_PRECISIONS}, "
                             f"got {self.decode_precision!r}")
        if self.store not in STORES:
            raise ValueError(f"TilingConfig.store must be one of {STORES}, got {self.store!r}")
        if self.store_dir is not None and not isinstance(self.store_dir, (str, os.PathLike)):
            raise ValueError(f"TilingConfig.store_dir must be a directory path or None, got {self.store_dir!r}")
        if self.window_weighting not in WEIGHTINGS:
            raise ValueError(
                f"TilingConfig.window_weighting must be one of {WEIGHTINGS}, got {self.window_weighting!r}"
            )
        _check_positive_int("window_batch_size", self.window_batch_size)
        for name in ("windowed", "show_progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TilingConfig.{name} must be True or False, got {getattr(self, name)!r}")

    def replace(self, **changes: object) -> TilingConfig:
        """A copy with some fields changed; unknown names raise a ValueError listing the fields."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown TilingConfig field(s) {unknown}; allowed: {sorted(known)}")
        return replace(self, **changes)

    def with_windows_for(self, latent_frame_seconds: float) -> TilingConfig:
        """This config with the window lengths left None set for a model whose latent frame lasts
        ``latent_frame_seconds``: windows of the ``TRAINING_SECONDS`` clip (rounded to a multiple of 8 frames),
        overlapping by ``DEFAULT_OVERLAP`` of a window (rounded likewise)."""
        window = self.window_frames
        if window is None:
            window = max(8, 8 * round(TRAINING_SECONDS / latent_frame_seconds / 8))
        overlap = self.window_overlap_frames
        if overlap is None:
            overlap = min(window // 2, 8 * round(DEFAULT_OVERLAP * window / 8))
        return self.replace(window_frames=window, window_overlap_frames=overlap)

    @classmethod
    def from_seconds(cls, window_s: float | None = None, overlap_s: float | None = None, **fields_) -> TilingConfig:
        """Window and overlap given in seconds, rounded to whole multiples of 8 latent frames (0.32 s)."""
        from .constants import LATENT_FRAMES_PER_SECOND

        if window_s is not None:
            if not (isinstance(window_s, (int, float)) and math.isfinite(window_s) and window_s > 0):
                raise ValueError(f"window_s must be a positive number of seconds, got {window_s!r}")
            fields_["window_frames"] = max(8, 8 * round(window_s * LATENT_FRAMES_PER_SECOND / 8))
        if overlap_s is not None:
            if not (isinstance(overlap_s, (int, float)) and math.isfinite(overlap_s) and overlap_s >= 0):
                raise ValueError(f"overlap_s must be a non-negative number of seconds, got {overlap_s!r}")
            fields_["window_overlap_frames"] = 8 * round(overlap_s * LATENT_FRAMES_PER_SECOND / 8)
        return cls(**fields_)
