"""The original AudioSR modules for the parity tests (``audioldm_tiled.testing.audiosr_original``): a test that
needs them skips where they cannot be imported."""

from __future__ import annotations

import types

import pytest

from audioldm_tiled.testing import audiosr_original


def original() -> dict[str, types.ModuleType]:
    try:
        return audiosr_original.original()
    except audiosr_original.OriginalUnavailable as error:
        pytest.skip(str(error))


def latent_diffusion(arch, seed: int = 0):
    original()  # skips here rather than failing inside
    return audiosr_original.latent_diffusion(arch, seed)


def original_batch(recording, seed: int) -> dict:
    original()
    return audiosr_original.original_batch(recording, seed)
