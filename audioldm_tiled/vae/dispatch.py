"""The public entry points of the tiled VAE: ``tiled_decode``, ``iter_decode``, ``tiled_encode``, ``iter_encode``.

Each decides, for one call, whether to run untiled (when that fits the memory budget, retried in tiles once on
out-of-memory under ``enabled="auto"``) or in exact or fast tiles, and plans the tiles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from ..config import TilingConfig
from ..constants import MEL_FRAMES_PER_SECOND
from ..distributed import Ranks, smallest
from ..files import format_bytes
from ..geometry import Tile, join_frames, plan_tiles
from ..memory import (
    BUDGET_SHARE,
    InsufficientMemoryError,
    available_memory,
    is_out_of_memory,
    large_allocations_returned,
    memory_budget,
    release_cached_memory,
)
from ..offload import with_hook_fired
from ..spool import Frames
from .budget import (
    UNTILED_DECODE_PEAK_FACTOR,
    UNTILED_ENCODE_PEAK_FACTOR,
    choose_tile_frames,
    exact_stored_bytes,
    untiled_fits,
)
from .exact import iter_exact
from .fast import fast_pieces
from .interpreter import Program
from .store import check_disk_room, resolve_store
from .tasks import alignment, decoder_tasks, encoder_tasks, time_scale

logger = logging.getLogger(__name__)


def plan_job_tiles(job: Program, x: torch.Tensor, config: TilingConfig) -> list[Tile]:
    """Balanced tiles of ``config.tile_frames`` latent frames, or of the size the memory budget allows, as input
    frames: boundaries on multiples of ``job.unit``, the last core ending at the input's last frame."""
    tile = config.tile_frames or choose_tile_frames(job.tasks, x, config, job.unit, job.peak_factor)
    length = x.shape[2]
    tiles = [t.scaled(job.unit) for t in plan_tiles(max(1, length // job.unit), tile)]
    tiles[-1] = replace(tiles[-1], stop=length, core_stop=length)  # frames past the last whole unit, as untiled
    return tiles


def iter_tiled(job: Program, x: torch.Tensor, config: TilingConfig, untiled: Callable[[], torch.Tensor],
               circular: bool = False) -> Iterator[torch.Tensor]:
    """``job.tasks`` run on ``x`` in pieces along time, in order: untiled when ``config`` says so or it fits the
    budget (retried tiled once on out-of-memory under ``enabled="auto"``), else in exact or fast tiles. A
    ``circular`` time axis (a loop) always runs in tiles, which read across the wrap."""
    with large_allocations_returned():
        yield from _pieces(job, x, config, untiled, circular)


def _pieces(job: Program, x: torch.Tensor, config: TilingConfig, untiled: Callable[[], torch.Tensor],
            circular: bool) -> Iterator[torch.Tensor]:
    tiles = None
    if circular:  # tiles, even one: they read across the wrap
        tiles = plan_job_tiles(job, x, config)
    elif config.enabled is not False:
        tiles = plan_job_tiles(job, x, config)
        if len(tiles) == 1:
            tiles = None
        elif config.enabled == "auto":
            fits, needed, budget = untiled_fits(job.tasks, x, config, job.peak_factor)
            if fits:
                tiles = None
            else:
                logger.info("tiling the %s: untiled would need about %.2f GB, the budget is %.2f GB",
                            job.name, needed / 1e9, budget / 1e9)
    if tiles is None and job.float32_output:
        # diffusers' decode runs every layer in the model's dtype: one exact tile over the whole sequence computes
        # what it computes, with the output layers in float32
        whole = plan_job_tiles(job, x, config.replace(tile_frames=max(1, x.shape[2] // job.unit)))
        yield from _tiled_pieces(job, x, whole, config.replace(mode="exact"))
        return
    if tiles is None:
        try:
            yield untiled()
            return
        except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, everything else re-raised
            if config.enabled != "auto" or not is_out_of_memory(error):
                raise
            failure = str(error)  # not the error: its traceback holds the failed attempt's tensors
        release_cached_memory(x.device)  # now that they are free
        logger.warning("untiled %s ran out of memory (%s); retrying once with tiles", job.name, failure)
        tiles = plan_job_tiles(job, x, config)
    yield from _tiled_pieces(job, x, tiles, config, circular=circular)


def _tiled_pieces(job: Program, x: torch.Tensor, tiles: list[Tile], config: TilingConfig, ranks: Ranks | None = None,
                  circular: bool = False) -> Iterator[torch.Tensor]:
    """The output cores of ``tiles`` in order, in fast or exact mode, in ``x``'s dtype or float32 where the job's
    output layers run in it (with ``ranks``: this rank's share of them)."""
    if config.mode == "fast":
        pieces = fast_pieces(job, x, tiles, config, ranks, circular)
    else:
        pieces = (core for _, core in iter_exact(job, x, tiles, config, ranks=ranks,
                                                circular=circular))
    dtype = torch.float32 if job.float32_output else x.dtype
    for piece in pieces:
        yield piece.to(dtype)


def _check_input(name: str, x: torch.Tensor | Frames, channels: int, min_frames: int) -> None:
    if not isinstance(x, (torch.Tensor, Frames)) or x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor (B, C, T, F), got {getattr(x, 'shape', type(x))}")
    if x.shape[1] != channels or x.shape[2] < min_frames:
        raise ValueError(
            f"{name} must have {channels} channel(s) and at least {min_frames} frame(s), got shape {tuple(x.shape)}"
        )


def decode_job(vae, config: TilingConfig | None = None) -> Program:
    """The decoder's program; ``config.decode_precision`` says whether its output layers run in float32 (with
    "float32" its input is float32 too, so all of it does)."""
    widen = decode_precision(vae, config) != "model"
    tasks = decoder_tasks(vae, float32_output=widen)  # each latent frame becomes time_scale(tasks) mel frames
    return Program(tasks, unit=1, frame_seconds=float(time_scale(tasks)) / MEL_FRAMES_PER_SECOND, name="VAE decode",
                   peak_factor=UNTILED_DECODE_PEAK_FACTOR, float32_output=widen)


# Measured with docs/experiments/half_precision.py on a trained 16 kHz HiFi-GAN: rounding the mel to bfloat16 alone
# costs 24.5 dB SNR, more than rounding the vocoder's weights (38.0 dB); float16's rounding of it 43.7 dB. End to
# end from bfloat16 latents (random VAE, trained vocoder): the output layers alone in float32 gained 0.2 dB, the
# whole decoder in float32 6.8 dB. "auto" therefore decodes a bfloat16 VAE's latents in float32, a float16 one's
# in float16.
FLOAT32_DECODE_FOR = (torch.bfloat16,)


def decode_precision(vae, config: TilingConfig | None) -> str:
    """``config.decode_precision`` for this VAE: "model", "output" or "float32" ("model" for a float32 VAE)."""
    precision = "auto" if config is None else config.decode_precision
    if vae.dtype in (torch.float32, torch.float64):
        return "model"
    if precision == "auto":
        return "float32" if vae.dtype in FLOAT32_DECODE_FOR else "model"
    return precision


def decode_input(vae, latents: torch.Tensor, config: TilingConfig | None) -> torch.Tensor:
    """The latents as the decode takes them: in float32 where the whole decoder runs in it."""
    return latents.float() if decode_precision(vae, config) == "float32" else latents


def encode_job(vae) -> Program:
    tasks = encoder_tasks(vae)
    return Program(tasks, unit=alignment(tasks), frame_seconds=1 / MEL_FRAMES_PER_SECOND, name="VAE encode",
               peak_factor=UNTILED_ENCODE_PEAK_FACTOR)


def check_exact_decode_fits(vae, latents: torch.Tensor, config: TilingConfig) -> None:
    """Raise InsufficientMemoryError where the activations that exact tiling of ``latents`` holds for the whole
    sequence have no room in the store ``config.store`` resolves to: the memory budget for ``device``, the host's
    free memory for ``host``, free space in ``config.store_dir`` for ``disk``. Pipelines call it before denoising:
    a render whose decode cannot fit then fails in seconds, not after the whole denoising (fast mode's memory does
    not grow with the length, and ``enabled=False`` is the caller's choice to fail hard)."""
    if config.mode != "exact" or config.enabled is False:
        return
    job = decode_job(vae, config)
    needed = exact_stored_bytes(job.tasks, decode_input(vae, latents, config))
    kind = resolve_store(config, needed, latents.device)
    if kind == "disk":
        check_disk_room(needed, config.store_dir, job.name)
        return
    if kind == "host":
        budget, where = available_memory("cpu"), "the host's free memory"
    else:
        budget = memory_budget(config, latents.device)
        where = (f"the memory budget of {format_bytes(budget)} ({BUDGET_SHARE:.0%} of the free memory unless "
                 "TilingConfig.memory_budget says otherwise)")
    if needed <= budget:
        return
    raise InsufficientMemoryError(
        f"an exact VAE decode of {latents.shape[2] * job.frame_seconds:.0f} s holds about {format_bytes(needed)} for "
        f"the whole sequence, more than {where}. Let it go to disk (TilingConfig(store='disk') or 'auto', CLI "
        "--store disk), decode in fast mode (TilingConfig(mode='fast'), CLI --mode fast), whose memory does not "
        "grow with the length, or set memory_budget (CLI --memory-budget GB) if more memory is free."
    )


def decode_tiles(vae, latents: torch.Tensor, config: TilingConfig) -> list[Tile]:
    """The tiles a tiled decode of ``latents`` uses (what the memory budget or ``config.tile_frames`` gives)."""
    return plan_job_tiles(decode_job(vae), latents, config)


def encode_tiles(vae, mel: torch.Tensor, config: TilingConfig) -> list[Tile]:
    """The tiles (in mel frames) a tiled encode of ``mel`` uses."""
    return plan_job_tiles(encode_job(vae), mel, config)


@torch.no_grad()
def iter_decode(vae, latents: torch.Tensor, config: TilingConfig | None = None,
                circular: bool = False) -> Iterator[torch.Tensor]:
    """``vae.decode(latents).sample`` in pieces along time, in order, each (B, 1, t, n_mels).

    Fast mode yields each tile as soon as it is decoded; exact mode yields once the last GroupNorm barrier is
    passed. An untiled decode yields one piece. ``circular`` decodes a seamless loop: time wraps around, so the
    ends are decoded as if the latents were repeated, with the statistics and attention of one period.
    """
    _check_input("latents", latents, vae.config.latent_channels, 1)
    config = config or TilingConfig()
    latents = decode_input(vae, latents, config)
    pieces = iter_tiled(decode_job(vae, config), latents, config, lambda: vae.decode(latents).sample, circular)
    yield from with_hook_fired(vae, pieces)


@torch.no_grad()
def decode_on_ranks(vae, latents: torch.Tensor, config: TilingConfig,
                    ranks: Ranks) -> tuple[list[tuple[int, int]], Iterator[torch.Tensor]]:
    """One decode shared out over ``ranks``, each holding all of ``latents``: the mel frames [start, stop) each
    rank decodes, and this rank's pieces in order.

    Every rank plans the tiles one process would plan, deciding together (tile size from the smallest budget;
    untiled only where it fits on every rank), and decodes its contiguous share of them (``Ranks.share``). A
    decode that runs in one piece runs on rank 0 alone, as in one process (out-of-memory retry included).
    """
    _check_input("latents", latents, vae.config.latent_channels, 1)
    latents = decode_input(vae, latents, config)
    job = decode_job(vae, config)
    tiles = _tiles_on_ranks(job, latents, config, ranks)
    scale = int(time_scale(job.tasks))
    if tiles is None:
        spans = [(0, latents.shape[2] * scale)] + [(0, 0)] * (ranks.world - 1)
        pieces = iter_decode(vae, latents, config) if ranks.rank == 0 else iter(())
        return spans, pieces
    spans = []
    for rank in range(ranks.world):
        share = Ranks(rank, ranks.world).share(len(tiles))
        spans.append((tiles[share[0]].core_start * scale, tiles[share[-1]].core_stop * scale) if share else (0, 0))

    def pieces():
        with large_allocations_returned():
            yield from _tiled_pieces(job, latents, tiles, config, ranks)

    return spans, with_hook_fired(vae, pieces())


def _tiles_on_ranks(job: Program, x: torch.Tensor, config: TilingConfig, ranks: Ranks) -> list[Tile] | None:
    """The tiles of ``_pieces`` decided once for all ranks, or None for one untiled piece."""
    if config.enabled is False:
        return None
    tile = config.tile_frames or smallest(ranks, choose_tile_frames(job.tasks, x, config, job.unit, job.peak_factor))
    tiles = plan_job_tiles(job, x, config.replace(tile_frames=tile))
    if len(tiles) == 1:
        return None
    if config.enabled == "auto" and smallest(ranks, int(untiled_fits(job.tasks, x, config, job.peak_factor)[0])):
        return None
    return tiles


@torch.no_grad()
def tiled_decode(vae, latents: torch.Tensor, config: TilingConfig | None = None,
                 circular: bool = False) -> torch.Tensor:
    """What ``vae.decode(latents).sample`` returns, log-mel (B, 1, 4T, n_mels), decoded in tiles along time.

    Args:
        vae: a diffusers ``AutoencoderKL`` with the standard decoder (AudioLDM, AudioLDM2, MusicLDM).
        latents: (B, C, T, F), already divided by ``vae.config.scaling_factor``.
        config: tiling settings; ``None`` is ``TilingConfig()`` (exact mode, tiles only when untiled won't fit).
        circular: decode a seamless loop (see ``iter_decode``).
    """
    return join_frames(list(iter_decode(vae, latents, config, circular)), 2)


@torch.no_grad()
def tiled_encode(vae, mel: torch.Tensor, config: TilingConfig | None = None) -> DiagonalGaussianDistribution:
    """What ``vae.encode(mel).latent_dist`` returns, encoded in tiles along time by the decode's executors.

    Args:
        vae: a diffusers ``AutoencoderKL`` with the standard encoder (AudioLDM, AudioLDM2, MusicLDM).
        mel: log-mel (B, 1, T, n_mels). T need not be a multiple of the VAE factor: like the untiled encoder, each
            stride-2 layer keeps T // 2 frames, so the latent has T // 4 frames (for AudioLDM's VAE).
        config: tiling settings, in latent frames as for the decode; ``None`` is ``TilingConfig()``.

    Returns:
        diffusers' ``DiagonalGaussianDistribution`` (``.mean``, ``.std``, ``.sample(generator)``, ``.mode()``).
    """
    return DiagonalGaussianDistribution(join_frames(list(iter_encode(vae, mel, config)), 2))


@torch.no_grad()
def iter_encode(vae, mel: torch.Tensor | Frames, config: TilingConfig | None = None) -> Iterator[torch.Tensor]:
    """``vae.encode(mel).latent_dist.parameters`` (B, 2 x latent channels, T', F') in pieces along time, in order:
    what ``tiled_encode`` joins, for a caller that uses each piece as it comes. ``mel`` may be ``spool.Frames``, a
    log-mel too long to hold: the tiles read their own frames of it (the whole is read only to run untiled)."""
    job = encode_job(vae)
    _check_input("mel", mel, vae.config.in_channels, job.unit)
    pieces = iter_tiled(job, mel, config or TilingConfig(),
                        lambda: vae.encode(mel.narrow(2, 0, mel.shape[2])).latent_dist.parameters)
    yield from with_hook_fired(vae, pieces)
