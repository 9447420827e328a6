"""Chunked HiFi-GAN vocoder: overlapping chunks of mel frames, cropped and concatenated (overlap-save).

The vocoder is a stack of 1-D convolutions and transposed convolutions with no data-dependent normalisation, each
shift-equivariant at its stride: the output sample ``lo * hop + j`` of a chunk that starts at mel frame ``lo`` is
sample ``lo * hop + j`` of the one-pass output, as long as the chunk carries the receptive field as context. So
chunking is exact; only float rounding differs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import TilingConfig
from .geometry import Tile, join_frames, plan_tiles, take_frames
from .memory import large_allocations_returned, memory_budget
from .offload import fire_hook, weights_on_device

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


def _is_hifigan(vocoder: nn.Module) -> bool:
    """The SpeechT5HifiGan layout: conv_pre, upsamplers each followed by parallel residual blocks, conv_post."""
    return all(hasattr(vocoder, name) for name in ("conv_pre", "upsampler", "resblocks", "conv_post", "num_kernels"))


def receptive_field_frames(vocoder: nn.Module) -> int:
    """Mel frames per side that one output sample depends on, computed from the modules.

    For SpeechT5HifiGan the parallel residual blocks after each upsampler count once (the widest); for other
    vocoders every convolution is summed in module order, an upper bound.
    """
    if _is_hifigan(vocoder):
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


def _conv_channels_last(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Conv1d / ConvTranspose1d applied to x held as (B, C, 1, L) in channels-last memory."""
    with weights_on_device(module):
        weight = module.weight[:, :, None, :].to(x.dtype)
        bias = None if module.bias is None else module.bias.to(x.dtype)
    if isinstance(module, nn.ConvTranspose1d):
        return F.conv_transpose2d(x, weight, bias, (1, module.stride[0]), (0, module.padding[0]),
                                  (0, module.output_padding[0]), module.groups, (1, module.dilation[0]))
    return F.conv2d(x, weight, bias, (1, module.stride[0]), (0, module.padding[0]), (1, module.dilation[0]),
                    module.groups)


def hifigan_channels_last(vocoder: nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """``SpeechT5HifiGan.forward`` with its activations in channels-last layout, (B, T, n_mels) -> (B, samples).

    Why: oneDNN's 1-D convolutions in the default (B, C, L) layout run the late stages (32-128 channels over 40-160
    samples per frame) at a fraction of the arithmetic rate of the 512-channel ones; in channels-last they run 3-6x
    faster, and the whole vocoder about 1.25x (``audioldm-tiled bench vocode``). Same modules, same weights, same
    order of operations; only the summation order inside each convolution differs (float rounding). Runs in mel's
    dtype, widening half-precision weights where mel is float32.
    """
    config = vocoder.config
    if config.normalize_before:
        mel = (mel - vocoder.mean.to(mel.dtype)) / vocoder.scale.to(mel.dtype)
    x = mel.transpose(1, 2)[:, :, None, :].contiguous(memory_format=torch.channels_last)
    x = _conv_channels_last(vocoder.conv_pre, x)
    k = vocoder.num_kernels
    for i, upsampler in enumerate(vocoder.upsampler):
        x = _conv_channels_last(upsampler, F.leaky_relu(x, config.leaky_relu_slope))
        total = None
        for block in vocoder.resblocks[i * k : (i + 1) * k]:
            h = x
            for conv1, conv2 in zip(block.convs1, block.convs2):
                inner = _conv_channels_last(conv1, F.leaky_relu(h, block.leaky_relu_slope))
                h = _conv_channels_last(conv2, F.leaky_relu(inner, block.leaky_relu_slope)) + h
            total = h if total is None else total + h
        x = total / k
    # the final activation uses leaky_relu's default slope (0.01), as SpeechT5HifiGan.forward does
    x = torch.tanh(_conv_channels_last(vocoder.conv_post, F.leaky_relu(x)))
    return x[:, 0, 0, :]


# Measured on a trained 16 kHz HiFi-GAN with `python docs/experiments/half_precision.py --trained-vocoder FILE.ts
# --audio ... --fp16` (28 s of speech and sounds; docs/long-audio.md), SNR against float32: in bfloat16 its own
# arithmetic costs 1.2 dB (23.0 dB against 24.2 dB with its weights widened to float32 as they are used), in
# float16 0.3 dB (42.7 against 43.0). "auto" therefore runs a bfloat16 vocoder in float32 and a float16 one as it
# is. Most of bfloat16's loss is its rounding of the mel itself (24.5 dB alone): see decode_precision.
FLOAT32_FOR = (torch.bfloat16,)


def _runs_in_float32(vocoder: nn.Module, config: TilingConfig) -> bool:
    precision = config.vocoder_precision
    return precision == "float32" or (precision == "auto" and vocoder.dtype in FLOAT32_FOR)


def _vocode_function(vocoder: nn.Module, device: torch.device, config: TilingConfig):
    """The fastest exact way to run this vocoder here: channels-last on CPU for the HiFi-GAN layout; in float32
    from half-precision weights when ``config.vocoder_precision`` says so.

    With tiling off and the model's precision it is the module's own forward, so a disabled config reproduces the
    parent pipeline bit for bit.
    """
    if _runs_in_float32(vocoder, config) and vocoder.dtype != torch.float32:
        if not _is_hifigan(vocoder):
            if config.vocoder_precision == "auto":
                return lambda mel: vocoder(mel.to(vocoder.dtype))
            raise ValueError(f"TilingConfig.vocoder_precision='float32' needs the HiFi-GAN layout; "
                             f"{type(vocoder).__name__} runs in its own dtype (vocoder_precision='model')")
        return lambda mel: hifigan_channels_last(vocoder, mel.float())  # each weight widened as it is used
    if config.enabled is not False and device.type == "cpu" and _is_hifigan(vocoder):
        return lambda mel: hifigan_channels_last(vocoder, mel.to(vocoder.dtype))
    return lambda mel: vocoder(mel.to(vocoder.dtype))  # a float32 mel (decode_precision) into a half vocoder


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


def plan_chunks(vocoder: nn.Module, mel: torch.Tensor, total_frames: int, config: TilingConfig) -> list[Tile]:
    """The chunks (mel frames) for ``total_frames`` frames like ``mel`` (B, t, n_mels): one when disabled or short."""
    context = config.vocoder_context_frames
    context = receptive_field_frames(vocoder) if context is None else context
    chunk = choose_chunk_frames(vocoder, mel, config)
    if config.enabled is False or total_frames <= chunk:
        return plan_tiles(total_frames, total_frames)
    return plan_tiles(total_frames, chunk, halo=context)


def _chunk_wave(vocoder: nn.Module, vocode, mel: torch.Tensor, chunk: Tile, last: bool, hop: int) -> torch.Tensor:
    """The samples ``chunk`` owns, vocoded from its frames ``mel``; the last chunk also owns the tail the transposed
    convolutions add."""
    fire_hook(vocoder)  # the VAE may have run since the last chunk, and its hook offloaded the vocoder
    wave = vocode(mel)
    if wave.dim() == 1:
        wave = wave[None]
    end = wave.shape[-1] if last else (chunk.core_stop - chunk.start) * hop
    return wave[:, (chunk.core_start - chunk.start) * hop : end]


@torch.no_grad()
def vocode_chunks(vocoder: nn.Module, mel: torch.Tensor, mel_start: int, chunks: list[Tile], owns_tail: bool,
                  config: TilingConfig) -> Iterator[torch.Tensor]:
    """The waveform of ``chunks`` (part of a ``plan_chunks`` plan), a piece per chunk, from ``mel`` (B, t, n_mels)
    holding the frames from ``mel_start`` on that they read; ``owns_tail``: the last of them ends the plan."""
    hop = hop_length(vocoder)
    vocode = _vocode_function(vocoder, mel.device, config)
    with large_allocations_returned():
        for index, c in enumerate(chunks):
            last = owns_tail and index == len(chunks) - 1
            yield _chunk_wave(vocoder, vocode, mel[:, c.start - mel_start : c.stop - mel_start], c, last, hop)


@torch.no_grad()
def vocode_chunk(vocoder: nn.Module, mel: torch.Tensor, chunk: Tile, config: TilingConfig) -> torch.Tensor:
    """The samples (B, hop * chunk.core_length) that ``chunk`` owns, from ``mel`` (B, chunk.length, n_mels): the
    mel frames it reads. For a sequence that goes on: the tail the transposed convolutions add is not its own."""
    with large_allocations_returned():
        return _chunk_wave(vocoder, _vocode_function(vocoder, mel.device, config), mel, chunk, False,
                           hop_length(vocoder))


@torch.no_grad()
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
    chunks = plan_chunks(vocoder, first, total_frames, config)
    hop = hop_length(vocoder)
    vocode = _vocode_function(vocoder, first.device, config)
    buffer, buffer_start, buffer_end = [first], 0, first.shape[1]
    # one chunk too: the vocoder's own buffers fragment glibc's heap otherwise
    with large_allocations_returned(), tqdm(total=len(chunks), desc="vocoder", leave=False,
                                            disable=not config.show_progress or len(chunks) == 1) as bar:
        for index, c in enumerate(chunks):
            while buffer_end < c.stop:
                piece = next(iterator)
                buffer.append(piece)
                buffer_end += piece.shape[1]
            held = torch.cat(buffer, dim=1) if len(buffer) > 1 else buffer[0]
            last = index == len(chunks) - 1
            yield _chunk_wave(vocoder, vocode, held[:, c.start - buffer_start : c.stop - buffer_start], c, last, hop)
            keep = chunks[index + 1].start if not last else c.stop
            buffer, buffer_start = [held[:, keep - buffer_start :]], keep
            bar.update()
    if buffer_end != total_frames:
        raise ValueError(f"stream_vocode: the mel pieces hold {buffer_end} frames, total_frames said {total_frames}")


@torch.no_grad()
def vocode_loop(vocoder: nn.Module, mel_pieces: Iterable[torch.Tensor],
                config: TilingConfig | None = None) -> Iterator[torch.Tensor]:
    """The waveform of a seamless loop in pieces, (B, T * hop) in all, from mel pieces (B, t, n_mels) of T frames
    in all whose frame T is frame 0 again.

    The mel is extended by the receptive field across the wrap on each side (``geometry.take_frames``) and
    vocoded as usual; the samples of the one period are kept. So the last sample runs on into the first exactly
    as any sample into the next: played in a loop, the waveform is what the vocoder makes of the repeated mel. The
    whole mel is held for the wrap (64 bands: 92 MB per hour in float32).
    """
    config = config or TilingConfig()
    mel = torch.cat(list(mel_pieces), dim=1)
    context = config.vocoder_context_frames
    context = receptive_field_frames(vocoder) if context is None else context
    frames, hop = mel.shape[1], hop_length(vocoder)
    extended = take_frames(mel, -context, frames + context, dim=1)
    skip, left = context * hop, frames * hop
    for wave in stream_vocode(vocoder, [extended], extended.shape[1], config):
        cut = wave[:, min(skip, wave.shape[1]) :][:, :left]
        skip, left = max(0, skip - wave.shape[1]), left - cut.shape[1]
        if cut.shape[1]:
            yield cut


@torch.no_grad()
def chunked_vocode(vocoder: nn.Module, mel: torch.Tensor, config: TilingConfig | None = None) -> torch.Tensor:
    """What ``vocoder(mel)`` returns, (B, samples) for mel (B, T, n_mels), computed over overlapping chunks.

    Works for SpeechT5HifiGan and other HiFi-GAN-style vocoders with ``config.upsample_rates``; equals a single
    pass to float rounding, including the exact length (160 T + 32 samples for AudioLDM's vocoder).
    """
    if not isinstance(mel, torch.Tensor) or mel.dim() != 3 or mel.shape[1] < 1:
        raise ValueError(f"mel must be a tensor (B, T, n_mels) with T >= 1, got {getattr(mel, 'shape', type(mel))}")
    pieces = list(stream_vocode(vocoder, [mel], mel.shape[1], config))
    return join_frames(pieces, -1)
