"""The callbacks of a call: they watch a render and may steer it from step to step (diffusers' legacy
``callback``/``callback_steps`` and ``callback_on_step_end``), but are not part of what is rendered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

# The call arguments that are callbacks, with the parents' defaults.
CALLBACK_ARGUMENTS = (("callback", None), ("callback_steps", 1), ("callback_on_step_end", None),
                      ("callback_on_step_end_tensor_inputs", ("latents",)))


@dataclass(frozen=True)
class Callbacks:
    callback: Callable[[int, int, torch.Tensor], None] | None = None  # legacy: every `callback_steps` steps
    callback_steps: int | None = 1
    on_step_end: Callable[..., dict] | None = None  # callback_on_step_end(pipe, step, timestep, tensors)
    tensor_inputs: tuple[str, ...] | list[str] = ("latents",)  # the tensors it is handed

    def __post_init__(self) -> None:
        if isinstance(self.on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            object.__setattr__(self, "tensor_inputs", self.on_step_end.tensor_inputs)
        steps = self.callback_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"`callback_steps` has to be a positive integer but is {steps!r}")

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> Callbacks:
        """Take the callback arguments out of a call's ``arguments``: they observe a render, they do not define it."""
        return cls(*(arguments.pop(name, default) for name, default in CALLBACK_ARGUMENTS))

    def check(self, pipe) -> None:
        unknown = [k for k in self.tensor_inputs if k not in pipe._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has to be in {pipe._callback_tensor_inputs}, but found {unknown}"
            )

    def step_function(self, pipe, current: dict[str, torch.Tensor]) -> Callable[[int, Any, torch.Tensor], Any]:
        """What the denoising loop calls after every step: it hands the callbacks the latents and the encoded
        prompt (``current``, updated in place with what ``callback_on_step_end`` returns) and returns the latents
        to go on with."""

        def step(i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
            if self.on_step_end is not None:
                available = {"latents": latents, **current}
                outputs = self.on_step_end(pipe, i, t, {k: available[k] for k in self.tensor_inputs}) or {}
                latents = outputs.get("latents", latents)
                current.update({k: v for k, v in outputs.items() if k in current})
            if self.callback is not None and i % (self.callback_steps or 1) == 0:
                self.callback(i // getattr(pipe.scheduler, "order", 1), t, latents)
            return latents

        return step
