"""What every family owes its diffusers parent, checked the same way for AudioLDM, MusicLDM and AudioLDM 2: the
parent's call signature and defaults, the parent's audio with tiling and windowing off, and a negative prompt
embedded as the parent embeds it."""

import inspect

import diffusers
import numpy as np
import pytest
import torch
import transformers
from diffusers import AudioLDM2Pipeline, AudioLDMPipeline, MusicLDMPipeline

from audioldm_tiled import AudioLDM2TiledPipeline, AudioLDMTiledPipeline, MusicLDMTiledPipeline, TilingConfig
from audioldm_tiled.testing.architectures import build_components

OFF = TilingConfig(enabled=False, windowed=False)
# family: (tiled class, parent class, random architecture)
FAMILIES = {
    "audioldm": (AudioLDMTiledPipeline, AudioLDMPipeline, "tiny"),
    "musicldm": (MusicLDMTiledPipeline, MusicLDMPipeline, "musicldm-tiny"),
    "audioldm2": (AudioLDM2TiledPipeline, AudioLDM2Pipeline, "audioldm2-tiny"),
}
# What the engine adds after the parent's parameters, in every family.
ENGINE_PARAMETERS = ["tiling", "callback_on_step_end", "callback_on_step_end_tensor_inputs", "audio", "strength",
                     "loop", "extend_s", "regenerate", "context_s", "crossfade_s", "ranks"]


@pytest.mark.parametrize("family", FAMILIES)
def test_call_names_the_parents_parameters_with_their_defaults_then_the_engines(family):
    tiled, parent, _ = FAMILIES[family]
    theirs = inspect.signature(parent.__call__).parameters
    ours = inspect.signature(tiled.__call__).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, parameter in theirs.items():
        assert ours[name].default == parameter.default, name
    assert list(ours)[len(theirs):] == ENGINE_PARAMETERS
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ours.values())


def transformers4_kwargs_update(outputs, model_kwargs):
    """What AudioLDM 2's GPT-2 loop calls after each token: transformers 4's
    ``GenerationMixin._update_model_kwargs_for_generation`` (keep the cache, attend to the new position), which
    transformers 5's ``GPT2Model`` no longer has."""
    model_kwargs["past_key_values"] = getattr(outputs, "past_key_values", None) or outputs.cache
    mask = model_kwargs.get("attention_mask")
    if mask is not None:
        model_kwargs["attention_mask"] = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
    return model_kwargs


def runnable_parent(family, components, monkeypatch):
    """The parent pipeline on the same components, with what it needs to run under transformers 5."""
    _, parent, _ = FAMILIES[family]
    if family == "audioldm2":
        monkeypatch.setattr(components["language_model"], "_update_model_kwargs_for_generation",
                            transformers4_kwargs_update, raising=False)
    if family == "musicldm":  # transformers 5's ClapModel.get_text_features returns an output object (4's, the
        text_features = type(components["text_encoder"]).get_text_features  # tensor); the parent wants the tensor
        monkeypatch.setattr(type(components["text_encoder"]), "get_text_features",
                            lambda self, *a, **k: getattr(out := text_features(self, *a, **k), "pooler_output", out))
    pipe = parent(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kwargs", [{}, {"negative_prompt": "static hiss " * 40, "num_waveforms_per_prompt": 2}],
                         ids=["plain", "long negative prompt, 2 waveforms"])
def test_equals_the_parent_with_tiling_and_windowing_off(family, kwargs, monkeypatch):
    tiled, _, arch = FAMILIES[family]
    components = build_components(arch, seed=0)
    pipe = tiled(**components)
    pipe.set_progress_bar_config(disable=True)

    def run(p, **extra):
        return p("rain on a tin roof", audio_length_in_s=2.0, num_inference_steps=3,
                 generator=torch.Generator().manual_seed(0), **kwargs, **extra).audios

    ours = run(pipe, tiling=OFF)
    parent = runnable_parent(family, components, monkeypatch)
    try:
        theirs = run(parent)
    except AttributeError as error:  # diffusers 0.30's AudioLDM 2 with transformers 4.40: the pair cannot run
        if "_get_initial_cache_position" not in str(error):
            raise
        pytest.skip(f"diffusers {diffusers.__version__}'s {type(parent).__name__} cannot run with "
                    f"transformers {transformers.__version__}: {error}")
    assert np.array_equal(ours, theirs)


def test_the_loader_reads_the_registry_and_leaves_the_random_weights_alone(tmp_path):
    """A saved folder loads as its family's tiled class without importing the random-weight builder."""
    import subprocess
    import sys

    from audioldm_tiled.families import REGISTRY

    assert {f.class_name for f in REGISTRY.values()} == {c.__name__ for c, _, _ in FAMILIES.values()}
    AudioLDMTiledPipeline(**build_components("tiny")).save_pretrained(tmp_path)
    code = ("import sys; from audioldm_tiled.loading import load_pipeline; pipe = load_pipeline(sys.argv[1]); "
            "print(type(pipe).__name__, 'audioldm_tiled.testing.architectures' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["AudioLDMTiledPipeline", "False"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_implements_the_interface(family):
    from audioldm_tiled.families.base import ModelFamily

    tiled, _, _ = FAMILIES[family]
    for hook in ("check_prompt_inputs", "encode_conditioning", "unet_conditioning", "check_timeline"):
        assert getattr(tiled, hook) is not getattr(ModelFamily, hook), hook


def other_geometry(arch: str) -> dict:
    """The family's tiny components with diffusers' dummy VAE and vocoder shapes: a VAE factor of 2 and a vocoder
    hop of 4 samples, so a latent frame lasts 0.5 ms instead of AudioLDM's 40 ms."""
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    components = build_components(arch, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        components["vae"] = AutoencoderKL(block_out_channels=[32, 64], in_channels=1, out_channels=1,
                                          down_block_types=["DownEncoderBlock2D"] * 2,
                                          up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=8).eval()
        components["vocoder"] = SpeechT5HifiGan(SpeechT5HifiGanConfig(
            model_in_dim=64, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
            upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5]] * 2,
            normalize_before=False)).eval()
    return components


@pytest.mark.parametrize("family", FAMILIES)
def test_audio_length_in_s_follows_the_models_geometry(family):
    """diffusers' own ``test_*_audio_length_in_s`` with its dummy geometry: 0.016 s and 0.032 s are 16 and 32 latent
    frames there, far below AudioLDM's 40 ms frame, and the parent renders them."""
    tiled, _, arch = FAMILIES[family]
    pipe = tiled(**other_geometry(arch))
    pipe.set_progress_bar_config(disable=True)
    geometry = pipe.geometry
    assert (geometry.mel_hop, geometry.vae_factor, geometry.latent_frame_seconds) == (4, 2, 8 / 16000)
    for seconds in (0.016, 0.032):
        audio = pipe("A hammer hitting a wooden surface", audio_length_in_s=seconds, num_inference_steps=2,
                     guidance_scale=6.0, generator=torch.Generator().manual_seed(0)).audios[0]
        assert audio.ndim == 1 and len(audio) / geometry.sample_rate == seconds
    # The shortest render is that model's latent frame, named as such; the windows are its 10.24 s too.
    with pytest.raises(ValueError, match=r"at least 0.0005 s \(one latent frame of this model\)"):
        pipe("rain", audio_length_in_s=0.0004, num_inference_steps=1)
    assert pipe.tiling_for_call(None).window_frames == 10.24 * 16000 / 8
