"""How a model family conditions its UNet, per denoising window: the one part of the denoising loop
(``denoise.py``) that differs between families.

AudioLDM and MusicLDM condition on a class label, CLAP's text embedding, which the UNet projects and concatenates
to its time embedding (FiLM). A family adapter holds the conditioning of every window, negative rows first when
guided, and turns a batch of windows into the UNet's keyword arguments in the parent pipeline's row layout: all
unconditional rows of the batch first, then all conditional rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClassLabels:
    """Class-label conditioning (AudioLDM, MusicLDM): ``embeds`` (W or 1, 2 or 1, B, D), per window the negative
    and the conditional rows of each of the B waveforms, or the conditional rows alone without guidance."""

    embeds: torch.Tensor

    @property
    def guided(self) -> bool:
        return self.embeds.shape[1] == 2

    @property
    def windows(self) -> int:
        return self.embeds.shape[0]

    def for_windows(self, count: int) -> ClassLabels:
        """The same conditioning for each of ``count`` windows (from one shared by all)."""
        if self.windows == count:
            return self
        return ClassLabels(self.embeds.expand(count, *self.embeds.shape[1:]))

    def unet_kwargs(self, windows: range) -> dict:
        """The UNet's conditioning arguments for a batch of ``windows``, rows as the parent lays them out."""
        labels = torch.cat([self.embeds[i, k] for k in range(self.embeds.shape[1]) for i in windows])
        return {"encoder_hidden_states": None, "class_labels": labels}
