"""AudioLDM 2 through the same engine: the parent's audio with tiling off, GPT-2's generation, timelines switching
per window, and the loader picking the class from a folder's model_index.json."""

import inspect

import numpy as np
import pytest
import torch
from diffusers import AudioLDM2Pipeline

from audioldm_tiled import TilingConfig
from audioldm_tiled.denoise import plan_windows
from audioldm_tiled.families import audioldm2
from audioldm_tiled.families.audioldm2 import AudioLDM2TiledPipeline
from audioldm_tiled.loading import load_pipeline
from audioldm_tiled.plan import build_plan
from audioldm_tiled.testing.architectures import build_components, random_pipeline

OFF = TilingConfig(enabled=False, windowed=False)


@pytest.fixture(scope="module")
def components():
    return build_components("audioldm2-tiny", seed=0)


@pytest.fixture()
def pipe(components):
    pipe = AudioLDM2TiledPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_generated_sequence_equals_recomputing_every_token(pipe):
    """The key-value cache changes only the order of float sums: recomputing the whole sequence for each new
    token agrees to float32 rounding (measured ~1e-7 of the values' scale); a wrong position or mask would
    differ at the values' own scale."""
    lm = pipe.language_model
    inputs = torch.randn(2, 7, lm.config.n_embd, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # a padded prompt
    expected, mask_now = inputs, mask
    for _ in range(8):
        hidden = lm(inputs_embeds=expected, attention_mask=mask_now, output_hidden_states=True).hidden_states[-1]
        expected = torch.cat([expected, hidden[:, -1:]], dim=1)
        mask_now = torch.cat([mask_now, mask_now.new_ones(2, 1)], dim=1)
    ours = pipe.generate_language_model(inputs, max_new_tokens=8, attention_mask=mask)
    assert ours.shape == (2, 8, lm.config.n_embd)
    assert (ours - expected[:, -8:]).abs().max() <= 1e-5 * expected.abs().max()


def test_a_timeline_conditions_each_window_on_its_dominant_segment(pipe, monkeypatch):
    texts = ["light rain", "a thunderstorm with heavy wind"]
    tiling = TilingConfig(window_frames=32, window_overlap_frames=8, window_batch_size=1, enabled=True,
                          tile_frames=32)
    sequences = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: sequences.append(kwargs["encoder_hidden_states_1"]), with_kwargs=True)
    warnings = []
    monkeypatch.setattr(audioldm2.logger, "warning", warnings.append)
    audio = pipe([(0, texts[0]), (2.5, texts[1])], audio_length_in_s=5.0, num_inference_steps=1,
                 tiling=tiling).audios
    hook.remove()
    assert audio.shape == (1, 80000) and np.isfinite(audio).all() and not warnings
    # each window takes the segment most of its frames belong to (frames from 2.5 s = frame 62.5 on: the second)
    windows = plan_windows(125, tiling).windows
    dominant = [int(sum(f + 0.5 > 2.5 * 25 for f in range(w.start, w.stop)) > w.length / 2) for w in windows]
    assert len(sequences) == len(windows) and 0 in dominant and 1 in dominant
    # The segments' T5 sequences, encoded again (float32 rounding apart, ~1e-6; two segments' differ by ~5)
    t5, _, _ = pipe.encode_prompt(texts, "cpu", 1, True, negative_prompt=None)
    for sequence, segment in zip(sequences, dominant):
        assert torch.allclose(sequence[1], t5[len(texts) + segment], atol=1e-4)  # [negative, conditional] rows
    pipe([(0, texts[0]), (2.5, texts[1]), (2.7, "birds")], audio_length_in_s=5.0, num_inference_steps=1,
         tiling=tiling)  # 0.2 s of storm: most of no window
    assert len(warnings) == 1 and texts[1] in warnings[0]


def test_unknown_arguments_are_named(pipe):
    with pytest.raises(TypeError, match="'guidance'"):
        pipe("rain", audio_length_in_s=1.0, num_inference_steps=1, guidance=3.0)


def test_the_loader_picks_the_class_from_the_folder(tmp_path):
    folder = tmp_path / "audioldm2"
    random_pipeline("audioldm2-tiny").save_pretrained(folder)
    assert type(load_pipeline(str(folder))) is AudioLDM2TiledPipeline
    assert type(load_pipeline("random:audioldm2-tiny")) is AudioLDM2TiledPipeline


def test_streaming_and_the_command_line_take_the_family_defaults(pipe, tmp_path, monkeypatch):
    import soundfile

    from audioldm_tiled.cli import main

    seen = {}

    def record(self, request, callbacks, *args, **kwargs):
        seen.update(plan=build_plan(self, request))
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr(AudioLDM2TiledPipeline, "_plan", record)
    with pytest.raises(KeyboardInterrupt):
        next(pipe.stream("rain", audio_length_in_s=1.0))
    parent = inspect.signature(AudioLDM2Pipeline.__call__).parameters
    assert seen["plan"].steps == parent["num_inference_steps"].default
    assert seen["plan"].guidance == parent["guidance_scale"].default
    monkeypatch.undo()
    out = tmp_path / "rain.wav"
    assert main(["rain", "--seconds", "1", "-o", str(out), "--model", "random:audioldm2-tiny", "--steps", "1",
                 "--quiet"]) == 0
    assert soundfile.info(str(out)).frames == 16000


def test_a_regenerated_span_leaves_everything_else_bit_for_bit(pipe):
    rate = pipe.vocoder.config.sampling_rate
    t = np.arange(int(3.3 * rate)) / rate
    recording = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    tiling = TilingConfig(enabled=True, window_frames=32, window_overlap_frames=8, tile_frames=16)
    out = pipe("rain", audio=recording, regenerate=(1.0, 2.0), crossfade_s=0.05, num_inference_steps=2,
               tiling=tiling, generator=torch.Generator().manual_seed(0)).audios[0]
    inside = np.zeros(len(recording), dtype=bool)
    inside[rate : 2 * rate] = True
    assert out.shape == recording.shape
    assert np.array_equal(out[~inside], recording[~inside]) and not np.allclose(out[inside], recording[inside])
