"""How a model family conditions its UNet, per denoising window: the one part of the denoising loop
(``denoise.py``) that differs between families.

- AudioLDM and MusicLDM condition on a class label, CLAP's text embedding, which the UNet projects and concatenates
  to its time embedding (FiLM): ``class_labels``.
- AudioLDM 2 cross-attends to two sequences: the eight vectors GPT-2 generates from the projected CLAP and T5
  embeddings (``encoder_hidden_states``) and the T5 sequence itself with its padding mask
  (``encoder_hidden_states_1``, ``encoder_attention_mask_1``): ``cross_attention``.

- AudioSR conditions on the low-passed input's latent, frame by frame: its channels are concatenated to the noisy
  latent's, each window reading its own frames (``frames``).

Either way the adapter holds, per UNet argument, the rows of every window, negative rows first when guided, and
turns a batch of windows into the UNet's keyword arguments in the parent pipelines' row layout: all unconditional
rows of the batch first, then all conditional rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .geometry import take_frames


@dataclass(frozen=True)
class UNetConditioning:
    """Per UNet argument, ``(R, 2 or 1, B, ...)``: R sets of rows, each the negative and the conditional rows of
    the B waveforms (or the conditional rows alone without guidance). Window ``i`` reads set ``index[i]``, or set
    ``i`` without an index; one set with no index serves every window. ``constants`` are passed as they are."""

    rows: dict[str, torch.Tensor]
    constants: dict[str, Any] = field(default_factory=dict)
    index: tuple[int, ...] | None = None
    # 2 or 1 tensors (B, C, T, F): channels along the latent's frames, concatenated to each window's own frames of
    # the noisy latent (the negative first when guided; a view of one value may stand for it, and ``spool.Frames``
    # for one kept on disk, which each window reads its frames of)
    frames: tuple[torch.Tensor, ...] | None = None

    @property
    def _first(self) -> torch.Tensor | None:
        return next(iter(self.rows.values()), None)

    @property
    def guided(self) -> bool:
        if self._first is not None:
            return self._first.shape[1] == 2
        return self.frames is not None and len(self.frames) == 2

    @property
    def windows(self) -> int:
        if self.index is not None:
            return len(self.index)
        return 1 if self._first is None else self._first.shape[0]

    def for_windows(self, count: int) -> UNetConditioning:
        """The same conditioning for each of ``count`` windows (from one set shared by all)."""
        if self.windows == count:
            return self
        if self.windows != 1:
            raise ValueError(f"conditioning for {self.windows} windows cannot serve {count}")
        return replace(self, index=(self.index or (0,)) * count)

    def unet_kwargs(self, windows: range) -> dict[str, Any]:
        """The UNet's conditioning arguments for a batch of ``windows``, rows as the parent lays them out."""
        sets = [i if self.index is None else self.index[i] for i in windows]
        batched = {name: torch.cat([t[j, k] for k in range(t.shape[1]) for j in sets])
                   for name, t in self.rows.items()}
        return {**self.constants, **batched}

    def model_input(self, crops: torch.Tensor, tiles: list) -> torch.Tensor:
        """The UNet's input for a batch of windows: their ``crops`` of the noisy latent (rows of every window in
        turn), twice when guided, with each window's own ``frames`` concatenated along the channels."""
        model_input = torch.cat([crops] * 2) if self.guided else crops
        if self.frames is None:
            return model_input
        own = torch.cat([take_frames(frames, w.start, w.stop) for frames in self.frames for w in tiles])
        return torch.cat([model_input, own.to(model_input.dtype)], dim=1)


def concatenated_frames(frames: tuple[torch.Tensor, ...]) -> UNetConditioning:
    """AudioSR: ``frames``, 2 or 1 tensors (B, C, T, F), the negative and the conditional latent concatenated to
    the noisy latent's channels, no cross-attention."""
    return UNetConditioning({}, {"encoder_hidden_states": None}, frames=frames)


def class_labels(embeds: torch.Tensor) -> UNetConditioning:
    """AudioLDM, MusicLDM: ``embeds`` (W or 1, 2 or 1, B, D), per window or one for all, as the UNet's class
    labels, with no cross-attention."""
    return UNetConditioning({"class_labels": embeds}, {"encoder_hidden_states": None})


def cross_attention(generated: torch.Tensor, sequence: torch.Tensor, mask: torch.Tensor,
                    index: tuple[int, ...] | None = None) -> UNetConditioning:
    """AudioLDM 2: GPT-2's generated sequence (R, 2 or 1, B, 8, D1), the T5 sequence (..., L, D2) and its mask
    (..., L); window ``i`` reads set ``index[i]``."""
    return UNetConditioning({"encoder_hidden_states": generated, "encoder_hidden_states_1": sequence,
                             "encoder_attention_mask_1": mask}, index=index)


def guidance_rows(prompt_embeds: torch.Tensor, groups: int, guided: bool,
                  name: str = "prompt_embeds") -> torch.Tensor:
    """(2 or 1, groups, ...): the negative and conditional rows of ``prompt_embeds`` (negatives first, as
    ``_encode_prompt`` stacks them), or the conditional rows alone without guidance. A callback may have cut the
    negatives off (diffusers' ``SDCFGCutoffCallback`` keeps ``prompt_embeds[-1:]``)."""
    rows = prompt_embeds.shape[0]
    if rows == 2 * groups:
        both = prompt_embeds.view(2, groups, *prompt_embeds.shape[1:])
        return both if guided else both[1:]
    if rows == groups:
        if guided:
            raise ValueError(f"guidance_scale > 1 needs negative embeddings, but `{name}` holds only the "
                             f"{groups} conditional row(s): the prompt was encoded without guidance, or a callback "
                             "removed them")
        return prompt_embeds.view(1, groups, *prompt_embeds.shape[1:])
    raise ValueError(f"`{name}` has {rows} rows; expected {groups} (conditional) or {2 * groups} "
                     "(negative, then conditional)")
