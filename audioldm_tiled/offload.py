"""Model offload through accelerate's hooks, as diffusers' ``enable_model_cpu_offload`` and
``enable_sequential_cpu_offload`` install them.

Those hooks sit on a module's ``forward``. The tiled stages run a module's submodules one by one and read some
weights directly (GroupNorm with pooled statistics, the vocoder's channels-last convolutions), which no forward
hook sees. So each stage fires its module's hook itself before it touches the submodules, as diffusers'
``apply_forward_hook`` does for ``AutoencoderKL.decode``, and reads offloaded weights inside ``weights_on_device``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TypeVar

from torch import nn

T = TypeVar("T")


def fire_hook(module: nn.Module) -> None:
    """What the module's forward does first: run its accelerate hook's ``pre_forward``. Under model offload that
    moves the whole module to its execution device (and offloads the model before it in the pipeline's chain); a
    no-op when the module has no hook or is already there."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None:
        hook.pre_forward(module)


def with_hook_fired(module: nn.Module, pieces: Iterator[T]) -> Iterator[T]:
    """``pieces``, with the module's hook fired before each one is computed. A streamed stage hands control to the
    next one between pieces (the vocoder between VAE tiles), whose hook offloads the model before it meanwhile."""
    while True:
        fire_hook(module)
        try:
            piece = next(pieces)
        except StopIteration:
            return
        yield piece


def weights_on_device(module: nn.Module) -> AbstractContextManager[None]:
    """Within the block the module's own weights are usable: under sequential offload they wait on the "meta"
    device and are loaded for each forward, and this loads them for code that reads them directly. A no-op for a
    module without a hook."""
    if getattr(module, "_hf_hook", None) is None:
        return contextlib.nullcontext()
    from accelerate.utils import align_module_device

    return align_module_device(module)
