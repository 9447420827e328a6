"""The tiled VAE: the decoder and encoder as task lists (``tasks``), run on tiles along time by one interpreter
(``interpreter``), either exactly with GroupNorm statistics pooled at every barrier (``exact``) or from statistics
estimated once (``fast``, with ``attention``); ``dispatch`` holds the public entry points and ``budget`` the peak
memory models they plan with."""

from .dispatch import (
    check_exact_decode_fits,
    decode_job,
    decode_on_ranks,
    decode_tiles,
    encode_job,
    encode_tiles,
    iter_decode,
    iter_encode,
    tiled_decode,
    tiled_encode,
)
from .interpreter import NonFiniteTileError

__all__ = [
    "NonFiniteTileError",
    "check_exact_decode_fits",
    "decode_job",
    "decode_on_ranks",
    "decode_tiles",
    "encode_job",
    "encode_tiles",
    "iter_decode",
    "iter_encode",
    "tiled_decode",
    "tiled_encode",
]
