"""``AudioSRTiledPipeline``: any audio to 48 kHz with AudioSR, on the engine's tiled stages.

What the original's ``LatentDiffusion.generate_batch`` does, in order, and how it is run here:

1. the front end (``front_end``): the input at 48 kHz, prepared, its cutoff, its low-passed copy and that copy's
   log-mel, over the whole recording;
2. the low-passed log-mel encoded by the VAE, exactly in tiles along time (``vae.tiled_encode``), a sample of its
   posterior scaled by the latent scale: the frames the UNet is conditioned on (the negative: -11.4981 everywhere,
   scaled likewise);
3. DDIM with eta 1 and v-prediction, on windows of 10.24 s (``denoise``), each window reading its own frames of the
   conditioning;
4. the latent decoded exactly in tiles (``vae.tiled_decode``), the mel bands below the low-passed log-mel's own
   cutoff band replaced by it;
5. the chunked vocoder (``vocoder.chunked_vocode``);
6. the post-processing over the whole output: the STFT bins below the low-passed input's cutoff replaced by the
   low-passed input's, divided by the ratio of the two's magnitudes at the cutoff bin (clamped to 0.8-1.2), then
   the peak scaled to 0.5 and the mean removed.

Up to one window (10.24 s) the result equals the original's given the same noise (``tests/test_audiosr.py``).
Longer, the denoising is windowed and the decode and the vocoder exact; steps 1, 4 and 6 hold the whole recording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from ..conditioning import concatenated_frames
from ..config import TilingConfig
from ..denoise import denoise, plan_windows
from ..vae import tiled_decode, tiled_encode
from ..vocoder import chunked_vocode
from . import front_end
from .components import HOP_LENGTH, LATENT_CHANNELS, SAMPLE_RATE, UNCONDITIONAL_LATENT

LATENT_FRAME_SECONDS = 8 * HOP_LENGTH / SAMPLE_RATE  # 80 ms
DEFAULT_STEPS = 50  # the audiosr command line's --ddim_steps
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
                 tiling: TilingConfig | None = None, return_dict: bool = True):
        """Super-resolve ``audio`` to 48 kHz.

        Args:
            audio: a path soundfile reads, or float samples (samples,) or (channels, samples) at ``sampling_rate``;
                each channel is super-resolved on its own.
            seed: picks the low-pass filter's type as the original does for a render seeded with it.
            generator: the noise: the conditioning latent's sample, the initial latents, then each step's.
            latents: the initial noise (channels, 16, frames, 32), instead of drawing it.
        """
        waveform, rate = _read(audio, sampling_rate)
        waveform = _at_48_khz(waveform, rate)
        length = waveform.shape[1]
        config = (tiling or TilingConfig()).with_windows_for(LATENT_FRAME_SECONDS)
        device, dtype = self._execution_device, self.unet.dtype
        prepared = np.stack([front_end.prepared(channel) for channel in waveform])
        magnitude, _ = front_end.magnitude_and_log_mel(torch.from_numpy(prepared))
        kind = front_end.filter_type(seed)
        low = np.stack([front_end.low_passed(channel, front_end.cutoff_hz(m), kind)
                        for channel, m in zip(prepared, magnitude)]).astype(np.float32)
        _, low_mel = front_end.magnitude_and_log_mel(torch.from_numpy(low))

        scale = self.vae.config.scaling_factor
        encoder = self.vae if self.condition_vae is None else self.condition_vae
        posterior = tiled_encode(encoder, low_mel[:, None].to(device, encoder.dtype), config)
        condition = posterior.sample(generator) * scale
        shape = (prepared.shape[0], LATENT_CHANNELS, condition.shape[2], condition.shape[3])
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have the shape {shape} for this input, got {tuple(latents.shape)}")
        frames = condition.to(dtype)[None]
        if guidance_scale != 1:  # as the original: guided unless the scale is exactly 1
            frames = torch.cat([torch.full_like(frames, UNCONDITIONAL_LATENT * scale), frames])

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma
        plan = plan_windows(latents.shape[2], config)
        latents = denoise(self.unet, self.scheduler, latents, lambda: (concatenated_frames(frames), guidance_scale),
                          plan, {"eta": eta, "generator": generator}, config.window_batch_size or 1,
                          lambda total: self.progress_bar(total=total))

        mel = tiled_decode(self.vae, latents.to(self.vae.dtype) / scale, config)[:, 0].float().cpu()
        for row, low_row in zip(mel, low_mel):
            band = front_end.cutoff_bin(torch.exp(low_row))
            row[:, :band] = low_row[: row.shape[0], :band]
        wave = chunked_vocode(self.vocoder, mel.to(device, self.vocoder.dtype), config).float().cpu().numpy()
        audios = np.stack([_replace_low_band(w, low_row) for w, low_row in zip(wave, low)])
        audios = 0.5 * audios / np.max(np.abs(audios), axis=-1, keepdims=True)
        audios = (audios - np.mean(audios, axis=-1, keepdims=True))[:, :length].astype(np.float32)
        self.maybe_free_model_hooks()
        return AudioSROutput(audios) if return_dict else (audios,)


def _replace_low_band(out: np.ndarray, low: np.ndarray) -> np.ndarray:
    """The original's ``postprocessing``: the output's STFT bins below the low-passed input's cutoff bin replaced by
    the input's, divided by the ratio of their magnitudes summed over the cutoff bin (clamped to 0.8-1.2)."""
    import librosa

    spectrum_low, spectrum_out = librosa.stft(low), librosa.stft(out)
    cutoff = front_end.cutoff_bin(torch.from_numpy(np.abs(spectrum_low).T))
    ratio = np.sum(np.abs(spectrum_low[cutoff])) / np.sum(np.abs(spectrum_out[cutoff]))
    spectrum_out[:cutoff] = spectrum_low[:cutoff] / min(max(ratio, 0.8), 1.2)
    return librosa.istft(spectrum_out, length=out.shape[0])


def _read(audio: Any, sampling_rate: int | None) -> tuple[np.ndarray, int]:
    """(channels, samples) float32 and the rate, from a path or an array."""
    if isinstance(audio, (str, bytes)) or hasattr(audio, "__fspath__"):
        import soundfile as sf

        data, rate = sf.read(audio, dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T), rate
    if sampling_rate is None:
        raise ValueError("`sampling_rate` is needed with samples: the rate of `audio`")
    data = np.asarray(audio, dtype=np.float32)
    return (data[None] if data.ndim == 1 else data), int(sampling_rate)


def _at_48_khz(waveform: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return waveform
    import soxr

    return np.ascontiguousarray(soxr.resample(waveform.T, rate, SAMPLE_RATE, quality="VHQ").T.astype(np.float32))
