import pytest
import torch

from audioldm_tiled import random_pipeline
from audioldm_tiled.testing.architectures import ARCHITECTURES, build_components, offline_tokenizer

# Parameter counts of cvssp/audioldm-s-full-v2's components in millions, rounded to 0.1 M.
AUDIOLDM_S_MILLIONS = {"unet": 185.0, "vae": 55.4, "vocoder": 55.3, "text_encoder": 125.3}


def test_audioldm_s_matches_the_public_checkpoint_shapes():
    counts = _counts("audioldm-s")
    assert {name: round(count / 1e6, 1) for name, count in counts.items()} == AUDIOLDM_S_MILLIONS
    assert ARCHITECTURES["audioldm-s"].vae["scaling_factor"] == pytest.approx(0.9392935633659363)


def test_offline_tokenizer_tokenizes_anything_and_pads():
    tokenizer = offline_tokenizer(16)
    ids = tokenizer(["rain on a tin roof", "☔ ünïcode"], padding="max_length", max_length=16, truncation=True)
    assert all(len(row) == 16 for row in ids.input_ids)
    assert ids.input_ids[0][0] == tokenizer.bos_token_id


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="arch must be one of"):
        random_pipeline("audioldm-xl")


# Parameter counts, in millions rounded to 0.1 M, of the components built from the public configs cited in
# architectures.py. Independent public figures they are checked against below: the model cards' totals (1.1 B for
# cvssp/audioldm2 and -music, 1.5 B for -large), the large UNet's 2.87 GB of float32 weights on the hub, GPT-2
# base's 124 M and ucsd-reach/musicldm's AudioLDM shapes.
PUBLIC_MILLIONS = {
    "audioldm2": {"unet": 346.9, "text_encoder": 193.9, "text_encoder_2": 341.2, "language_model": 124.4,
                  "projection_model": 1.2, "vae": 55.4, "vocoder": 55.3},
    "audioldm2-large": {"unet": 718.0, "text_encoder": 193.9, "text_encoder_2": 341.2, "language_model": 124.4,
                        "projection_model": 1.2, "vae": 55.4, "vocoder": 55.3},
    "musicldm": {"unet": 185.0, "text_encoder": 153.5, "vae": 55.4, "vocoder": 55.3},
}
PUBLIC_MILLIONS["audioldm2-music"] = PUBLIC_MILLIONS["audioldm2"]
MODEL_CARD_TOTAL_BILLIONS = {"audioldm2": 1.1, "audioldm2-music": 1.1, "audioldm2-large": 1.5}


def _counts(arch: str) -> dict[str, int]:
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            components = build_components(arch)
    except RuntimeError:  # transformers 4's CLAP reads a number off a tensor it makes while it builds (`.item()`)
        from accelerate import init_empty_weights

        with init_empty_weights():  # only the parameters on the meta device
            components = build_components(arch)
    return {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()
            if isinstance(module, torch.nn.Module)}


@pytest.mark.parametrize("arch", sorted(PUBLIC_MILLIONS))
def test_parameter_counts_match_the_public_configs(arch):
    counts = _counts(arch)
    assert {name: round(count / 1e6, 1) for name, count in counts.items()} == PUBLIC_MILLIONS[arch]
    if arch in MODEL_CARD_TOTAL_BILLIONS:
        assert round(sum(counts.values()) / 1e9, 1) == MODEL_CARD_TOTAL_BILLIONS[arch]
    if arch == "audioldm2-large":
        assert round(counts["unet"] * 4 / 1e9, 2) == 2.87
