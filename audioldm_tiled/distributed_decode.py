"""From denoised latents to the waveform across the ranks of a process group.

Every rank holds the whole latent (the distributed denoising leaves it so). The VAE decode is shared out by tiles
(``vae.decode_on_ranks``): each rank decodes a contiguous span of mel frames. The vocoder's chunks are shared out
too, planned over the whole mel as one process plans them; a rank's chunks read a few context frames past its own
span, which its neighbours send (``distributed.exchange_frames``). The waveform comes back in rank order
(``distributed.in_rank_order``): on rank 0 as it is made, so a WAV streams to disk there.

Each tile and each chunk is computed from the same numbers as in one process, so the waveform equals one process's
decode with the same tiles: bit for bit in fast mode and for exact mode's host and disk stores, to float rounding
with the device store (whose self-attention is one call over the whole sequence in one process, and runs per key
tile across ranks).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .config import TilingConfig
from .distributed import Ranks, exchange_frames, in_rank_order, smallest, together
from .geometry import join_frames
from .vae import decode_job, decode_on_ranks
from .vocoder import choose_chunk_frames, plan_chunks, vocode_chunks


def waveform_on_ranks(vae, vocoder, latents: torch.Tensor, config: TilingConfig, ranks: Ranks,
                      root: int | None = 0) -> Iterator[torch.Tensor]:
    """The waveform of ``latents`` (already divided by the VAE's scaling factor), decoded and vocoded by all ranks:
    pieces (B, samples) in order on ``root`` and nothing elsewhere, or on every rank with ``root=None``."""
    spans, pieces = decode_on_ranks(vae, latents, config, ranks)
    mel = together(ranks, lambda: join_frames([piece.squeeze(1) for piece in pieces], 1))  # (B, t, n_mels) or None
    total = max(stop for _, stop in spans)
    example = torch.empty((), dtype=latents.dtype, device=latents.device).expand(
        latents.shape[0], 1, vocoder.config.model_in_dim)
    chunk_frames = config.vocoder_chunk_frames or smallest(ranks, choose_chunk_frames(vocoder, example, config))
    chunks = plan_chunks(vocoder, example, total, config.replace(vocoder_chunk_frames=chunk_frames))
    shares = [Ranks(rank, ranks.world).share(len(chunks)) for rank in range(ranks.world)]
    needed = [(chunks[s[0]].start, chunks[s[-1]].stop) if s else (0, 0) for s in shares]
    own, want = spans[ranks.rank], needed[ranks.rank]
    shape = (latents.shape[0], 1, vocoder.config.model_in_dim)
    mel_dtype = torch.float32 if decode_job(vae, config).float32_output else latents.dtype
    received = exchange_frames(ranks, lambda lo, hi: mel[:, lo - own[0] : hi - own[0]], spans, needed, shape,
                               mel_dtype, dim=1)
    mine = shares[ranks.rank]
    if mine:
        held = [(lo, piece) for lo, piece in received]
        lo, hi = max(own[0], want[0]), min(own[1], want[1])
        if lo < hi:
            held.append((lo, mel[:, lo - own[0] : hi - own[0]]))
        mel = join_frames([piece.to(latents.device) for _, piece in sorted(held, key=lambda item: item[0])], 1)
        waves = vocode_chunks(vocoder, mel, want[0], [chunks[i] for i in mine], mine[-1] == len(chunks) - 1, config)
    else:
        waves = iter(())
    del received
    yield from in_rank_order(ranks, waves, root)
