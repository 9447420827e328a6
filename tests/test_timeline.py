import math

import numpy as np
import pytest
import torch

from audioldm_tiled import TilingConfig, timeline
from audioldm_tiled.geometry import Tile
from audioldm_tiled.timeline import (
    Segment,
    deciding_mix,
    dominant_segments,
    is_timeline,
    mix_embeddings,
    parse_timeline,
    span_mix,
    window_mix,
)


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


def _random_timeline(rng) -> list[Segment]:
    """Segments of 0.2 to 30 seconds with gaps of up to 5 seconds: some cover most of no window."""
    segments, start = [], float(rng.uniform(0, 3))
    for index in range(int(rng.integers(2, 9))):
        end = start + float(rng.choice([rng.uniform(0.2, 2), rng.uniform(2, 30)]))
        segments.append(Segment(start, end, f"s{index}"))
        start = end + float(rng.choice([0.0, rng.uniform(0, 5)]))
    return segments


def test_the_deciding_rows_show_the_segments_that_dominate_some_window():
    """What a live plan checks, without laying out a window per stride up to the timeline's end, against every
    window: finite renders ending inside the timeline or past it, and endless ones (windows up to two windows past
    the last start stand for all, the rest lying in the last segment)."""
    rng = np.random.default_rng(0)
    some_unheard = 0
    for _ in range(60):
        segments = _random_timeline(rng)
        window = int(rng.integers(4, 40))
        stride, frames_per_second = int(rng.integers(1, window)), float(rng.choice([1.0, 3.0, 12.5, 25.0]))
        reach = math.ceil(segments[-1].start_s * frames_per_second) + 2 * window
        for windows in (None, max(1, reach // (2 * stride)), reach // stride + 1):
            every = torch.stack([span_mix(segments, k * stride, k * stride + window, frames_per_second)
                                 for k in range(reach // stride + 1 if windows is None else windows)])
            rows = deciding_mix(segments, window, stride, windows, frames_per_second)
            assert set(dominant_segments(rows)) == set(dominant_segments(every)), (segments, window, stride, windows)
            assert rows.shape[0] <= len(segments) * (2 * window // stride + 4)
            some_unheard += len(set(dominant_segments(every))) < len(segments)
    assert some_unheard > 20  # the comparison is not only between timelines where every segment is heard


def test_a_live_timeline_reaching_a_year_is_checked_without_laying_out_its_windows(monkeypatch, caplog):
    from audioldm_tiled import AudioLDM2TiledPipeline
    from audioldm_tiled.testing.architectures import build_components

    pipe = AudioLDM2TiledPipeline(**build_components("audioldm2-tiny", seed=0))
    mixed = []
    membership = timeline.frame_membership

    def counted(*args, **kwargs):  # a window per 6.4 s up to 3e7 s would be 4.7 million
        mixed.append(1)
        assert len(mixed) < 1000, "the plan lays out the timeline's windows one by one"
        return membership(*args, **kwargs)

    monkeypatch.setattr(timeline, "frame_membership", counted)
    with caplog.at_level("WARNING"):
        render = pipe.live([(0, "rain"), (20, "thunder"), (20.5, "snow"), (3e7, "birds")], num_inference_steps=1)
    render.close()
    assert "'thunder'" in caplog.text and "'snow'" not in caplog.text and "'birds'" not in caplog.text


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
    changing = _pipe_audio(tiny_pipe, [(0, "light rain"), (3, "thunderstorm")])
    assert changing.shape == one.shape and np.isfinite(changing).all()
    # The second segment changes the audio, by a good share of what changing the whole prompt does (measured
    # against that, not against the audio: how much random weights let the text through depends on the library
    # versions' initialisation).
    thunder = _pipe_audio(tiny_pipe, "thunderstorm")
    assert np.abs(changing - one).max() > 0.1 * np.abs(thunder - one).max() > 0
    negative = _pipe_audio(tiny_pipe, [(0, "light rain"), (3, "thunderstorm")], negative_prompt="low quality")
    assert negative.shape == one.shape and np.isfinite(negative).all()


def test_timeline_with_prompt_embeds_raises(tiny_pipe):
    with pytest.raises(ValueError, match="prompt_embeds"):
        tiny_pipe([(0, "rain")], prompt_embeds=torch.zeros(1, 32), audio_length_in_s=2.0)
