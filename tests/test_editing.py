"""Continuing a recording and regenerating spans of it: the original samples survive bit for bit outside the
edited ranges, the lengths are right, and the known region is put back at every denoising step."""

import numpy as np
import pytest
import soundfile as sf
import torch

from audioldm_tiled import TilingConfig
from audioldm_tiled.editing import plan_edit

RATE = 16_000
FRAME = 640  # samples per latent frame
TILED = TilingConfig(enabled=True, window_frames=32, window_overlap_frames=8, tile_frames=16, vocoder_chunk_frames=64,
                     show_progress=False)


@pytest.fixture(scope="module")
def recording():
    """3.3 s of a tone with noise: not a whole number of latent frames."""
    t = np.arange(int(3.3 * RATE)) / RATE
    noise = np.random.default_rng(0).standard_normal(t.shape)
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * noise).astype(np.float32)


def edit_call(pipe, recording, **kwargs):
    return pipe("rain", audio=recording, num_inference_steps=3, tiling=TILED,
                generator=torch.Generator().manual_seed(0), **kwargs).audios[0]


def test_a_continuation_keeps_the_input_and_adds_the_extension(tiny_pipe, recording):
    out = edit_call(tiny_pipe, recording, extend_s=2.0, crossfade_s=0.1)
    assert out.shape == (len(recording) + 2 * RATE,)
    fade = int(0.1 * RATE)
    assert np.array_equal(out[: len(recording) - fade], recording[: len(recording) - fade])
    assert not np.array_equal(out[len(recording) - fade : len(recording)], recording[-fade:])  # the crossfade
    assert np.isfinite(out).all() and np.abs(out[len(recording) :]).max() > 0


def test_a_continuation_from_the_last_seconds_only(tiny_pipe, recording):
    out = edit_call(tiny_pipe, recording, extend_s=1.0, context_s=1.0)
    assert out.shape == (len(recording) + RATE,)
    fade = int(0.25 * RATE)
    assert np.array_equal(out[: len(recording) - fade], recording[: len(recording) - fade])
    edit = plan_edit(recording, RATE, FRAME, extend_s=1.0, context_s=1.0)
    assert edit.context[0] % FRAME == 0 and len(recording) - edit.context[0] <= RATE + FRAME


@pytest.mark.parametrize("spans", [(1.0, 2.0), [(0.0, 0.8), (2.0, 3.3)]])
def test_regenerated_spans_leave_everything_else_bit_for_bit(tiny_pipe, recording, spans):
    out = edit_call(tiny_pipe, recording, regenerate=spans, crossfade_s=0.05)
    assert out.shape == recording.shape
    inside = np.zeros(len(recording), dtype=bool)
    for a, b in [spans] if isinstance(spans, tuple) else spans:
        inside[int(a * RATE) : int(b * RATE)] = True
    assert np.array_equal(out[~inside], recording[~inside])
    assert not np.allclose(out[inside], recording[inside])


def test_the_known_region_is_put_back_at_every_step(tiny_pipe, recording):
    """Spy on the denoising loop: after each step the known frames hold the input's latents noised to the next
    step's level with one fixed noise, and after the last step the input's latents themselves."""
    steps = []
    edit_call(tiny_pipe, recording, regenerate=(1.0, 2.0), output_type="latent",
              callback_on_step_end=lambda pipe, i, t, tensors: steps.append(tensors["latents"].clone()) or tensors)
    edit = plan_edit(recording, RATE, FRAME, regenerate=(1.0, 2.0))
    known = edit.known_mask()
    assert known.any() and not known.all()
    scheduler = tiny_pipe.scheduler
    timesteps = scheduler.timesteps
    alphas = scheduler.alphas_cumprod
    clean = steps[-1][:, :, known]
    noises = []
    for i, latents in enumerate(steps[:-1]):
        a = alphas[timesteps[i + 1]]
        noises.append((latents[:, :, known] - a.sqrt() * clean) / (1 - a).sqrt())
    for noise in noises[1:]:
        assert torch.allclose(noise, noises[0], atol=1e-4)  # one noise, at each step's level
    assert noises[0].std() > 0.5  # and really noise
    # the frames to regenerate are not the input's
    assert not torch.allclose(steps[-1][:, :, ~known], torch.zeros(()), atol=1e-3)


def test_an_edit_streams_to_a_wav_with_the_original_samples(tiny_pipe, recording, tmp_path):
    from audioldm_tiled import render_to_wav

    source = tmp_path / "field.wav"
    sf.write(source, recording, RATE, subtype="PCM_16")
    stored, _ = sf.read(source, dtype="float32")
    path = render_to_wav(tiny_pipe, tmp_path / "fixed.wav", "rain", audio=source, regenerate=(1.0, 2.0),
                         num_inference_steps=2, tiling=TILED)
    written, _ = sf.read(path, dtype="float32")
    keep = np.ones(len(stored), dtype=bool)
    keep[RATE : 2 * RATE] = False
    assert written.shape == stored.shape
    assert np.array_equal(written[keep], stored[keep])  # 16-bit in, 16-bit out: bit for bit


@pytest.mark.parametrize("kwargs,message", [
    (dict(regenerate=(2.0, 1.0)), "empty or reversed"),
    (dict(regenerate=(1.0, 1.0)), "empty or reversed"),
    (dict(regenerate=(3.0, 9.0)), "ends past the input"),
    (dict(regenerate=(-1.0, 1.0)), "regenerate"),
    (dict(regenerate=[(0.5, 1.5), (1.0, 2.0)]), "overlap"),
    (dict(regenerate="1:2"), "pair"),
    (dict(regenerate=(1.0, 1.2), crossfade_s=0.2), "longer than half the span"),
    (dict(extend_s=1.0, regenerate=(1.0, 2.0)), "one of `extend_s`"),
    (dict(extend_s=0), "`extend_s` must be"),
    (dict(extend_s=1.0, strength=0.5), "`strength` restyles"),
    (dict(extend_s=1.0, audio_length_in_s=5.0), "leave `audio_length_in_s` out"),
    (dict(extend_s=1.0, loop=True), "`loop` makes a new loop"),
    (dict(extend_s=1.0, num_waveforms_per_prompt=2), "one waveform"),
])
def test_edit_errors(tiny_pipe, recording, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipe("rain", audio=recording, num_inference_steps=1, **kwargs)


def test_an_edit_needs_an_input(tiny_pipe):
    with pytest.raises(ValueError, match="pass it as `audio`"):
        tiny_pipe("rain", extend_s=2.0, num_inference_steps=1)


@pytest.mark.parametrize("samples,edit", [
    (300, dict(extend_s=1.0, crossfade_s=0)),
    (300, dict(regenerate=(0.0, 0.01), crossfade_s=0)),
    (32300, dict(extend_s=1.0, context_s=0.01, crossfade_s=0)),
])
def test_inputs_and_contexts_shorter_than_the_stft_window(tiny_pipe, samples, edit):
    """The front end's STFT needs more than n_fft / 2 samples; shorter contexts are padded for the encoding."""
    source = (0.1 * np.random.default_rng(0).standard_normal(samples)).astype(np.float32)
    audio = tiny_pipe("rain", audio=source, num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                      **edit).audios[0]
    assert audio.shape == (samples + int(edit.get("extend_s", 0) * 16000),)
    # the input's own samples where nothing is remade (no crossfade): all of them, or those after the 10 ms span
    kept = slice(0, samples) if "extend_s" in edit else slice(160, samples)
    assert np.array_equal(audio[kept], source[kept])
