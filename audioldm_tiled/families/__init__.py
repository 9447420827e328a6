"""The model families, and the one registry that loading, the package's exports and the random-weight builder
read.

A family is a diffusers audio pipeline put behind the engine (``pipeline.TiledAudioPipelineMixin``), implementing
the interface in ``base.ModelFamily``: its call arguments of its own, the checks of its prompt arguments, how it
encodes a prompt and conditions each window's UNet call, and what a timeline means for that; the parent's defaults
and the latent geometry are read from the parent and the loaded components. AudioLDM and MusicLDM share one
implementation (``audioldm.ClassLabelFamily``), AudioLDM 2 has its own.

Adding a family is a module here with its tiled class, a line in ``REGISTRY``, and its tests (``test_families.py``
parametrizes the checks every family owes its parent).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One model family: where its tiled pipeline class lives and which pipeline classes a folder's
    ``model_index.json`` names for it."""

    name: str
    module: str  # the module under audioldm_tiled.families
    class_name: str  # the tiled pipeline class
    parent_name: str  # the diffusers pipeline class it subclasses

    def pipeline_class(self) -> type:
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.class_name)


REGISTRY = {family.name: family for family in (
    Family("audioldm", "audioldm", "AudioLDMTiledPipeline", "AudioLDMPipeline"),
    Family("musicldm", "musicldm", "MusicLDMTiledPipeline", "MusicLDMPipeline"),
    Family("audioldm2", "audioldm2", "AudioLDM2TiledPipeline", "AudioLDM2Pipeline"),
)}


def family_of(class_name: str) -> Family | None:
    """The family whose parent or tiled class is ``class_name`` (a ``model_index.json``'s ``_class_name``)."""
    return next((f for f in REGISTRY.values() if class_name in (f.parent_name, f.class_name)), None)
