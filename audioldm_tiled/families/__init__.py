"""The model families, and the one registry that loading, the package's exports and the random-weight builder
read.

A family is a diffusers audio pipeline put behind the engine (``pipeline.TiledAudioPipelineMixin``). What differs
between families is a small interface, the mixin's hooks, with AudioLDM's behaviour as the default:

- ``_parent_defaults()``: the parent's steps and guidance (read from its ``__call__``);
- ``_family_arguments``: call arguments only this family takes (AudioLDM 2's ``transcription``, ...);
- ``_check_prompt_inputs(...)``: the parent's ``check_inputs``;
- ``_encode_conditioning(...)``: the encoded prompt, as the tensors a step-end callback sees;
- ``_unet_conditioning(...)``: each window's UNet arguments (``conditioning.py``);
- ``_check_timeline(...)``: what a timeline means for this conditioning;
- geometry: ``_mel_frame_seconds`` and ``_latent_rows``, read from the vocoder's and the VAE's configs.

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
