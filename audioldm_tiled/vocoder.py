"""Chunked HiFi-GAN vocoder: overlapping chunks of mel frames, cropped and concatenated (overlap-save).

The vocoder is a stack of 1-D convolutions and transposed convolutions with no data-dependent normalisation, each
shift-equivariant at its stride: the output sample ``lo * hop + j`` of a chunk that starts at mel frame ``lo`` is
sample ``lo * hop + j`` of the one-pass output, as long as the chunk carries the receptive field as context. So
chunking is exact; only float rounding differs.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import TilingConfig
from .geometry import plan_tiles
from .memory import memory_budget

# Default chunk core in mel frames when the budget allows it: long enough that the context (about 2 x 24 frames)
# costs under 5 % extra compute, short enough that a chunk's activations stay in the CPU caches' neighbourhood.
DEFAULT_CHUNK_FRAMES = 1024
MIN_CHUNK_FRAMES = 64


def hop_length(vocoder: nn.Module) -> int:
    """Samples per mel frame, the product of the config's upsample rates."""
    return math.prod(vocoder.config.upsample_rates)


def _conv_reach(module: nn.Module) -> float:
    """Input samples per side that one output sample of a (transposed) convolution depends on."""
    k, d = module.kernel_size[0], module.dilation[0]
    if isinstance(module, nn.ConvTranspose1d):
        s, p = module.stride[0], module.padding[0]
        return math.ceil(max(p, d * (k - 1) - p) / s) + 1
    return d * (k - 1) / 2


def receptive_field_frames(vocoder: nn.Module) -> int:
    """Mel frames per side that one output sample depends on, computed from the modules.

    For SpeechT5HifiGan the parallel residual blocks after each upsampler count once (the widest); for other
    vocoders every convolution is summed in module order, an upper bound.
    """
    if all(hasattr(vocoder, name) for name in ("conv_pre", "upsampler", "resblocks", "conv_post")):
        per_stage = len(vocoder.resblocks) // len(vocoder.upsampler)
        reach, rate = _conv_reach(vocoder.conv_pre), 1
        for i, up in enumerate(vocoder.upsampler):
            reach += _conv_reach(up) / rate
            rate *= up.stride[0]
            blocks = vocoder.resblocks[i * per_stage : (i + 1) * per_stage]
            reach += max(sum(_conv_reach(c) for c in b.modules() if isinstance(c, nn.Conv1d)) for b in blocks) / rate
        reach += _conv_reach(vocoder.conv_post) / rate
        return math.ceil(reach)
    reach, rate = 0.0, 1
    for module in vocoder.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            reach += _conv_reach(module) / rate
            if isinstance(module, nn.ConvTranspose1d):
                rate *= module.stride[0]
    return math.ceil(reach)


def _widest_per_frame(vocoder: nn.Module, batch: int, dtype: torch.dtype) -> int:
    """Bytes per mel frame of the widest activation (channels x samples per frame)."""
    widest, rate = vocoder.config.upsample_initial_channel, 1
    channels = vocoder.config.upsample_initial_channel
    for r in vocoder.config.upsample_rates:
        rate, channels = rate * r, channels // 2
        widest = max(widest, channels * rate)
    return widest * batch * torch.empty((), dtype=dtype).element_size()


def choose_chunk_frames(vocoder: nn.Module, mel: torch.Tensor, config: TilingConfig) -> int:
    """Chunk core in mel frames: DEFAULT_CHUNK_FRAMES, smaller when the memory budget needs it."""
    if config.vocoder_chunk_frames is not None:
        return config.vocoder_chunk_frames
    budget = memory_budget(config, mel.device)
    # A HiFi-GAN stage holds its input, one residual block's output and the running sum: 4 widest activations.
    fit = budget // (4 * _widest_per_frame(vocoder, mel.shape[0], mel.dtype))
    return int(max(MIN_CHUNK_FRAMES, min(DEFAULT_CHUNK_FRAMES, fit)))


def stream_vocode(
    vocoder: nn.Module,
    mel_pieces: Iterable[torch.Tensor],
    total_frames: int,
    config: TilingConfig | None = None,
) -> Iterator[torch.Tensor]:
    """Waveform pieces (B, samples) in order, from mel pieces (B, t, n_mels) that arrive in order.

    ``total_frames`` is the sum of the pieces' lengths. Each chunk is vocoded once its right context has arrived,
    so at most one chunk plus its context of mel is held. The pieces concatenate to ``vocoder(mel)``.
    """
    config = config or TilingConfig()
    iterator = iter(mel_pieces)
    first = next(iterator)
    context = config.vocoder_context_frames
    context = receptive_field_frames(vocoder) if context is None else context
    chunk = choose_chunk_frames(vocoder, first, config)
    if config.enabled is False or total_frames <= chunk:
        chunks = plan_tiles(total_frames, total_frames)
    else:
        chunks = plan_tiles(total_frames, chunk, halo=context)
    hop = hop_length(vocoder)
    buffer, buffer_start, buffer_end = [first], 0, first.shape[1]
    with tqdm(total=len(chunks), desc="vocoder", disable=not config.show_progress or len(chunks) == 1,
              leave=False) as bar:
        for index, c in enumerate(chunks):
            while buffer_end < c.stop:
                piece = next(iterator)
                buffer.append(piece)
                buffer_end += piece.shape[1]
            held = torch.cat(buffer, dim=1) if len(buffer) > 1 else buffer[0]
            wave = vocoder(held[:, c.start - buffer_start : c.stop - buffer_start])
            if wave.dim() == 1:
                wave = wave[None]
            last = index == len(chunks) - 1
            # samples owned by this chunk; the last one also owns the tail the transposed convolutions add
            begin = (c.core_start - c.start) * hop
            end = wave.shape[-1] if last else (c.core_stop - c.start) * hop
            yield wave[:, begin:end]
            keep = chunks[index + 1].start if not last else c.stop
            buffer, buffer_start = [held[:, keep - buffer_start :]], keep
            bar.update()
    if buffer_end != total_frames:
        raise ValueError(f"stream_vocode: the mel pieces hold {buffer_end} frames, total_frames said {total_frames}")


@torch.no_grad()
def chunked_vocode(vocoder: nn.Module, mel: torch.Tensor, config: TilingConfig | None = None) -> torch.Tensor:
    """What ``vocoder(mel)`` returns, (B, samples) for mel (B, T, n_mels), computed over overlapping chunks.

    Works for SpeechT5HifiGan and other HiFi-GAN-style vocoders with ``config.upsample_rates``; equals a single
    pass to float rounding, including the exact length (160 T + 32 samples for AudioLDM's vocoder).
    """
    if not isinstance(mel, torch.Tensor) or mel.dim() != 3 or mel.shape[1] < 1:
        raise ValueError(f"mel must be a tensor (B, T, n_mels) with T >= 1, got {getattr(mel, 'shape', type(mel))}")
    pieces = list(stream_vocode(vocoder, [mel], mel.shape[1], config))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
