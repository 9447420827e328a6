"""MusicLDM through the same engine: the parent's audio with tiling off, long outputs, scoring per window and the
loader picking the class from a folder's model_index.json."""

import numpy as np
import pytest
import torch

from audioldm_tiled import AudioLDMTiledPipeline, TilingConfig
from audioldm_tiled.families.musicldm import MusicLDMTiledPipeline
from audioldm_tiled.loading import load_pipeline
from audioldm_tiled.testing.architectures import build_components, random_pipeline

OFF = TilingConfig(enabled=False, windowed=False)


@pytest.fixture(scope="module")
def components():
    return build_components("musicldm-tiny", seed=0)


def run(pipe, seconds=2.0, **kwargs):
    return pipe("upbeat jazz piano", audio_length_in_s=seconds, num_inference_steps=3,
                generator=torch.Generator().manual_seed(0), **kwargs).audios


def test_a_long_windowed_render_with_a_timeline(components):
    pipe = MusicLDMTiledPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    tiling = TilingConfig(window_frames=32, window_overlap_frames=8, enabled=True, tile_frames=32)
    audio = pipe([(0, "jazz piano"), (3, "drum and bass")], audio_length_in_s=6.0, num_inference_steps=2,
                 tiling=tiling).audios
    assert audio.shape == (1, 96000) and np.isfinite(audio).all()


def test_waveforms_are_ranked_best_first_by_windows_of_clap(components):
    pipe = MusicLDMTiledPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    audio = torch.randn(3, 25 * 16000, generator=torch.Generator().manual_seed(1))
    calls = []
    encoder = pipe.text_encoder
    hook = encoder.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs["input_features"].shape),
                                         with_kwargs=True)
    ranked = pipe.score_waveforms("jazz", audio, 3, "cpu", torch.float32)
    hook.remove()
    assert len(calls) == 3  # 25 s: windows at 0, 10 and 20 s
    assert sorted(map(tuple, ranked.numpy())) == sorted(map(tuple, audio.numpy()))  # a reordering
    # the order follows the summed similarities, best first
    inputs = pipe.tokenizer(["jazz"], return_tensors="pt", padding=True)
    scores = torch.zeros(3, dtype=torch.float64)
    import librosa

    for start, share in ((0, 0.4), (160000, 0.4), (320000, 0.2)):  # 10 + 10 + 5 s
        piece = librosa.resample(audio[:, start : start + 160000].numpy(), orig_sr=16000, target_sr=48000)
        features = pipe.feature_extractor(list(piece), return_tensors="pt", sampling_rate=48000).input_features
        scores += encoder(**inputs, input_features=features).logits_per_text[0].double() * share
    assert torch.equal(ranked, audio[torch.argsort(scores, descending=True)])
    out = pipe("jazz", audio_length_in_s=2.0, num_inference_steps=1, num_waveforms_per_prompt=2).audios
    assert out.shape == (2, 32000)


def test_the_loader_picks_the_class_from_the_folder(tmp_path):
    for arch, cls in (("tiny", AudioLDMTiledPipeline), ("musicldm-tiny", MusicLDMTiledPipeline)):
        folder = tmp_path / arch
        random_pipeline(arch).save_pretrained(folder)
        assert type(load_pipeline(str(folder))) is cls
        assert type(load_pipeline(f"random:{arch}")) is cls
