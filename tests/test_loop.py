"""Seamless loops: denoising windows, the exact VAE decode and the vocoder on a circular time axis."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audioldm_tiled import TilingConfig
from audioldm_tiled.benchmarks.seams import audio_seam_score
from audioldm_tiled.denoise import plan_windows
from audioldm_tiled.geometry import add_frames, take_frames
from audioldm_tiled.vae import tiled_decode
from audioldm_tiled.vocoder import hop_length, receptive_field_frames, vocode_loop
from conftest import EXACT_TOLERANCE, nonstationary_latents, relative_error

LOOP = TilingConfig(enabled=True, window_frames=32, window_overlap_frames=8, tile_frames=16, vocoder_chunk_frames=64,
                    show_progress=False)


def circular_decoder(vae):
    """The untiled reference of a loop: every convolution of the decoder pads time circularly (frequency with
    zeros, as before), so GroupNorm and attention see exactly one period and nothing else changes."""
    vae = copy.deepcopy(vae)
    for conv in vae.decoder.modules():
        if isinstance(conv, torch.nn.Conv2d) and conv.padding[0] > 0:
            def forward(x, conv=conv):
                pt, pf = conv.padding
                x = F.pad(torch.cat([x[:, :, -pt:], x, x[:, :, :pt]], dim=2), (pf, pf, 0, 0))
                return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

            conv.forward = forward
    return vae


@pytest.mark.parametrize("mode,store,tile_frames", [("exact", "device", 16), ("exact", "disk", 16),
                                                    ("exact", "device", 100), ("fast", "device", 16)])
def test_circular_exact_decode_equals_the_circular_untiled_decode(tiny, mode, store, tile_frames):
    vae = tiny["vae"]
    z = nonstationary_latents(2, 61)
    expected = circular_decoder(vae).decode(z).sample
    config = TilingConfig(enabled=True, tile_frames=tile_frames, mode=mode, store=store, show_progress=False)
    assert relative_error(tiled_decode(vae, z, config, circular=True), expected) < EXACT_TOLERANCE
    # what the check tells apart: the ordinary decode's ends differ from the loop's
    assert relative_error(tiled_decode(vae, z, config), expected) > 0.05


def test_circular_decode_is_the_middle_of_the_decode_of_three_periods(tiny):
    """Against three periods decoded untiled the middle third differs only by what the zero padding at that
    sequence's two far ends does to its GroupNorm statistics (measured 6.3e-3 of max here, 45 dB; it shrinks as
    the period grows), where an ordinary decode differs at the wrap by 0.25."""
    vae = tiny["vae"]
    z = nonstationary_latents(2, 61)
    mel = 61 * 4
    middle = vae.decode(torch.cat([z] * 3, dim=2)).sample[:, :, mel : 2 * mel]
    loop = tiled_decode(vae, z, LOOP.replace(mode="exact"), circular=True)
    assert relative_error(loop, middle) < 0.02
    assert relative_error(tiled_decode(vae, z, LOOP.replace(mode="exact")), middle) > 0.1


def test_the_loop_vocoder_is_the_vocoder_of_the_repeated_mel(tiny):
    vocoder = tiny["vocoder"]
    mel = torch.randn(1, 203, 64, generator=torch.Generator().manual_seed(0))
    hop = hop_length(vocoder)
    wave = torch.cat(list(vocode_loop(vocoder, [mel[:, :100], mel[:, 100:]], LOOP)), dim=-1)
    assert wave.shape == (1, 203 * hop)
    # Two periods of the loop played one after the other are what the vocoder makes of the mel repeated: the
    # wrap is as continuous, sample by sample, as any other point.
    with torch.no_grad():
        repeated = vocoder(torch.cat([mel] * 3, dim=1))
        once = vocoder(mel)
    expected = repeated[:, 203 * hop : 203 * hop * 2]
    assert relative_error(wave, expected) < 1e-5
    # what the check tells apart: the ordinary vocoder's ends differ from the loop's
    assert relative_error(once[:, : 203 * hop], expected) > 1e-2
    assert receptive_field_frames(vocoder) < 203


def test_circular_windows_wrap_and_their_weights_sum_to_one_on_the_circle():
    for frames in (10, 61, 100, 300):
        plan = plan_windows(frames, LOOP, circular=True)
        assert len(plan.windows) >= 2
        total = torch.zeros(frames, dtype=torch.float64)
        for window, weight in zip(plan.windows, plan.weights):
            add_frames(total, window.start, weight, dim=0)
        assert torch.allclose(total, torch.ones(frames, dtype=torch.float64), atol=1e-12)
        assert plan.windows[0].start < 0  # the first window reads the end of the loop before its start


def test_the_unet_sees_across_the_wrap(tiny_pipe):
    inputs = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    start = torch.randn(1, 8, 100, 16, generator=torch.Generator().manual_seed(1))
    tiny_pipe("rain", audio_length_in_s=4.0, num_inference_steps=1, loop=True, tiling=LOOP, output_type="latent",
              latents=start)
    hook.remove()
    plan = plan_windows(100, LOOP, circular=True)
    crops = [row for batch in inputs for row in batch[: batch.shape[0] // 2]]  # the unconditional rows
    assert len(crops) == len(plan.windows)
    scale = tiny_pipe.scheduler.init_noise_sigma
    for window, crop in zip(plan.windows, crops):
        assert torch.equal(crop, take_frames(start * scale, window.start, window.stop)[0])
    assert plan.windows[0].start < 0 < plan.windows[0].stop  # the first window holds the end, then the start


def test_a_rendered_loop_wraps_like_any_other_sample(tiny_pipe, tmp_path):
    from audioldm_tiled import render_to_wav

    args = dict(audio_length_in_s=4.0, num_inference_steps=2, tiling=LOOP, loop=True)
    audio = tiny_pipe("rain", generator=torch.Generator().manual_seed(0), **args).audios[0]
    assert audio.shape == (4 * 16000,)
    streamed = np.concatenate([p[0] for p in tiny_pipe.stream("rain", generator=torch.Generator().manual_seed(0),
                                                               **args)])
    assert np.array_equal(streamed, audio)
    # Sample-level continuity of the wrap: the loop played twice is the middle of what the vocoder makes of the
    # loop's mel repeated four times (decoded from the same latents).
    latents = tiny_pipe("rain", generator=torch.Generator().manual_seed(0), output_type="latent", **args).audios
    with torch.no_grad():
        mel = tiled_decode(tiny_pipe.vae, latents / tiny_pipe.vae.config.scaling_factor, LOOP, circular=True)
        repeated = tiny_pipe.vocoder(torch.cat([mel.squeeze(1)] * 4, dim=1))[0].numpy()
    period = len(audio)
    twice = np.concatenate([audio, audio])
    assert np.abs(twice - repeated[period : 3 * period]).max() <= 1e-5 * np.abs(audio).max()
    # what the check tells apart: the same latents decoded and vocoded as an ordinary render do not wrap
    with torch.no_grad():
        plain_mel = tiled_decode(tiny_pipe.vae, latents / tiny_pipe.vae.config.scaling_factor, LOOP)
        plain = tiny_pipe.vocoder(plain_mel.squeeze(1))[0, :period].numpy()
    assert np.abs(np.concatenate([plain, plain]) - repeated[period : 3 * period]).max() > 1e-2 * np.abs(audio).max()
    # and the seam measure at the wrap is that of the rest of the audio
    assert audio_seam_score(twice, [4.0]) < 2
    path = render_to_wav(tiny_pipe, tmp_path / "loop.wav", "rain", generator=torch.Generator().manual_seed(0), **args)
    import soundfile

    written, rate = soundfile.read(path, dtype="float32")
    assert rate == 16000 and written.shape == audio.shape


def test_a_loop_follows_a_timeline_round_the_wrap(tiny_pipe):
    from audioldm_tiled.timeline import parse_timeline, window_mix

    segments = parse_timeline([(0, "rain"), (2.0, "thunder")], 4.0)
    plan = plan_windows(100, LOOP, circular=True)
    mix = window_mix(segments, plan.windows, 100, 25.0)
    first = plan.windows[0]
    assert first.start < 0 and mix[0, 1] > 0  # the first window hears the last segment across the wrap
    audio = tiny_pipe([(0, "rain"), (2.0, "thunder")], audio_length_in_s=4.0, num_inference_steps=1, loop=True,
                      tiling=LOOP).audios
    assert audio.shape == (1, 64000)


@pytest.mark.parametrize("kwargs,message", [
    (dict(loop="yes"), "`loop` must be True or False"),
    (dict(loop=True, audio=np.zeros(16000, dtype=np.float32)), "`loop` makes a new loop"),
])
def test_loop_errors(tiny_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipe("rain", num_inference_steps=1, **kwargs)


def test_take_frames_reads_modulo_the_length():
    x = torch.arange(10.0)[None, None, :, None]
    assert take_frames(x, -3, 2).flatten().tolist() == [7, 8, 9, 0, 1]
    assert take_frames(x, 8, 23).flatten().tolist() == [8, 9, *range(10), 0, 1, 2]
