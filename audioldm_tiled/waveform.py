"""The one route from denoised latents to the waveform, for the call, ``stream()``, ranks, loops and edits: the
tiled VAE decode feeds the chunked vocoder piece by piece; a loop's decode and vocoder wrap around; across ranks
both are shared out (``distributed_decode``); an edit's generated audio is assembled with the input's samples.
The call concatenates the pieces, ``stream()`` hands them out as they come."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from .config import TilingConfig
from .distributed import Ranks
from .distributed_decode import waveform_on_ranks
from .editing import Edit
from .vae import iter_decode
from .vae.dispatch import decode_input
from .vocoder import stream_vocode, vocode_loop


def waveform_pieces(pipe, latents: torch.Tensor, keep: int, config: TilingConfig, circular: bool = False,
                    edit: Edit | None = None, ranks: Ranks | None = None,
                    root: int | None = 0) -> Iterator[np.ndarray]:
    """The waveform of denoised ``latents`` (B, C, T, F) as float32 numpy pieces (B, samples), ``keep`` samples in
    all: an edit's assembled with its input's own samples. Across ``ranks`` the pieces come out on ``root`` and
    nothing on the others (every rank with ``root=None``)."""
    # The VAE may be kept in float32 under a half-precision UNet; a decode in float32 scales its input in float32.
    latents = decode_input(pipe.vae, latents.to(pipe.vae.dtype), config)
    pieces = _generated(pipe, 1 / pipe.vae.config.scaling_factor * latents, keep, config, circular, ranks, root)
    if edit is None:
        yield from pieces
        return
    if ranks is None or root is None or ranks.rank == root:
        yield from edit.assemble(pieces)
    # The assembly may stop before the last generated piece. Across ranks every piece is part of a collective
    # sequence that all ranks must finish, so the rest is run through (on the other ranks: all of this rank's
    # share, whose pieces come out on the root).
    if ranks is not None:
        for _ in pieces:
            pass


def _generated(pipe, latents, keep, config, circular, ranks, root) -> Iterator[np.ndarray]:
    if circular:
        mel = (piece.squeeze(1) for piece in iter_decode(pipe.vae, latents, config, circular=True))
        waves = vocode_loop(pipe.vocoder, mel, config)
    elif ranks is None:
        mel = (piece.squeeze(1) for piece in iter_decode(pipe.vae, latents, config))
        # The vocoder pulls the decode's tiles as it goes: the decode's bar measures both (two would interleave).
        waves = stream_vocode(pipe.vocoder, mel, latents.shape[2] * pipe.vae_scale_factor,
                              config.replace(show_progress=False))
    else:  # decoded and vocoded by all ranks; the pieces arrive in order on the root
        waves = waveform_on_ranks(pipe.vae, pipe.vocoder, latents, config, ranks, root=root)
    emitted = 0
    for wave in waves:
        wave = wave[:, : max(0, keep - emitted)].cpu().float().numpy()
        emitted += wave.shape[1]
        if wave.shape[1]:
            yield wave


class StreamedRender:
    """A streamed render (``pipe.stream``): iterate for its waveform pieces, float32 (batch, samples); ``recipe``
    is what its plan resolved (``plan.render_recipe``), None until the first piece is asked for; ``close()`` stops
    it. ``pieces(render)`` makes the pieces and sets ``render.recipe``."""

    def __init__(self, pieces: Callable[[StreamedRender], Iterator[np.ndarray]]):
        self.recipe: dict[str, Any] | None = None
        self._pieces = pieces(self)

    def __iter__(self) -> StreamedRender:
        return self

    def __next__(self) -> np.ndarray:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()
