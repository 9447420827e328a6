"""Long audio with AudioLDM: windowed denoising, tiled VAE decode with shared GroupNorm statistics, chunked vocoder."""

from .architectures import ARCHITECTURES, random_pipeline
from .audio import save_wav
from .config import TilingConfig
from .memory import InsufficientMemoryError
from .pipeline import AudioLDMTiledPipeline
from .vae import iter_decode, tiled_decode, tiled_encode
from .vocoder import chunked_vocode, stream_vocode

__all__ = [
    "ARCHITECTURES",
    "AudioLDMTiledPipeline",
    "InsufficientMemoryError",
    "TilingConfig",
    "chunked_vocode",
    "iter_decode",
    "random_pipeline",
    "save_wav",
    "stream_vocode",
    "tiled_decode",
    "tiled_encode",
]
