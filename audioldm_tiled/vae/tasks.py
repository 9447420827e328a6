"""The VAE encoder and decoder as typed lists of tasks built from their diffusers modules.

Tasks are either *local* along time (convolutions, activations, nearest upsampling, residual bookkeeping), so a tile
with a halo computes them exactly, or *barriers* (GroupNorm, which needs statistics of the whole sequence, and
self-attention, which needs the whole sequence). The executors (``exact``, ``fast``) run tiles up to each barrier,
in both directions: resolutions change by exact fractions (upsampling x2 in the decoder, stride-2 downsampling in the
encoder), so time scales are ``Fraction``s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from ..geometry import ShrinkingExtent


@dataclass(frozen=True)
class Conv:
    """A stride-1, 'same'-padded convolution; ``halo`` time frames per side of its receptive field."""

    module: nn.Conv2d

    @property
    def halo(self) -> int:
        return self.module.dilation[0] * (self.module.kernel_size[0] - 1) // 2


@dataclass(frozen=True)
class Norm:
    """GroupNorm: a barrier, applied with statistics pooled over every tile; with ``float32_output`` its output
    (computed in float32 in any case) is not rounded back to the input's dtype, and what follows runs in float32."""

    module: nn.GroupNorm
    float32_output: bool = False


@dataclass(frozen=True)
class Act:
    """A pointwise activation."""

    module: nn.Module


@dataclass(frozen=True)
class Upsample:
    """Nearest-neighbour upsampling by ``factor`` along time and frequency."""

    factor: int


@dataclass(frozen=True)
class Downsample:
    """diffusers' Downsample2D with padding 0: one zero frame appended (time and frequency), then a 3x3 convolution
    of stride 2. Output frame j reads input frames 2j..2j+2; n input frames give n // 2."""

    module: nn.Conv2d

    factor = Fraction(1, 2)
    halo = 1  # input frames needed beyond the output frame's own two


@dataclass(frozen=True)
class SaveResidual:
    """Keep ``shortcut(x)`` (or ``x``) for the end of a resnet block; the shortcut is a 1x1 convolution."""

    shortcut: nn.Module | None


@dataclass(frozen=True)
class AddResidual:
    """``x = (residual + x) / scale``, closing a resnet block."""

    scale: float


@dataclass(frozen=True)
class Global:
    """A module that must see the whole sequence (self-attention): a barrier, run untiled."""

    module: nn.Module


Task = Conv | Norm | Act | Upsample | Downsample | SaveResidual | AddResidual | Global


def _unsupported(what: str, module: nn.Module) -> ValueError:
    return ValueError(
        f"tiled VAE: unsupported {what} in {type(module).__name__}; the tiled executor knows the standard diffusers "
        "AutoencoderKL encoder and decoder (DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D, ResnetBlock2D with "
        "GroupNorm). "
        "Use TilingConfig(enabled=False) for this model."
    )


def _conv(module: nn.Module) -> Conv:
    if not isinstance(module, nn.Conv2d) or module.stride != (1, 1) or module.groups != 1:
        raise _unsupported("convolution", module)
    pad = module.padding if isinstance(module.padding, tuple) else (module.padding,) * 2
    for axis in (0, 1):
        if pad[axis] != module.dilation[axis] * (module.kernel_size[axis] - 1) // 2:
            raise _unsupported("padding", module)
    return Conv(module)


def _norm(module: nn.Module) -> Norm:
    if not isinstance(module, nn.GroupNorm):
        raise _unsupported("normalisation", module)
    return Norm(module)


def resnet_tasks(block: nn.Module) -> list[Task]:
    """ResnetBlock2D (no time embedding, no resampling inside) as tasks."""
    if not isinstance(block, ResnetBlock2D) or block.upsample is not None or block.downsample is not None:
        raise _unsupported("resnet", block)
    if block.time_emb_proj is not None or block.time_embedding_norm not in ("default", "group"):
        raise _unsupported("time embedding", block)
    shortcut = _conv(block.conv_shortcut).module if block.conv_shortcut is not None else None
    return [
        SaveResidual(shortcut),
        _norm(block.norm1),
        Act(block.nonlinearity),
        _conv(block.conv1),
        _norm(block.norm2),
        Act(block.nonlinearity),
        _conv(block.conv2),
        AddResidual(block.output_scale_factor),
    ]


def upsampler_tasks(upsampler: nn.Module) -> list[Task]:
    if not isinstance(upsampler, Upsample2D) or upsampler.use_conv_transpose or upsampler.norm is not None:
        raise _unsupported("upsampler", upsampler)
    if not upsampler.interpolate or not upsampler.use_conv:
        raise _unsupported("upsampler", upsampler)
    return [Upsample(2), _conv(upsampler.conv)]


def downsampler_tasks(downsampler: nn.Module) -> list[Task]:
    if not isinstance(downsampler, Downsample2D) or downsampler.norm is not None or not downsampler.use_conv:
        raise _unsupported("downsampler", downsampler)
    conv = downsampler.conv
    if downsampler.padding != 0 or conv.kernel_size != (3, 3) or conv.stride != (2, 2) or conv.padding != (0, 0) \
            or conv.dilation != (1, 1) or conv.groups != 1:
        raise _unsupported("downsampler", downsampler)
    return [Downsample(conv)]


def mid_block_tasks(mid: nn.Module) -> list[Task]:
    tasks = resnet_tasks(mid.resnets[0])
    for attention, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attention is not None:
            if not isinstance(attention, Attention):
                raise _unsupported("attention", attention)
            tasks.append(Global(attention))
        tasks += resnet_tasks(resnet)
    return tasks


def _block_tasks(block: nn.Module, resamplers, resampler_tasks, kind: str) -> list[Task]:
    """A down or up block: its resnets, then its resamplers (``resampler_tasks`` turns one into tasks)."""
    if getattr(block, "attentions", None):
        raise _unsupported(f"attention in {kind} block", block)
    tasks = [task for resnet in block.resnets for task in resnet_tasks(resnet)]
    for resampler in resamplers or []:
        tasks += resampler_tasks(resampler)
    return tasks


def _output_tasks(coder: nn.Module) -> list[Task]:
    """conv_norm_out, activation, conv_out: the end of the encoder and of the decoder."""
    return [_norm(coder.conv_norm_out), Act(coder.conv_act), _conv(coder.conv_out)]


def encoder_tasks(vae: nn.Module) -> list[Task]:
    """conv_in, down blocks, mid block, conv_norm_out, activation, conv_out, quant_conv: the moments of the latent
    distribution (mean and log-variance stacked on channels), as ``vae.encode`` computes them."""
    encoder = vae.encoder
    tasks: list[Task] = [_conv(encoder.conv_in)]
    for block in encoder.down_blocks:
        tasks += _block_tasks(block, block.downsamplers, downsampler_tasks, "a down")
    tasks += mid_block_tasks(encoder.mid_block)
    tasks += _output_tasks(encoder)
    if getattr(vae, "quant_conv", None) is not None:
        tasks.append(_conv(vae.quant_conv))
    return tasks


def decoder_tasks(vae: nn.Module, float32_output: bool = False) -> list[Task]:
    """post_quant_conv, conv_in, mid block, up blocks, conv_norm_out, activation, conv_out; with
    ``float32_output`` the last three in float32 (``Norm.float32_output``)."""
    decoder = vae.decoder
    tasks: list[Task] = []
    if getattr(vae, "post_quant_conv", None) is not None:
        tasks.append(_conv(vae.post_quant_conv))
    tasks.append(_conv(decoder.conv_in))
    tasks += mid_block_tasks(decoder.mid_block)
    for block in decoder.up_blocks:
        tasks += _block_tasks(block, block.upsamplers, upsampler_tasks, "an up")
    output = _output_tasks(decoder)
    if float32_output:
        output[0] = Norm(output[0].module, float32_output=True)
    return tasks + output


def is_barrier(task: Task) -> bool:
    return isinstance(task, (Norm, Global))


def split_segments(tasks: list[Task]) -> list[list[Task]]:
    """Cut before every barrier: each segment is a barrier (or the start) followed by local tasks."""
    segments: list[list[Task]] = [[]]
    for task in tasks:
        if is_barrier(task) and segments[-1]:
            segments.append([])
        segments[-1].append(task)
    return segments


def receptive_halo(tasks: list[Task]) -> Fraction:
    """Time frames per side, at the resolution of the first task's input, that the tasks' output depends on."""
    halo, scale = Fraction(0), Fraction(1)
    for task in tasks:
        if isinstance(task, (Conv, Downsample)):
            halo += task.halo / scale
        if isinstance(task, (Upsample, Downsample)):
            scale *= task.factor
    return halo


def time_scale(tasks: list[Task]) -> Fraction:
    """How many output frames each input frame becomes (2 per upsampler, 1/2 per downsampler)."""
    return math.prod((t.factor for t in tasks if isinstance(t, (Upsample, Downsample))), start=Fraction(1))


def alignment(tasks: list[Task]) -> int:
    """Input frames per output frame of the tasks' downsamplers: where a tile's extent may start, so that the
    stride-2 convolutions see the same frame pairs as on the whole sequence."""
    return math.prod(t.factor.denominator for t in tasks if isinstance(t, Downsample))


def halo_frames(tasks: list[Task]) -> int:
    """``receptive_halo`` rounded up to whole frames and to a multiple of the tasks' alignment."""
    return reaches(tasks)[0] if tasks else 0


def reaches(tasks: list[Task]) -> list[int]:
    """For each task, how many frames per side past the wanted core (at that task's input resolution) it and the
    tasks after it still read: ``receptive_halo(tasks[i:])`` rounded up to whole frames and to the alignment of the
    downsamplers among tasks[i:], for every i, in one backward pass."""
    out, reach, align = [0] * len(tasks), Fraction(0), 1
    for i in reversed(range(len(tasks))):
        task = tasks[i]
        if isinstance(task, (Upsample, Downsample)):
            reach /= task.factor
            align *= task.factor.denominator
        if isinstance(task, (Conv, Downsample)):
            reach += task.halo
        out[i] = math.ceil(reach / align) * align
    return out


class TaskExtent(ShrinkingExtent):
    """A ShrinkingExtent walked through a task list, by the fast executor and by its cost model alike: ``enter(i)``
    cuts it before task i to ``reaches(tasks)[i]`` (residual bookkeeping is left as it is) and returns the part kept,
    relative to the previous start; ``leave(i)`` follows task i's resampling. Without a core nothing is cut."""

    def __init__(self, tasks: list[Task], frames: int, core: tuple[int, int] | None = None):
        super().__init__(frames, core or (0, frames))
        self.tasks = tasks
        self.needed = reaches(tasks) if core is not None else None

    def enter(self, index: int) -> tuple[int, int]:
        if self.needed is None or isinstance(self.tasks[index], (SaveResidual, AddResidual)):
            return 0, self.stop - self.start
        return self.cut(self.needed[index])

    def leave(self, index: int) -> None:
        task = self.tasks[index]
        if isinstance(task, (Upsample, Downsample)):
            self.rescale(task.factor)


def conv_cost(tasks: list[Task], frames: int, core: tuple[int, int] | None = None) -> float:
    """Multiply-adds of the tasks' convolutions per input frequency row, on an extent of ``frames`` input frames,
    shrunk around ``core`` as the fast executor does (whole without it): what proxies and tiles are compared by."""
    extent = TaskExtent(tasks, frames, core)
    cost = Fraction(0)
    for index, task in enumerate(tasks):
        extent.enter(index)
        extent.leave(index)
        module = task.shortcut if isinstance(task, SaveResidual) else getattr(task, "module", None)
        if isinstance(task, (Conv, Downsample, SaveResidual)) and module is not None:
            # output frames x output frequency rows (which scale as time does) x weights per output value
            weights = module.in_channels * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            cost += weights * (extent.stop - extent.start) * extent.scale
    return float(cost)
