import pytest
import torch
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from audioldm_tiled import TilingConfig, chunked_vocode, stream_vocode
from audioldm_tiled.testing.architectures import ARCHITECTURES
from audioldm_tiled.vocoder import hifigan_channels_last, hop_length, receptive_field_frames
from conftest import CHUNKED_VOCODER_TOLERANCE as TOLERANCE
from conftest import relative_error


@pytest.fixture(scope="module")
def audioldm_vocoder():
    torch.manual_seed(0)
    return SpeechT5HifiGan(SpeechT5HifiGanConfig(**ARCHITECTURES["audioldm-s"].vocoder)).eval()


@pytest.mark.parametrize("frames", [1, 2, 9, 64, 65, 131, 300])
@pytest.mark.parametrize("chunk", [1, 3, 16, 64, 1000])
def test_chunked_equals_one_pass_tiny(tiny, frames, chunk):
    vocoder = tiny["vocoder"]
    mel = torch.randn(2, frames, 64, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        expected = vocoder(mel)
    actual = chunked_vocode(vocoder, mel, TilingConfig(vocoder_chunk_frames=chunk, show_progress=False))
    assert actual.shape == expected.shape == (2, hop_length(vocoder) * frames + 32)
    assert relative_error(actual, expected) < TOLERANCE


def test_chunked_equals_one_pass_audioldm_config(audioldm_vocoder):
    assert hop_length(audioldm_vocoder) == 160
    mel = torch.randn(1, 150, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = audioldm_vocoder(mel)
    for chunk in (37, 64):
        actual = chunked_vocode(audioldm_vocoder, mel, TilingConfig(vocoder_chunk_frames=chunk, show_progress=False))
        assert actual.shape == (1, 160 * 150 + 32)
        assert relative_error(actual, expected) < TOLERANCE


def test_receptive_field_is_computed_and_needed(audioldm_vocoder):
    field = receptive_field_frames(audioldm_vocoder)
    assert 20 <= field <= 26  # AudioLDM's HiFi-GAN reads about +-23 mel frames (its kernels and dilations, summed)
    mel = torch.randn(1, 120, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = audioldm_vocoder(mel)
    short = chunked_vocode(audioldm_vocoder, mel, TilingConfig(vocoder_chunk_frames=40, vocoder_context_frames=2,
                                                               show_progress=False))
    assert relative_error(short, expected) > 100 * TOLERANCE  # too little context leaves seams: the check can fail


def test_stream_from_uneven_pieces_equals_whole(tiny):
    vocoder = tiny["vocoder"]
    mel = torch.randn(1, 200, 64, generator=torch.Generator().manual_seed(3))
    config = TilingConfig(vocoder_chunk_frames=30, show_progress=False)
    whole = chunked_vocode(vocoder, mel, config)
    cuts = [0, 1, 17, 90, 91, 200]
    pieces = [mel[:, a:b] for a, b in zip(cuts, cuts[1:])]
    streamed = torch.cat(list(stream_vocode(vocoder, pieces, 200, config)), dim=-1)
    assert torch.equal(streamed, whole)


def test_bad_mel_raises(tiny):
    with pytest.raises(ValueError, match="mel"):
        chunked_vocode(tiny["vocoder"], torch.zeros(64))


@pytest.mark.parametrize("normalize_before", [False, True])
def test_channels_last_forward_equals_module_forward(normalize_before):
    config = dict(ARCHITECTURES["tiny"].vocoder, normalize_before=normalize_before)
    torch.manual_seed(0)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**config)).eval()
    if normalize_before:  # non-trivial buffers, so a skipped normalisation would show
        vocoder.mean.normal_()
        vocoder.scale.uniform_(0.5, 2.0)
    mel = torch.randn(2, 37, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(hifigan_channels_last(vocoder, mel), vocoder(mel)) < TOLERANCE
