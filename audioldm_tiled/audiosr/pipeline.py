"""``AudioSRTiledPipeline``: any audio to 48 kHz with AudioSR, on the engine's tiled stages.

What the original's ``LatentDiffusion.generate_batch`` does, in order, and how it is run here:

1. the front end (``front_end``, run in passes by ``recording``): the input at 48 kHz, prepared, its cutoff, its
   low-passed copy and that copy's log-mel;
2. the low-passed log-mel encoded by the VAE, exactly in tiles along time (``vae.tiled_encode``), a sample of its
   posterior scaled by the latent scale: the frames the UNet is conditioned on (the negative: -11.4981 everywhere,
   scaled likewise);
3. DDIM with eta 1 and v-prediction, on windows of 10.24 s (``denoise``), each window reading its own frames of the
   conditioning;
4. the latent decoded exactly in tiles (``vae.iter_decode``), the mel bands below the low-passed log-mel's own
   cutoff band replaced by it;
5. the chunked vocoder (``vocoder.stream_vocode``);
6. the post-processing (``recording.post_processed``) over the whole output: the STFT bins below the low-passed
   input's cutoff replaced by the low-passed input's, divided by the ratio of the two's magnitudes at the cutoff
   bin (clamped to 0.8-1.2), then the peak scaled to 0.5 and the mean removed.

Up to one window (10.24 s) the result equals the original's given the same noise (``tests/test_audiosr.py``).
Longer, the denoising is windowed; everything else is the whole recording's: the decode and the vocoder exactly,
and the front end's and post-processing's figures summed over the whole recording in passes before they are used.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from ..conditioning import concatenated_frames
from ..config import TilingConfig
from ..constants import UPSAMPLE_STEPS
from ..denoise import denoise, plan_windows
from ..spool import BLOCK_ROWS, Frames, Spool, blocks
from ..vae import iter_decode, iter_encode
from ..vae.dispatch import check_exact_decode_fits
from ..vocoder import stream_vocode
from . import recording
from .components import HOP_LENGTH, LATENT_CHANNELS, N_MELS, SAMPLE_RATE, UNCONDITIONAL_LATENT
from .front_end import CLIP_SECONDS

LATENT_FRAME_SECONDS = 8 * HOP_LENGTH / SAMPLE_RATE  # 80 ms
DEFAULT_STEPS = UPSAMPLE_STEPS
DEFAULT_GUIDANCE = 3.5


@dataclass
class AudioSROutput:
    """``audios``: float32 (channels, samples) at 48 kHz, as long as the input."""

    audios: np.ndarray


class AudioSRTiledPipeline(DiffusionPipeline):
    """AudioSR's super-resolution to 48 kHz for audio of any length.

    Components: ``vae`` (``AutoencoderKL``, 256 mels, 16 latent channels), ``unet``
    (``AudioLDM2UNet2DConditionModel`` with 32 input channels), ``vocoder`` (``SpeechT5HifiGan`` at 48 kHz),
    ``scheduler`` (``DDIMScheduler``: cosine, v-prediction), and ``condition_vae`` where the checkpoint's conditioning
    encoder differs from the VAE's; see ``audiosr.components``. ``convert.convert_state_dict`` makes them from the
    original checkpoint.
    """

    model_cpu_offload_seq = "condition_vae->vae->unet->vocoder"
    # The original's conditioning VAE, where a checkpoint's encoder differs from the VAE's (``convert``).
    _optional_components = ["condition_vae"]

    def __init__(self, vae, unet, vocoder, scheduler, condition_vae=None):
        super().__init__()
        self.register_modules(vae=vae, unet=unet, vocoder=vocoder, scheduler=scheduler, condition_vae=condition_vae)

    @torch.no_grad()
    def __call__(self, audio: Any, sampling_rate: int | None = None, num_inference_steps: int = DEFAULT_STEPS,
                 guidance_scale: float = DEFAULT_GUIDANCE, eta: float = 1.0, seed: int = 0,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 tiling: TilingConfig | None = None, keep_level: bool = False, return_dict: bool = True):
        """Super-resolve ``audio`` to 48 kHz: ``upsampled``'s pieces joined into one array.

        Args:
            audio: a path soundfile reads, float samples (samples,) or (channels, samples) at ``sampling_rate``, or
                a ``spool.Signal`` of rows (samples, channels); each channel is super-resolved on its own.
            seed: picks the low-pass filter's type as the original does for a render seeded with it.
            generator: the noise: the conditioning latent's sample, the initial latents, then each step's.
            latents: the initial noise (channels, 16, frames, 32), instead of drawing it.
            keep_level: deliver at the input's level (the front end's gain undone) instead of the original's
                peak at 0.5; the mean is removed either way.
        """
        pieces = self.upsampled(audio, sampling_rate, num_inference_steps, guidance_scale, eta, seed, generator,
                                latents, tiling, keep_level)
        audios = np.concatenate(list(pieces), axis=1)
        return AudioSROutput(audios) if return_dict else (audios,)

    @torch.no_grad()
    def upsampled(self, audio: Any, sampling_rate: int | None = None, num_inference_steps: int = DEFAULT_STEPS,
                  guidance_scale: float = DEFAULT_GUIDANCE, eta: float = 1.0, seed: int = 0,
                  generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                  tiling: TilingConfig | None = None, keep_level: bool = False) -> Iterator[np.ndarray]:
        """``__call__``'s 48 kHz waveform as float32 pieces (channels, samples), in order. What is held for the whole
        recording between the stages is spooled to disk (``recording``), except what the model's stages hold whole
        (float32, per channel and hour of audio, 92 MB each): the conditioning latent while it is sampled (the
        encode reads its tiles of the low-passed log-mel from disk, and the denoising its windows of the condition)
        and, while they are denoised, the latents, the merged noise prediction (into which DDIM's step writes) and
        the step's noise."""
        source = _source(audio, sampling_rate)
        config = (tiling or TilingConfig()).with_windows_for(LATENT_FRAME_SECONDS)
        # An exact decode whose paused tiles have no room fails now, not after the front end and the denoising.
        clip = round(CLIP_SECONDS * SAMPLE_RATE)
        frames = -(-math.ceil(source.seconds * SAMPLE_RATE) // clip) * clip // (8 * HOP_LENGTH)
        check_exact_decode_fits(self.vae, torch.empty((source.channels, LATENT_CHANNELS, frames, N_MELS // 8),
                                                      dtype=self.vae.dtype, device=self._execution_device), config)
        prepared = recording.prepare(source.pieces(), source.rate, source.channels, source.seconds, seed,
                                     config.show_progress)
        try:
            with Spool((prepared.channels,), np.float32) as out:
                for wave in self._vocoded(prepared, num_inference_steps, guidance_scale, eta, generator, latents,
                                          config):
                    out.append(wave.T)
                self.maybe_free_model_hooks()
                yield from recording.post_processed(out, prepared, config.show_progress, keep_level)
        finally:
            prepared.close()

    def _vocoded(self, prepared: recording.Prepared, steps: int, guidance_scale: float, eta: float,
                 generator: torch.Generator | None, latents: torch.Tensor | None,
                 config: TilingConfig) -> Iterator[np.ndarray]:
        """The model's part: the low-passed log-mel encoded, denoised with it as the condition, decoded, its low
        bands replaced by the input's, and vocoded: float32 waveform pieces (channels, samples)."""
        device, dtype = self._execution_device, self.unet.dtype
        scale = self.vae.config.scaling_factor
        # on disk while it is read a window at a time: the denoising holds its latent-sized tensors beside it
        condition = Frames.spooled(self._condition(prepared, config, generator), dtype)
        shape = (prepared.channels, LATENT_CHANNELS, condition.shape[2], condition.shape[3])
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have the shape {shape} for this input, got {tuple(latents.shape)}")
        frames = (condition,)
        if guidance_scale != 1:  # as the original: guided unless the scale is exactly 1
            # the negative is one value everywhere: a view of it, not a second copy of the latent
            frames = (torch.tensor(UNCONDITIONAL_LATENT * scale, dtype=dtype, device=device).expand(shape), condition)

        self.scheduler.set_timesteps(steps, device=device)
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma
        plan = plan_windows(latents.shape[2], config)
        latents = denoise(self.unet, self.scheduler, latents, lambda: (concatenated_frames(frames), guidance_scale),
                          plan, {"eta": eta, "generator": generator}, config.window_batch_size or 1,
                          lambda total: self.progress_bar(total=total) if config.show_progress
                          else tqdm(total=total, disable=True))
        condition.close()  # not needed past the denoising
        frames = condition = None
        latents = latents.to(self.vae.dtype).div_(scale)  # the denoising's own tensor: no second copy
        mel = _replaced(iter_decode(self.vae, latents, config), prepared)
        vocoder = (piece.to(device, self.vocoder.dtype) for piece in mel)
        for wave in stream_vocode(self.vocoder, vocoder, latents.shape[2] * 8, config.replace(show_progress=False)):
            yield wave.float().cpu().numpy()

    def _condition(self, prepared: recording.Prepared, config: TilingConfig,
                   generator: torch.Generator | None) -> torch.Tensor:
        """The low-passed log-mel encoded, a sample of its posterior times the latent scale: the original's
        ``encode(mel).latent_dist.sample(generator) * scale``, computed as each tile of the encode comes, into the
        noise drawn once for the whole (so neither the posterior nor the noise is held twice, and nothing depends
        on where a tile falls)."""
        encoder = self.vae if self.condition_vae is None else self.condition_vae
        low_mel = Frames(prepared.low_mel, encoder.dtype, self._execution_device)  # tiles read from disk
        factor = 2 ** (len(encoder.config.block_out_channels) - 1)
        shape = (prepared.channels, encoder.config.latent_channels, low_mel.shape[2] // factor, N_MELS // factor)
        # what DiagonalGaussianDistribution.sample draws, in the parameters' dtype on their device
        sample = randn_tensor(shape, generator=generator, device=low_mel.device, dtype=encoder.dtype)
        start, scale = 0, self.vae.config.scaling_factor
        for piece in iter_encode(encoder, low_mel, config):
            posterior = DiagonalGaussianDistribution(piece)
            stop = start + piece.shape[2]
            sample[:, :, start:stop] = (posterior.mean + posterior.std * sample[:, :, start:stop]) * scale
            start = stop
        if start != shape[2]:
            raise RuntimeError(f"the encoder made {start} latent frames of {low_mel.shape[2]} mel frames, not "
                               f"{shape[2]}")
        return sample


def _replaced(pieces: Iterator[torch.Tensor], prepared: recording.Prepared) -> Iterator[torch.Tensor]:
    """The decoded log-mel pieces (channels, 1, t, 256) as (channels, t, 256) float32, each channel's bands below
    its ``mel_bands`` replaced by the input's own log-mel (the original's ``mel_replace_ops``)."""
    start = 0
    for piece in pieces:
        piece = piece[:, 0].float().cpu()
        stop = start + piece.shape[1]
        low = torch.from_numpy(prepared.low_mel.read(start, min(stop, prepared.low_mel.length))[:, :, 0])
        low = low.transpose(0, 1)
        for row, low_row, band in zip(piece, low, prepared.mel_bands):
            row[: low_row.shape[0], :band] = low_row[:, :band]
        start = stop
        yield piece


@dataclass
class _Source:
    """A recording to read in pieces (samples, channels) float32: a file, or an array already in memory."""

    rate: int
    channels: int
    frames: int
    path: Any = None
    array: np.ndarray | None = None
    signal: Any = None  # rows (samples, channels), as ``spool.Signal``

    @property
    def seconds(self) -> float:
        return self.frames / self.rate

    def pieces(self) -> Iterator[np.ndarray]:
        if self.signal is not None:
            for lo, hi in blocks(self.frames):
                yield self.signal.read(lo, hi)
            return
        if self.array is not None:
            for lo, hi in blocks(self.frames):
                yield self.array[:, lo:hi].T
            return
        import soundfile as sf

        yield from sf.blocks(self.path, blocksize=BLOCK_ROWS, dtype="float32", always_2d=True)


MIN_RATE = 1000  # Hz: below it, nothing a 48 kHz model could take for audio


def _source(audio: Any, sampling_rate: int | None) -> _Source:
    if isinstance(audio, (str, bytes)) or hasattr(audio, "__fspath__"):
        import soundfile as sf

        info = sf.info(audio)
        source = _Source(int(info.samplerate), int(info.channels), int(info.frames), path=audio)
    elif sampling_rate is None:
        raise ValueError("`sampling_rate` is needed with samples: the rate of `audio`")
    elif hasattr(audio, "read") and hasattr(audio, "length"):  # a spooled recording, (samples, channels)
        source = _Source(int(sampling_rate), int(audio.read(0, 0).shape[1]), int(audio.length), signal=audio)
    else:
        data = np.asarray(audio, dtype=np.float32)
        if data.ndim not in (1, 2) or data.shape[-1] == 0:
            raise ValueError(f"`audio` must be samples (samples,) or (channels, samples), got shape {data.shape}")
        data = data[None] if data.ndim == 1 else data
        source = _Source(int(sampling_rate), data.shape[0], data.shape[1], array=data)
    if source.rate < MIN_RATE:
        raise ValueError(f"`audio` at {source.rate} Hz: AudioSR takes recordings of {MIN_RATE} Hz or more")
    if source.frames == 0:
        raise ValueError("`audio` has no samples")
    return source
