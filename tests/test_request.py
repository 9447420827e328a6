"""The request: what each front door builds, with its kind, its defaults and the fingerprint ranks compare."""

import numpy as np
import pytest
import torch

from audioldm_tiled import TilingConfig
from audioldm_tiled.request import Request

SOURCE = np.zeros(16000, dtype=np.float32)


@pytest.mark.parametrize("fields,kind", [
    (dict(prompt="rain"), "generate"),
    (dict(prompt="rain", audio=SOURCE), "restyle"),
    (dict(prompt="rain", audio=SOURCE, extend_s=2.0), "extend"),
    (dict(prompt="rain", audio=SOURCE, regenerate=(0.2, 0.8)), "regenerate"),
    (dict(prompt="rain", loop=True), "loop"),
])
def test_the_kind_follows_from_the_fields(fields, kind):
    assert Request(**fields).kind == kind


def test_defaults_live_in_the_request():
    assert Request(prompt="rain", audio=SOURCE).strength == 0.5
    assert Request(prompt="rain").audio_length_in_s is None  # the family's training window, decided by the plan
    assert Request.for_command_line(prompt="rain").audio_length_in_s == 10.0
    assert Request.for_command_line(prompt="rain", audio=SOURCE).audio_length_in_s is None
    assert Request(prompt="rain", num_waveforms_per_prompt=None).num_waveforms_per_prompt == 1


def test_the_fingerprint_follows_what_decides_the_audio():
    def digest(**changes):
        fields = dict(prompt="rain", audio_length_in_s=4.0, generator=torch.Generator().manual_seed(1),
                      tiling=TilingConfig(store="host", store_dir="/a", memory_budget=10**9))
        return Request(**{**fields, **changes}).digest()

    same = digest()
    assert digest() == same
    assert digest(tiling=TilingConfig(store="disk", store_dir="/b", memory_budget=5 * 10**9)) == same  # where, not what
    assert digest(ranks="auto") == same
    for changed in (dict(prompt="wind"), dict(audio_length_in_s=5.0), dict(generator=torch.Generator().manual_seed(2)),
                    dict(tiling=TilingConfig(mode="fast")), dict(latents=torch.zeros(1, 8, 100, 16)),
                    dict(family_inputs={"transcription": "hello"})):
        assert digest(**changed) != same, changed


def test_arguments_no_field_takes_go_to_the_family(tiny_pipe):
    taken = {}
    request = Request.from_arguments({"prompt": "rain", "transcription": "hi"}, taken.update)
    assert request.family_inputs == {"transcription": "hi"} and taken == {"transcription": "hi"}
    with pytest.raises(TypeError, match="unexpected keyword argument.*'colour'"):  # AudioLDM takes none
        Request.from_arguments({"prompt": "rain", "colour": 1}, tiny_pipe.reject_unknown_arguments)
