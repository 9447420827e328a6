import pytest

from audioldm_tiled import TilingConfig


@pytest.mark.parametrize(
    "field, value",
    [
        ("enabled", "yes"), ("mode", "quick"), ("tile_frames", 0), ("tile_frames", 2.5), ("pad_frames", -1),
        ("memory_budget", 0), ("proxy_frames", 4), ("vocoder_chunk_frames", 0), ("vocoder_context_frames", -2),
        ("window_frames", 100), ("window_overlap_frames", -1), ("window_weighting", "gauss"),
        ("window_batch_size", 0), ("windowed", "no"),
    ],
)
def test_invalid_field_raises_naming_it(field, value):
    with pytest.raises(ValueError, match=field):
        TilingConfig(**{field: value})


def test_replace_rejects_unknown_fields_and_config_is_frozen():
    config = TilingConfig()
    with pytest.raises(ValueError, match="tile_size"):
        config.replace(tile_size=3)
    with pytest.raises(AttributeError):
        config.mode = "fast"
    assert config.replace(mode="fast").mode == "fast"


def test_window_in_seconds_rounds_to_multiples_of_8_frames():
    config = TilingConfig.from_seconds(window_s=10.24, overlap_s=3.84)
    assert (config.window_frames, config.window_overlap_frames) == (256, 96)
    with pytest.raises(ValueError, match="window_s"):
        TilingConfig.from_seconds(window_s=-1)


def test_windows_default_to_the_training_clip_of_the_models_latent_frame():
    """10.24 s windows overlapping by 37.5 %: 256/96 frames of AudioLDM's 40 ms, 128/48 of an 80 ms frame."""
    assert (TilingConfig().window_frames, TilingConfig().window_overlap_frames) == (None, None)
    for frame_seconds, expected in ((0.04, (256, 96)), (0.08, (128, 48)), (8 / 16000, (20480, 7680))):
        config = TilingConfig().with_windows_for(frame_seconds)
        assert (config.window_frames, config.window_overlap_frames) == expected
    given = TilingConfig(window_frames=64, window_overlap_frames=8).with_windows_for(0.08)
    assert (given.window_frames, given.window_overlap_frames) == (64, 8)
    with pytest.raises(ValueError, match="window_overlap_frames must be at most half"):
        TilingConfig(window_frames=256, window_overlap_frames=200)
    with pytest.raises(ValueError, match="window_overlap_frames must be at most half"):
        TilingConfig(window_overlap_frames=200).with_windows_for(0.08)
