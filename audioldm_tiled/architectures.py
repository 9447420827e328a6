"""Component configs of the public AudioLDM and MusicLDM checkpoints (and tiny ones for tests), built offline with
random weights.

Compute, memory and tiling exactness depend only on shapes, so benchmarks and tests run on these instead of
downloaded weights. ``"audioldm-s"`` matches ``cvssp/audioldm-s-full-v2`` shape for shape.

``"musicldm"`` (``ucsd-reach/musicldm``): the UNet and VAE from MusicLDM's own training config
(RetroCirce/MusicLDM, ``interface/musicldm.yaml``: UNet model_channels 128, channel_mult 1, 2, 3, 5, 2 res blocks,
32 head channels, a 512-d FiLM condition concatenated; VAE ch 128, ch_mult 1, 2, 4, 2 res blocks, 8 latent
channels, 64 mels), which are audioldm-s's shapes; the text tower is CLAP's RoBERTa as in AudioLDM. Its audio tower
is transformers' ``ClapAudioConfig`` default (HTSAT, as ``laion/clap-htsat-unfused``): the checkpoint's own audio
tower, which only ``score_waveforms`` runs, was not checked against the hub here, and neither was its VAE
``scaling_factor`` (which does not change any shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    ClapTextModelWithProjection,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

from .constants import HOP_LENGTH, N_MELS, SAMPLE_RATE


@dataclass(frozen=True)
class Architecture:
    """Constructor arguments of each component of one AudioLDM variant."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    vocoder: dict[str, Any]
    text_encoder: dict[str, Any]
    tokenizer_max_length: int = 512
    family: str = "audioldm"  # which pipeline: "audioldm" or "musicldm" (CLAP with its audio tower)
    clap_audio: dict[str, Any] = field(default_factory=dict)  # musicldm: ClapAudioConfig arguments
    scheduler: dict[str, Any] = field(
        default_factory=lambda: dict(
            beta_start=0.0015,
            beta_end=0.0195,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            steps_offset=1,
            set_alpha_to_one=False,
            clip_sample=False,
        )
    )


def _unet(block_out_channels: tuple[int, ...], layers_per_block: int = 2, norm_num_groups: int = 32,
          attention_head_dim: int = 8, class_dim: int = 512, sample_size: int = 128) -> dict[str, Any]:
    levels = len(block_out_channels)
    return dict(
        sample_size=sample_size,
        in_channels=8,
        out_channels=8,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        attention_head_dim=attention_head_dim,
        cross_attention_dim=block_out_channels,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=class_dim,
        class_embeddings_concat=True,
        norm_num_groups=norm_num_groups,
    )


def _vae(block_out_channels: tuple[int, ...], layers_per_block: int = 2, norm_num_groups: int = 32) -> dict[str, Any]:
    levels = len(block_out_channels)
    return dict(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        latent_channels=8,
        norm_num_groups=norm_num_groups,
        sample_size=512,
        scaling_factor=0.9392935633659363,
    )


_VOCODER_AUDIOLDM = dict(
    model_in_dim=N_MELS,
    sampling_rate=SAMPLE_RATE,
    upsample_initial_channel=1024,
    upsample_rates=[5, 4, 2, 2, 2],
    upsample_kernel_sizes=[16, 16, 8, 4, 4],
    resblock_kernel_sizes=[3, 7, 11],
    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    normalize_before=False,
)

_CLAP_TEXT = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
    type_vocab_size=1,
    projection_dim=512,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)

ARCHITECTURES: dict[str, Architecture] = {
    # Seconds on CPU, with the real time geometry (hop 160, VAE factor 4, 64 mels) and several GroupNorm groups.
    "tiny": Architecture(
        unet=_unet((32, 64), layers_per_block=1, norm_num_groups=8, attention_head_dim=8, class_dim=32),
        vae=_vae((16, 32, 32), layers_per_block=1, norm_num_groups=4),
        vocoder=dict(_VOCODER_AUDIOLDM, upsample_initial_channel=32, resblock_kernel_sizes=[3, 7],
                     resblock_dilation_sizes=[[1, 3], [1, 3]]),
        text_encoder=dict(_CLAP_TEXT, vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=37, projection_dim=32, max_position_embeddings=80),
        tokenizer_max_length=77,
    ),
    "audioldm-s": Architecture(unet=_unet((128, 256, 384, 640)), vae=_vae((128, 256, 512)),
                               vocoder=_VOCODER_AUDIOLDM, text_encoder=_CLAP_TEXT),
    "audioldm-m": Architecture(unet=_unet((192, 384, 576, 960)), vae=_vae((128, 256, 512)),
                               vocoder=_VOCODER_AUDIOLDM, text_encoder=_CLAP_TEXT),
    "audioldm-l": Architecture(unet=_unet((256, 512, 768, 1280)), vae=_vae((128, 256, 512)),
                               vocoder=_VOCODER_AUDIOLDM, text_encoder=_CLAP_TEXT),
}
# Seconds on CPU: tiny's shapes with a CLAP audio tower of four one-layer stages.
_TINY_CLAP_AUDIO = dict(depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=8,
                        hidden_size=64, projection_hidden_size=64, window_size=8)
ARCHITECTURES["musicldm"] = Architecture(unet=_unet((128, 256, 384, 640)), vae=_vae((128, 256, 512)),
                                         vocoder=_VOCODER_AUDIOLDM, text_encoder=_CLAP_TEXT, family="musicldm")
ARCHITECTURES["musicldm-tiny"] = Architecture(
    unet=ARCHITECTURES["tiny"].unet, vae=ARCHITECTURES["tiny"].vae, vocoder=ARCHITECTURES["tiny"].vocoder,
    text_encoder=ARCHITECTURES["tiny"].text_encoder, tokenizer_max_length=77, family="musicldm",
    clap_audio=_TINY_CLAP_AUDIO)
assert all(
    a.vocoder["model_in_dim"] == N_MELS and torch.tensor(a.vocoder["upsample_rates"]).prod() == HOP_LENGTH
    for a in ARCHITECTURES.values()
)


def _architecture(arch: str) -> Architecture:
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    return ARCHITECTURES[arch]


def offline_tokenizer(model_max_length: int = 512) -> RobertaTokenizer:
    """A byte-level RoBERTa tokenizer built without any download: one token per byte, no merges.

    Its ids are a subset of the real vocabulary's range, so it drives a text encoder of the real shape; with
    random weights the exact token ids do not matter, only that any text tokenizes and padding works.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for char in bytes_to_unicode().values():
        vocab[char] = len(vocab)
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def build_components(arch: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Randomly initialised components of the named architecture, as keyword arguments for the pipeline."""
    spec = _architecture(arch)
    # diffusers and transformers initialise weights from the global generator: seed it inside a fork of its state,
    # so that building components leaves the caller's random stream where it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = dict(
            unet=UNet2DConditionModel(**spec.unet),
            vae=AutoencoderKL(**spec.vae),
            vocoder=SpeechT5HifiGan(SpeechT5HifiGanConfig(**spec.vocoder)),
            text_encoder=_text_encoder(spec),
            tokenizer=offline_tokenizer(spec.tokenizer_max_length),
            scheduler=DDIMScheduler(**spec.scheduler),
        )
    if spec.family == "musicldm":
        # rand_trunc: the windows score_waveforms hands it are 10 s, so nothing is cut
        components["feature_extractor"] = ClapFeatureExtractor(truncation="rand_trunc")
    for name in ("unet", "vae", "vocoder", "text_encoder"):
        module = components[name] if dtype == torch.float32 else components[name].to(dtype)
        components[name] = module.eval()
    return components


def _text_encoder(spec: Architecture) -> torch.nn.Module:
    if spec.family == "musicldm":
        text = ClapTextConfig(**spec.text_encoder)
        audio = ClapAudioConfig(**{"projection_dim": text.projection_dim, **spec.clap_audio})
        return ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(),
                                    projection_dim=text.projection_dim))
    return ClapTextModelWithProjection(ClapTextConfig(**spec.text_encoder))


def random_pipeline(arch: str = "tiny", seed: int = 0, torch_dtype: torch.dtype = torch.float32):
    """A tiled pipeline with random weights of the named architecture, without network: ``AudioLDMTiledPipeline``
    for ``"tiny"``, ``"audioldm-s"``, ``"audioldm-m"``, ``"audioldm-l"``; ``MusicLDMTiledPipeline`` for
    ``"musicldm"`` and ``"musicldm-tiny"``."""
    return pipeline_class(_architecture(arch).family)(**build_components(arch, seed, torch_dtype))


def pipeline_class(family: str) -> type:
    """The tiled pipeline class of a model family."""
    if family == "musicldm":
        from .musicldm import MusicLDMTiledPipeline

        return MusicLDMTiledPipeline
    from .pipeline import AudioLDMTiledPipeline

    return AudioLDMTiledPipeline
