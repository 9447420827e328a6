import pytest

from audioldm_tiled import TilingConfig


@pytest.mark.parametrize(
    "field, value",
    [
        ("enabled", "yes"), ("mode", "quick"), ("tile_frames", 0), ("tile_frames", 2.5), ("pad_frames", -1),
        ("memory_budget", 0), ("proxy_frames", 4), ("vocoder_chunk_frames", 0), ("vocoder_context_frames", -2),
        ("window_frames", 100), ("window_overlap_frames", 200), ("window_weighting", "gauss"),
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
