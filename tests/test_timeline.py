import numpy as np
import pytest
import torch

from audioldm_tiled import TilingConfig
from audioldm_tiled.geometry import Tile
from audioldm_tiled.timeline import Segment, is_timeline, mix_embeddings, parse_timeline, window_mix


def test_segments_without_end_last_until_the_next_start():
    segments = parse_timeline([(0, "light rain"), (120, "thunderstorm"), (200, "birds at dawn")], 300)
    assert segments == [Segment(0, 120, "light rain"), Segment(120, 200, "thunderstorm"),
                        Segment(200, 300, "birds at dawn")]
    assert parse_timeline([(5, 10, "a"), (20, "b")], 30) == [Segment(5, 10, "a"), Segment(20, 30, "b")]


def test_a_list_of_strings_is_a_batch_not_a_timeline():
    assert not is_timeline(["rain", "wind"]) and not is_timeline("rain") and is_timeline([(0, "rain")])


@pytest.mark.parametrize("timeline, match", [
    ([(10, "a"), (5, "b")], "sorted"),
    ([(-1, "a")], ">= 0"),
    ([(0, "a"), (40, "b")], "beyond"),
    ([(0, 50, "a")], "within the audio"),
    ([(0, "  ")], "empty text"),
    ([(0, 10, "a"), (5, "b")], "overlap"),
    ([(0, float("nan"), "a")], "finite"),
    ([(0,)], "segment 0"),
])
def test_bad_timelines_raise(timeline, match):
    with pytest.raises(ValueError, match=match):
        parse_timeline(timeline, 30.0)


def test_each_window_gets_the_segments_it_covers():
    segments = parse_timeline([(0, "a"), (4, "b"), (6, 8, "c")], 10)  # 8-10 s is a gap: nearest segment, c
    windows = [Tile(0, 50, 0, 50), Tile(75, 125, 75, 125), Tile(200, 250, 200, 250)]  # 25 frames per second
    mix = window_mix(segments, windows, 250, 25.0)
    assert torch.allclose(mix.sum(dim=1), torch.ones(3, dtype=torch.float64))
    assert mix[0].tolist() == [1.0, 0.0, 0.0]  # 0-2 s: all "a"
    assert mix[1].tolist() == [0.5, 0.5, 0.0]  # 3-5 s: half "a", half "b"
    assert mix[2].tolist() == [0.0, 0.0, 1.0]  # 8-10 s: the gap after "c" takes "c"


def test_mixed_embeddings_are_unit_vectors_between_the_segments():
    e = torch.nn.functional.normalize(torch.randn(2, 1, 1, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    mixed = mix_embeddings(e, torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], dtype=torch.float64))
    assert torch.allclose(mixed[0], e[0], atol=1e-6) and torch.allclose(mixed[2], e[1], atol=1e-6)
    assert torch.allclose(mixed.norm(dim=-1), torch.ones(3, 1, 1))
    assert torch.allclose(mixed[1], torch.nn.functional.normalize(e[0] + e[1], dim=-1))


def _pipe_audio(pipe, prompt, **kwargs):
    return pipe(prompt, audio_length_in_s=6.0, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                tiling=TilingConfig(window_frames=48, window_overlap_frames=16), **kwargs).audios


def test_pipeline_with_a_timeline(tiny_pipe):
    one = _pipe_audio(tiny_pipe, "light rain")
    as_timeline = _pipe_audio(tiny_pipe, [(0, "light rain")])
    # a one-segment timeline is the prompt itself, up to the rounding of re-normalising a unit vector
    assert np.abs(as_timeline - one).max() <= 1e-4 * np.abs(one).max()
    changing = _pipe_audio(tiny_pipe, [(0, "light rain"), (3, "thunderstorm")], negative_prompt="low quality")
    assert changing.shape == one.shape and np.isfinite(changing).all()
    assert np.abs(changing - one).max() > 1e-3 * np.abs(one).max()  # the second segment changes the audio


def test_timeline_with_prompt_embeds_raises(tiny_pipe):
    with pytest.raises(ValueError, match="prompt_embeds"):
        tiny_pipe([(0, "rain")], prompt_embeds=torch.zeros(1, 32), audio_length_in_s=2.0)
