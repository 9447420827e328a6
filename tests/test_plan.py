"""The render plan decides once: free memory is read once per render, and the store the room check before
denoising chooses is the store the decode after it opens."""

import torch

import audioldm_tiled.memory as memory
import audioldm_tiled.plan as plan
import audioldm_tiled.vae.exact as exact
from audioldm_tiled import TilingConfig

# Exact tiles of 8 latent frames over 2 s (50 frames): the decode holds its paused tiles in a store.
TILES = TilingConfig(enabled=True, tile_frames=8)
PLENTY, SCARCE = 10**12, 1000


def stores_opened(pipe, monkeypatch, free_later: int) -> list[str]:
    """Render with PLENTY free when the plan reads memory and ``free_later`` for anything read after it."""
    opened = []
    open_store = exact.open_store
    monkeypatch.setattr(exact, "open_store", lambda kind, *a: opened.append(kind) or open_store(kind, *a))
    monkeypatch.setattr(plan, "available_memory", lambda device=None: PLENTY)
    monkeypatch.setattr(memory, "available_memory", lambda device=None: free_later)
    pipe("rain", audio_length_in_s=2.0, num_inference_steps=1, tiling=TILES, generator=torch.Generator())
    return opened


def test_memory_that_changes_after_the_plan_does_not_change_the_store(tiny_pipe, monkeypatch):
    assert stores_opened(tiny_pipe, monkeypatch, free_later=PLENTY) == ["device"]
    assert stores_opened(tiny_pipe, monkeypatch, free_later=SCARCE) == ["device"]


def test_without_a_plan_the_decode_reads_memory_itself(tiny, monkeypatch):
    """What the test above guards against: a decode left to resolve ``store="auto"`` from scarce memory itself
    goes to disk."""
    from audioldm_tiled.vae import tiled_decode

    opened = []
    open_store = exact.open_store
    monkeypatch.setattr(exact, "open_store", lambda kind, *a: opened.append(kind) or open_store(kind, *a))
    monkeypatch.setattr(memory, "available_memory", lambda device=None: SCARCE)
    tiled_decode(tiny["vae"], torch.randn(1, 8, 50, 16), TILES.replace(show_progress=False))
    assert opened == ["disk"]
