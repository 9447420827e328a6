import pytest

from audioldm_tiled import random_pipeline
from audioldm_tiled.architectures import build_components, offline_tokenizer

# Parameter counts of cvssp/audioldm-s-full-v2's components in millions, rounded to 0.1 M.
AUDIOLDM_S_MILLIONS = {"unet": 185.0, "vae": 55.4, "vocoder": 55.3, "text_encoder": 125.3}


@pytest.mark.slow
def test_audioldm_s_matches_the_public_checkpoint_shapes():
    components = build_components("audioldm-s")
    for name, millions in AUDIOLDM_S_MILLIONS.items():
        count = sum(p.numel() for p in components[name].parameters())
        assert round(count / 1e6, 1) == millions, name
    assert components["vae"].config.scaling_factor == pytest.approx(0.9392935633659363)


def test_offline_tokenizer_tokenizes_anything_and_pads():
    tokenizer = offline_tokenizer(16)
    ids = tokenizer(["rain on a tin roof", "☔ ünïcode"], padding="max_length", max_length=16, truncation=True)
    assert all(len(row) == 16 for row in ids.input_ids)
    assert ids.input_ids[0][0] == tokenizer.bos_token_id


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="arch must be one of"):
        random_pipeline("audioldm-xl")
