"""Long audio with AudioLDM, AudioLDM 2 and MusicLDM: windowed denoising, tiled VAE decode with shared GroupNorm
statistics, chunked vocoder.

Names are imported on first use, so that ``audioldm-tiled --help`` answers without loading torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .constants import VERSION as __version__  # noqa: F401 - the package's version, as packages give it
from .families import REGISTRY

# public name -> module that defines it
_EXPORTS = {
    "ARCHITECTURES": "testing.architectures",
    "random_pipeline": "testing.architectures",
    "save_wav": "audio",
    "TilingConfig": "config",
    "DEFAULT_MODEL": "loading",
    "ModelLoadError": "loading",
    "load_pipeline": "loading",
    "InsufficientMemoryError": "memory",
    "render_to_wav": "render",
    "render_to_file": "render",
    "Request": "request",
    "ArraySink": "sinks",
    "FileSink": "sinks",
    "Delivered": "sinks",
    "AudioGeometry": "audio_geometry",
    "render_live": "render",
    "LiveRender": "live",
    "LiveState": "live",
    "iter_decode": "vae",
    "tiled_decode": "vae",
    "tiled_encode": "vae",
    "chunked_vocode": "vocoder",
    "stream_vocode": "vocoder",
    "AudioSRTiledPipeline": "audiosr.pipeline",
    "Upsampling": "audiosr.sink",
}
_EXPORTS.update({family.class_name: f"families.{family.module}" for family in REGISTRY.values()})
__all__ = [
    "ARCHITECTURES",
    "ArraySink",
    "AudioGeometry",
    "Delivered",
    "FileSink",
    "Request",
    "render_to_file",
    "DEFAULT_MODEL",
    "AudioLDM2TiledPipeline",
    "AudioLDMTiledPipeline",
    "AudioSRTiledPipeline",
    "InsufficientMemoryError",
    "LiveRender",
    "LiveState",
    "ModelLoadError",
    "MusicLDMTiledPipeline",
    "TilingConfig",
    "chunked_vocode",
    "iter_decode",
    "load_pipeline",
    "random_pipeline",
    "render_live",
    "render_to_wav",
    "save_wav",
    "stream_vocode",
    "tiled_decode",
    "tiled_encode",
    "Upsampling",
]
assert sorted(__all__) == sorted(_EXPORTS)

if TYPE_CHECKING:
    from .audio import save_wav
    from .audio_geometry import AudioGeometry
    from .audiosr.pipeline import AudioSRTiledPipeline
    from .audiosr.sink import Upsampling
    from .config import TilingConfig
    from .families.audioldm import AudioLDMTiledPipeline
    from .families.audioldm2 import AudioLDM2TiledPipeline
    from .families.musicldm import MusicLDMTiledPipeline
    from .live import LiveRender, LiveState
    from .loading import DEFAULT_MODEL, ModelLoadError, load_pipeline
    from .memory import InsufficientMemoryError
    from .render import render_live, render_to_file, render_to_wav
    from .request import Request
    from .sinks import ArraySink, Delivered, FileSink
    from .testing.architectures import ARCHITECTURES, random_pipeline
    from .vae import iter_decode, tiled_decode, tiled_encode
    from .vocoder import chunked_vocode, stream_vocode


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'audioldm_tiled' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
