"""Running a task list on one extent of a sequence: the interpreter that both executors (exact and fast) share.

A *job* says which direction runs (the decoder's or the encoder's task list) and in which units; ``run_tasks``
applies its tasks to a tile; ``run_checked`` retries a half-precision tile in float32 when it overflows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import TilingConfig
from ..geometry import frames_at
from ..offload import weights_on_device
from .groupnorm import GroupStats, apply_group_norm
from .tasks import Act, AddResidual, Conv, Downsample, Global, Norm, SaveResidual, Task, TaskExtent, Upsample

logger = logging.getLogger(__name__)


class NonFiniteTileError(FloatingPointError):
    """A tile produced NaN or inf even when recomputed in float32."""


def convolve(x: torch.Tensor, module: torch.nn.Conv2d) -> torch.Tensor:
    """The module's convolution in x's dtype (which is float32 when a half-precision tile is retried)."""
    if x.dtype == module.weight.dtype:
        return module(x)
    with weights_on_device(module):
        weight, bias = module.weight.to(x.dtype), None if module.bias is None else module.bias.to(x.dtype)
    return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)


Statistics = Callable[[torch.nn.GroupNorm, torch.Tensor], GroupStats]
Attend = Callable[[torch.nn.Module, torch.Tensor, "GroupStats | None", torch.Tensor, int], torch.Tensor]


def run_tasks(tasks: list[Task], x: torch.Tensor, residual: torch.Tensor | None, statistics: Statistics,
               attend: Attend | None = None, core: tuple[int, int] | None = None, length: int = 0,
               batch_groups: int = 1) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Run tasks on one extent of the sequence.

    ``statistics(norm, core values)`` gives each GroupNorm's statistics (attention norms included), in order; the
    proxy computes them from the values, the tiles look them up. A self-attention (fast mode only) is
    ``attend(module, x, norm statistics, core values, outside frames)``; ``length`` (input frames) tells how many
    frames of the sequence the extent does not hold. With ``core`` ([start, stop) in input frames of x) the extent
    shrinks task by task to what the remaining tasks still read (``tasks.TaskExtent``) and the output is the
    core alone. Returns the output, the residual saved by the last SaveResidual (or None) and the time scale there.
    """
    extent = TaskExtent(tasks, x.shape[2], core)
    saved, saved_scale, residual_start = None, Fraction(1), 0

    def core_of(x: torch.Tensor) -> torch.Tensor:
        a, b = extent.core_bounds()
        return x[:, :, a - extent.start : b - extent.start]

    for index, task in enumerate(tasks):
        lo, hi = extent.enter(index)
        if (lo, hi) != (0, x.shape[2]):
            x = x[:, :, lo:hi]
        if isinstance(task, Norm):
            x = apply_group_norm(x, statistics(task.module, core_of(x)), task.module, batch_groups,
                                 task.float32_output)
        elif isinstance(task, Global):
            if attend is None:
                raise TypeError(f"not a local task: {task!r}")
            norm = task.module.group_norm
            norm_stats = None if norm is None else statistics(norm, core_of(x))
            x = attend(task.module, x, norm_stats, core_of(x), max(0, frames_at(length, extent.scale) - x.shape[2]))
        elif isinstance(task, Conv):
            x = convolve(x, task.module)
        elif isinstance(task, Act):
            x = task.module(x)
        elif isinstance(task, Upsample):
            x = F.interpolate(x, scale_factor=float(task.factor), mode="nearest")
        elif isinstance(task, Downsample):
            x = convolve(F.pad(x, (0, 1, 0, 1)), task.module)  # as Downsample2D(padding=0): a zero frame, then stride 2
        elif isinstance(task, SaveResidual):
            saved = residual = x if task.shortcut is None else convolve(x, task.shortcut)
            saved_scale, residual_start = extent.scale, extent.start
        elif isinstance(task, AddResidual):
            offset = extent.start - residual_start
            x = (residual[:, :, offset : offset + x.shape[2]] + x) / task.scale
            residual = None
        else:
            raise TypeError(f"not a local task: {task!r}")
        extent.leave(index)
    if core is not None:
        x = core_of(x)
    return x, saved, saved_scale



@dataclass(frozen=True)
class Program:
    """What the executors need to know about the direction they run: the task list, how many input frames make
    one latent frame (tile sizes are set in latent frames), seconds per input frame, a name for messages and the
    measured peak factor of running it untiled (``memory.UNTILED_*_PEAK_FACTOR``)."""

    tasks: list[Task]
    unit: int
    frame_seconds: float
    name: str
    peak_factor: float
    float32_output: bool = False  # the last tasks run in float32 (a bfloat16 decoder's output layers)

    def seconds(self, frame: int) -> float:
        return frame * self.frame_seconds


def all_finite(x: torch.Tensor) -> bool:
    """True when no value of x is NaN or inf: one float32 sum (float64 for float64 input), in which NaN and inf
    propagate, and which finite half or float32 values cannot overflow (65504 x 1e30 elements would be needed).
    float32 because Apple's MPS has no float64; ``torch.isfinite(x).all()`` would build an abs() copy of x and a
    boolean mask."""
    return math.isfinite(x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32).item())


def run_checked(run, x: torch.Tensor, where: tuple[int, int], job: Program):
    """Run ``run(x)``; on NaN/inf in half precision retry once in float32, else raise naming the time range.

    A retried tile whose values do not fit the half-precision range stays in float32; the next barrier reads
    float32 and half pieces alike (``torch.cat`` promotes), and the final output is cast back.
    """
    out = run(x)
    if all_finite(out[0]):
        return out
    if x.dtype in (torch.float16, torch.bfloat16):
        logger.warning("non-finite values in %s tile %.2f-%.2f s; retrying it in float32", x.dtype,
                       job.seconds(where[0]), job.seconds(where[1]))
        out = run(x.float())
        if all_finite(out[0]):
            narrowed = out[0].to(x.dtype)
            return (narrowed,) + tuple(out[1:]) if all_finite(narrowed) else out
    raise NonFiniteTileError(
        f"the {job.name} produced NaN or inf in the tile covering {job.seconds(where[0]):.2f}-"
        f"{job.seconds(where[1]):.2f} s (dtype {x.dtype}); check its input"
    )


def progress_bar(total: int, config: TilingConfig, desc: str):
    return tqdm(total=total, desc=desc, disable=not config.show_progress, leave=False)


