"""The pipeline in float16 and bfloat16 on the CPU, exact and fast, called and streamed: float32 output, finite, and
tiled equal to untiled within what the dtype's rounding allows."""

import numpy as np
import pytest
import torch

from audioldm_tiled import AudioLDMTiledPipeline, TilingConfig, chunked_vocode
from audioldm_tiled.benchmarks.stages import unit_scale_activations
from audioldm_tiled.testing.architectures import build_components
from conftest import HALF_PRECISION_TOLERANCE as TOLERANCE
from conftest import relative_error

WINDOWED = TilingConfig(window_frames=64, window_overlap_frames=16, show_progress=False)
TILED = WINDOWED.replace(enabled=True, tile_frames=16, proxy_frames=32, vocoder_chunk_frames=64)


def _pipe(dtype: torch.dtype) -> AudioLDMTiledPipeline:
    components = build_components("tiny")
    # Random HiFi-GAN weights shrink the signal to ~1e-9, which float16 flushes to zero; rescaled, the vocoder runs
    # at a trained one's scale and the comparison below has something to compare.
    unit_scale_activations(components["vocoder"], torch.randn(1, 200, 64, generator=torch.Generator()) * 2 - 5)
    pipe = AudioLDMTiledPipeline(**components).to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe, tiling: TilingConfig, stream: bool = False, seconds: float = 6) -> np.ndarray:
    args = dict(audio_length_in_s=seconds, num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                tiling=tiling)
    if stream:
        return np.concatenate(list(pipe.stream("rain", **args)), axis=1)
    return pipe("rain", **args).audios


@pytest.fixture(scope="module")
def fast_error_in_float32() -> float:
    """Fast mode's own error on this render (its statistics are estimates), which half precision adds to."""
    pipe = _pipe(torch.float32)
    untiled = _render(pipe, WINDOWED.replace(enabled=False))
    return relative_error(torch.from_numpy(_render(pipe, TILED.replace(mode="fast"))), torch.from_numpy(untiled))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_end_to_end(dtype, fast_error_in_float32):
    pipe = _pipe(dtype)
    untiled = torch.from_numpy(_render(pipe, WINDOWED.replace(enabled=False)))
    outputs = {}
    for mode in ("exact", "fast"):
        called = outputs[mode] = _render(pipe, TILED.replace(mode=mode))
        assert called.dtype == np.float32 and np.isfinite(called).all() and np.abs(called).max() > 0.1
        if mode == "fast":  # the path whose pieces are yielded tile by tile as they are decoded
            assert np.array_equal(_render(pipe, TILED.replace(mode=mode), stream=True), called)
        error = relative_error(torch.from_numpy(called), untiled)
        bound = TOLERANCE[dtype] + (fast_error_in_float32 if mode == "fast" else 0)
        assert error < bound, (mode, error)
    assert not np.array_equal(outputs["fast"], outputs["exact"])  # 150 latent frames: fast mode runs its proxy


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_vocoder_precision_float32_computes_in_float32_from_half_weights(dtype):
    vocoder = build_components("tiny")["vocoder"]
    mel = torch.randn(1, 300, 64, generator=torch.Generator().manual_seed(0)) * 2 - 5
    unit_scale_activations(vocoder, mel)
    vocoder.to(dtype)
    widened = build_components("tiny")["vocoder"]
    widened.load_state_dict({k: v.float() for k, v in vocoder.state_dict().items()})  # the same rounded weights
    with torch.no_grad():
        expected = widened(mel.to(dtype).float())
        config = TilingConfig(vocoder_chunk_frames=64, show_progress=False)
        in_float32 = chunked_vocode(vocoder, mel.to(dtype), config.replace(vocoder_precision="float32"))
        in_half = chunked_vocode(vocoder, mel.to(dtype), config.replace(vocoder_precision="model"))
        automatic = chunked_vocode(vocoder, mel.to(dtype), config)
    assert in_float32.dtype == torch.float32 and in_half.dtype == dtype
    # "auto" widens bfloat16 (it costs the vocoder 35.8 dB SNR on audioldm-s shapes) and keeps float16
    assert torch.equal(automatic, in_float32 if dtype == torch.bfloat16 else in_half)
    # float32 summation order only (measured 2.2e-5 and 2.7e-5 here, where the unit-scaled vocoder amplifies it)
    assert relative_error(in_float32, expected) < 1e-4
    assert relative_error(in_half.float(), expected) > 10 * relative_error(in_float32, expected)


# A bfloat16 decoder run in float32 ("float32", "auto"'s choice for bfloat16) or with its output layers in float32
# ("output") against the same widened by hand: only float32 summation order differs (measured 1.7e-6 and 2.2e-7 of
# the largest value); the decoder left in bfloat16 differs by 2.0e-2 and 4.1e-3 from them.
WIDENED_TOLERANCE = 1e-5


def hand_widened(vae, policy: str):
    """A copy of ``vae`` widened as ``policy`` says: all of it in float32, or conv_norm_out and conv_out in float32
    taking their input in float32."""
    import copy

    widened = copy.deepcopy(vae)
    if policy == "float32":
        return widened.float()
    widened.decoder.conv_norm_out.float()
    widened.decoder.conv_out.float()
    widened.decoder.conv_norm_out.register_forward_pre_hook(lambda module, args: (args[0].float(),))
    return widened


@pytest.mark.parametrize("policy", ["auto", "float32", "output"])
@pytest.mark.parametrize("tiling", [
    TilingConfig(show_progress=False),  # untiled
    TilingConfig(enabled=True, tile_frames=8, show_progress=False),
    TilingConfig(enabled=True, mode="fast", tile_frames=8, show_progress=False),
], ids=["untiled", "exact", "fast"])
def test_a_bfloat16_decoder_widened_as_asked(tiling, policy):
    from audioldm_tiled import tiled_decode

    vae = build_components("tiny")["vae"].to(torch.bfloat16)
    latents = torch.randn(1, 8, 40, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    widened = hand_widened(vae, "float32" if policy == "auto" else policy)
    with torch.no_grad():
        expected = widened.decode(latents.float() if policy != "output" else latents).sample
        mel = tiled_decode(vae, latents, tiling.replace(decode_precision=policy))
        as_model = tiled_decode(vae, latents, tiling.replace(decode_precision="model"))
    assert mel.dtype == torch.float32 and as_model.dtype == torch.bfloat16
    assert relative_error(mel, expected) < WIDENED_TOLERANCE < relative_error(as_model, expected)


@pytest.mark.parametrize("dtype,expected", [(torch.bfloat16, torch.float32), (torch.float16, torch.float16)])
def test_the_mel_reaches_the_vocoder_in_float32_under_bfloat16(dtype, expected, monkeypatch):
    import audioldm_tiled.vocoder as vocoder

    pipe = _pipe(dtype)
    seen = []
    chunk_wave = vocoder._chunk_wave
    monkeypatch.setattr(vocoder, "_chunk_wave",
                        lambda v, f, mel, *a: seen.append(mel.dtype) or chunk_wave(v, f, mel, *a))
    # 3 s: two windows, several tiles and chunks
    for tiling, stream in ((WINDOWED, False), (TILED, False), (TILED.replace(mode="fast"), True)):
        _render(pipe, tiling, stream, seconds=3)
    assert set(seen) == {expected}
    seen.clear()
    _render(pipe, TILED.replace(decode_precision="float32"), seconds=3)
    assert set(seen) == {torch.float32}  # asked for in any half precision


def test_a_bfloat16_pipeline_can_load_its_vae_and_vocoder_in_float32(tmp_path):
    """Where the rounding of the VAE's weights matters: loaded in float32 beside a bfloat16 UNet (diffusers' dict of
    dtypes), they decode and vocode the latents sample for sample as a float32 pipeline does."""
    full = _pipe(torch.float32)
    full.save_pretrained(tmp_path)
    from audioldm_tiled.loading import _dtype_keyword  # the name this diffusers reads the dtypes by

    dtypes = {"default": torch.bfloat16, "vae": torch.float32, "vocoder": torch.float32}
    mixed = AudioLDMTiledPipeline.from_pretrained(tmp_path, **{_dtype_keyword(): dtypes})
    mixed.set_progress_bar_config(disable=True)
    assert (mixed.unet.dtype, mixed.vae.dtype, mixed.vocoder.dtype) == (torch.bfloat16, torch.float32, torch.float32)
    latents = mixed("rain", audio_length_in_s=2, num_inference_steps=1, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).audios
    assert latents.dtype == torch.bfloat16
    ours = np.concatenate(list(mixed.stream_latents(latents, tiling=TILED)), axis=1)
    theirs = np.concatenate(list(full.stream_latents(latents.float(), tiling=TILED)), axis=1)
    assert np.array_equal(ours, theirs)
