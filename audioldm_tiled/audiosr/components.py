"""AudioSR's models as diffusers and transformers classes, with the public checkpoints' shapes.

Read off the ``audiosr`` 0.0.7 package (``utils.get_basic_config``, ``utilities/model.get_vocoder_config_48k``),
which both ``haoheliu/audiosr_basic`` and ``haoheliu/audiosr_speech`` use:

- front end: 48 kHz, STFT of 2048 (Hann window 2048) at hop 480 (10 ms), 256 mel bands from 20 Hz to 24 kHz,
  natural log of the magnitude mel clamped at 1e-5;
- VAE (``AutoencoderKL``): one input channel, ch 128 with ch_mult 1, 2, 4, 8 (three halvings: 8x along time and
  mel), 2 res blocks, attention in the middle only, 16 latent channels; the latent is scaled by the checkpoint's
  ``scale_factor`` (``scale_by_std``);
- UNet (``AudioLDM2UNet2DConditionModel``): 32 input channels, the 16 noisy latent channels then the 16 of the
  low-passed input's latent, 16 out; model_channels 128 with channel_mult 1, 2, 3, 5, 2 res blocks, attention at
  the three coarser levels and in the middle, 32 channels per head, and per attention block two transformers that
  attend only to the latent itself (``extra_sa_layer`` and a transformer without context: diffusers' double
  self-attention for a ``None`` cross-attention width);
- scheduler: 1000 steps, cosine schedule (``squaredcos_cap_v2``), v-prediction, DDIM with the original's timesteps
  (``leading`` plus one) and eta 1;
- vocoder: HiFi-GAN v1 (``SpeechT5HifiGan``): 256 mels in, 1536 channels, upsampling 6, 5, 4, 2, 2 (480x) with
  kernels 12, 10, 8, 4, 4, residual kernels 3, 7, 11, 15 with dilations 1, 3, 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..constants import UPSAMPLED_RATE

SAMPLE_RATE = UPSAMPLED_RATE
N_FFT = 2048
HOP_LENGTH = 480
N_MELS = 256
MEL_FMIN, MEL_FMAX = 20.0, 24000.0
LATENT_CHANNELS = 16
# The low-passed input's latent that the model is given where it is told nothing (classifier-free guidance): the
# original's ``VAEFeatureExtract.unconditional_cond``, every value -11.4981.
UNCONDITIONAL_LATENT = -11.4981


def _unet(model_channels: int = 128, channel_mult: tuple[int, ...] = (1, 2, 3, 5), num_res_blocks: int = 2,
          head_channels: int = 32, norm_num_groups: int = 32) -> dict[str, Any]:
    channels = tuple(model_channels * m for m in channel_mult)
    levels = len(channels)
    return dict(
        sample_size=128,  # the training clip's latent frames (10.24 s); any length runs
        in_channels=2 * LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        block_out_channels=channels,
        layers_per_block=num_res_blocks,
        attention_head_dim=tuple(c // head_channels for c in channels),  # diffusers' name for the heads' number
        cross_attention_dim=((None, None),) * levels,
        norm_num_groups=norm_num_groups,
    )


def _vae(ch: int = 128, ch_mult: tuple[int, ...] = (1, 2, 4, 8), num_res_blocks: int = 2,
         norm_num_groups: int = 32, scaling_factor: float = 1.0) -> dict[str, Any]:
    levels = len(ch_mult)
    return dict(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(ch * m for m in ch_mult),
        layers_per_block=num_res_blocks,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=norm_num_groups,
        sample_size=N_MELS,
        scaling_factor=scaling_factor,
    )


_VOCODER = dict(
    model_in_dim=N_MELS,
    sampling_rate=SAMPLE_RATE,
    upsample_initial_channel=1536,
    upsample_rates=[6, 5, 4, 2, 2],
    upsample_kernel_sizes=[12, 10, 8, 4, 4],
    resblock_kernel_sizes=[3, 7, 11, 15],
    resblock_dilation_sizes=[[1, 3, 5]] * 4,
    normalize_before=False,
)

_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="v_prediction",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)


@dataclass(frozen=True)
class AudioSRArchitecture:
    """Constructor arguments of AudioSR's components."""

    unet: dict[str, Any] = field(default_factory=_unet)
    vae: dict[str, Any] = field(default_factory=_vae)
    vocoder: dict[str, Any] = field(default_factory=lambda: dict(_VOCODER))
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(_SCHEDULER))

    def with_scaling_factor(self, scaling_factor: float) -> AudioSRArchitecture:
        return replace(self, vae={**self.vae, "scaling_factor": float(scaling_factor)})


ARCHITECTURES = {
    "audiosr": AudioSRArchitecture(),
    # Seconds on CPU with AudioSR's geometry (256 mels, hop 480, 8x VAE, 16 latent channels, 480x vocoder) and its
    # layout (attention at the coarser levels, two self-attention transformers per block), narrow everywhere.
    # The original's GroupNorm has 32 groups wherever it normalises: 32 channels at the least.
    "audiosr-tiny": AudioSRArchitecture(
        unet=_unet(model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, head_channels=16),
        vae=_vae(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1),
        vocoder=dict(_VOCODER, upsample_initial_channel=32),
    ),
}


def build_components(arch: str | AudioSRArchitecture = "audiosr", seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """AudioSR's components (``unet``, ``vae``, ``vocoder``, ``scheduler``) of the named architecture, randomly
    initialised from ``seed`` without moving the caller's random stream."""
    from diffusers import AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    if isinstance(arch, str):
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
        arch = ARCHITECTURES[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = dict(unet=AudioLDM2UNet2DConditionModel(**arch.unet), vae=AutoencoderKL(**arch.vae),
                          vocoder=SpeechT5HifiGan(SpeechT5HifiGanConfig(**arch.vocoder)))
    for name, module in components.items():
        components[name] = (module if dtype == torch.float32 else module.to(dtype)).eval()
    with torch.device("cpu"):  # its schedule's tensors are data, also where the modules are built on "meta"
        components["scheduler"] = DDIMScheduler(**arch.scheduler)
    return components
