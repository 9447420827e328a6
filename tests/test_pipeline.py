import inspect
import logging

import numpy as np
import pytest
import torch
from diffusers import AudioLDMPipeline, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

from audioldm_tiled import AudioLDMTiledPipeline, InsufficientMemoryError, TilingConfig
from audioldm_tiled.denoise import plan_windows

OFF = TilingConfig(enabled=False, windowed=False)


def run(pipe, seconds=2.0, seed=0, steps=3, **kwargs):
    return pipe("rain on a tin roof", audio_length_in_s=seconds, num_inference_steps=steps,
                generator=torch.Generator().manual_seed(seed), **kwargs).audios


def test_end_to_end_from_text(tiny_pipe):
    audio = run(tiny_pipe, seconds=1.5)
    assert audio.shape == (1, 24000) and audio.dtype == np.float32 and np.isfinite(audio).all()


def test_equals_parent_with_tiling_and_windowing_off(tiny):
    pipe = AudioLDMTiledPipeline(**tiny)
    parent = AudioLDMPipeline(**tiny)
    for p in (pipe, parent):
        p.set_progress_bar_config(disable=True)
    expected = run(parent, seconds=3.0)
    assert np.array_equal(run(pipe, seconds=3.0, tiling=OFF), expected)
    # Windowing on by default: one window covers 3 s, so the denoising is the parent's computation exactly.
    assert np.array_equal(run(pipe, seconds=3.0, tiling=TilingConfig(enabled=False)), expected)
    # Full defaults: the vocoder runs in channels-last layout on CPU, which changes only the summation order inside
    # its convolutions (float32 rounding through ~50 layers, measured ~2e-6 of max on audioldm-s).
    audio = run(pipe, seconds=3.0)
    assert np.abs(audio - expected).max() <= 1e-5 * np.abs(expected).max()


def test_save_pretrained_round_trip(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    for folder in ("unet", "vae", "vocoder", "text_encoder", "tokenizer", "scheduler"):
        assert (tmp_path / folder).is_dir()
    assert (tmp_path / "model_index.json").is_file()
    loaded = AudioLDMTiledPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(run(loaded), run(tiny_pipe))


def test_stream_concatenates_to_the_call(tiny_pipe):
    for mode in ("exact", "fast"):
        config = TilingConfig(enabled=True, mode=mode, tile_frames=32, vocoder_chunk_frames=100)
        whole = run(tiny_pipe, seconds=14.0, steps=1, tiling=config)  # the steps are the same code in both
        pieces = list(tiny_pipe.stream("rain on a tin roof", audio_length_in_s=14.0, num_inference_steps=1,
                                       generator=torch.Generator().manual_seed(0), tiling=config))
        assert len(pieces) > 1 and all(p.dtype == np.float32 for p in pieces)
        assert np.array_equal(np.concatenate(pieces, axis=1), whole)


def test_a_decode_that_cannot_fit_fails_before_denoising(tiny_pipe):
    steps = []

    def on_step(pipe, i, t, tensors):
        steps.append(i)
        return tensors

    # exact tiling of 4 s holds far more than 1 kB, and the store named is the device
    tight = TilingConfig(memory_budget=1000, tile_frames=16, store="device")
    args = dict(audio_length_in_s=4.0, num_inference_steps=1, callback_on_step_end=on_step)
    with pytest.raises(InsufficientMemoryError, match="fast mode"):
        tiny_pipe("rain", tiling=tight, **args)
    with pytest.raises(InsufficientMemoryError):
        next(tiny_pipe.stream("rain", tiling=tight, **args))
    assert steps == []
    # fast mode's memory does not grow with the length; latents are not decoded; a budget that holds them decodes;
    # so does the disk store, which "auto" picks here
    for tiling, output_type in ((tight.replace(mode="fast"), "np"), (tight, "latent"),
                                (tight.replace(memory_budget=10**9), "np"), (tight.replace(store="auto"), "np")):
        steps.clear()
        tiny_pipe("rain", tiling=tiling, output_type=output_type, **args)
        assert steps == [0]


def test_stream_tiles_even_where_an_untiled_decode_would_fit(tiny_pipe, monkeypatch):
    # "auto" with a huge budget decodes untiled in __call__, but stream() exists for bounded memory: it tiles.
    import audioldm_tiled.waveform as pipeline_module

    decoded, original = [], pipeline_module.iter_decode

    def counting_iter_decode(*args, **kwargs):
        for piece in original(*args, **kwargs):
            decoded.append(piece.shape[2])
            yield piece

    monkeypatch.setattr(pipeline_module, "iter_decode", counting_iter_decode)
    config = TilingConfig(tile_frames=32, memory_budget=10**15)
    list(tiny_pipe.stream("rain", audio_length_in_s=14.0, num_inference_steps=2,
                          generator=torch.Generator().manual_seed(0), tiling=config))
    assert len(decoded) > 1 and sum(decoded) == 1400  # 350 latent frames in tiles of 32, 4 mel frames each


def test_callback_on_step_end_sees_and_replaces_latents(tiny_pipe):
    seen = []

    def zero_latents(pipe, step, timestep, kwargs):
        seen.append(step)
        return {"latents": torch.zeros_like(kwargs["latents"])}

    run(tiny_pipe, callback_on_step_end=zero_latents)
    assert seen == [0, 1, 2]
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        run(tiny_pipe, callback_on_step_end=zero_latents, callback_on_step_end_tensor_inputs=["noise"])


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "10"])
def test_bad_length_raises(tiny_pipe, bad):
    with pytest.raises(ValueError, match="audio_length_in_s"):
        run(tiny_pipe, seconds=bad)


def test_window_weights_sum_to_one_on_every_frame():
    for frames in (257, 300, 1000, 7500):
        for weighting in ("cosine", "triangular", "uniform"):
            plan = plan_windows(frames, TilingConfig(window_weighting=weighting))
            total = torch.zeros(frames, dtype=torch.float64)
            for w, weight in zip(plan.windows, plan.weights):
                assert w.length == 256
                total[w.start : w.stop] += weight
            assert plan.windows[-1].stop == frames and plan.windows[0].start == 0
            torch.testing.assert_close(total, torch.ones_like(total))


def test_windowed_result_does_not_depend_on_window_batch_size(tiny_pipe):
    windows = TilingConfig(window_frames=64, window_overlap_frames=24)
    one = run(tiny_pipe, seconds=8.0, tiling=windows.replace(window_batch_size=1))
    three = run(tiny_pipe, seconds=8.0, tiling=windows.replace(window_batch_size=3))
    # Batched convolutions may sum in another order: float32 rounding through 3 steps and the decoder.
    np.testing.assert_allclose(three, one, atol=1e-5 * np.abs(one).max())


@pytest.mark.parametrize("scheduler", [DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler])
def test_windowed_denoising_runs_with_stateful_schedulers(tiny_pipe, scheduler):
    tiny_pipe.scheduler = scheduler.from_config(tiny_pipe.scheduler.config)
    # PNDM's Runge-Kutta warm-up needs more than 3 steps (diffusers' own PNDM fails at 3 in the parent too)
    audio = run(tiny_pipe, seconds=6.0, steps=6, tiling=TilingConfig(window_frames=64, window_overlap_frames=16))
    assert audio.shape == (1, 96000) and np.isfinite(audio).all()


def test_offload_sequence_includes_the_vocoder():
    assert AudioLDMTiledPipeline.model_cpu_offload_seq.split("->")[-1] == "vocoder"


def test_parent_deprecation_warning_shown_at_most_once(tiny, caplog, monkeypatch):
    import audioldm_tiled.deprecation as module

    monkeypatch.setattr(module, "_shown", set())
    with caplog.at_level(logging.WARNING):
        AudioLDMTiledPipeline(**tiny)
        AudioLDMTiledPipeline(**tiny)
    deprecated = "DeprecatedPipelineMixin" in [c.__name__ for c in AudioLDMPipeline.__mro__]  # diffusers 0.33 on
    assert caplog.text.count("deprecated") == int(deprecated)
    assert "AudioLDMTiledPipeline has been deprecated" not in caplog.text


def test_a_parent_diffusers_does_not_deprecate_is_not_called_deprecated(caplog, monkeypatch):
    import audioldm_tiled.deprecation as module

    monkeypatch.setattr(module, "_shown", set())

    class Maintained:  # builds without diffusers' deprecation notice, as AudioLDMPipeline before diffusers 0.33
        pass

    with caplog.at_level(logging.WARNING), module.parent_deprecation_once(Maintained, "Child"):
        Maintained()
    assert "deprecated" not in caplog.text


# The parent's API that this package overrides or calls. A diffusers release that changes any of these must fail here.
PARENT_SIGNATURES = {
    "decode_latents": ["self", "latents"],
    "mel_spectrogram_to_waveform": ["self", "mel_spectrogram"],
    "prepare_latents": ["self", "batch_size", "num_channels_latents", "height", "dtype", "device", "generator",
                        "latents"],
    "_encode_prompt": ["self", "prompt", "device", "num_waveforms_per_prompt", "do_classifier_free_guidance",
                       "negative_prompt", "prompt_embeds", "negative_prompt_embeds"],
    "check_inputs": ["self", "prompt", "audio_length_in_s", "vocoder_upsample_factor", "callback_steps",
                     "negative_prompt", "prompt_embeds", "negative_prompt_embeds"],
    "prepare_extra_step_kwargs": ["self", "generator", "eta"],
}


@pytest.mark.parametrize("name", sorted(PARENT_SIGNATURES))
def test_parent_methods_we_rely_on_are_unchanged(name):
    assert list(inspect.signature(getattr(AudioLDMPipeline, name)).parameters) == PARENT_SIGNATURES[name]


def test_window_batch_size_follows_the_memory_budget_off_the_cpu():
    from audioldm_tiled.memory import UNET_WINDOW_PEAK_FACTOR, choose_window_batch_size

    latents = torch.empty(1, 8, 1500, 16, device="meta")  # shape, dtype and device are all it reads
    per_window = UNET_WINDOW_PEAK_FACTOR * 2 * 8 * 256 * 16 * 4  # guided: two rows per window, float32
    choose = lambda budget, windows=10: choose_window_batch_size(  # noqa: E731
        latents, windows, 256, True, TilingConfig(memory_budget=budget))
    assert choose(int(3.5 * per_window)) == 3
    assert choose(100 * per_window) == 10 and choose(100 * per_window, windows=4) == 4
    assert choose(per_window // 2) == 1  # never below one window
    assert choose_window_batch_size(torch.empty(1, 8, 1500, 16), 10, 256, True, TilingConfig(memory_budget=10**12)) == 1


def test_one_progress_bar_at_a_time_while_the_decode_feeds_the_vocoder(tiny_pipe, monkeypatch):
    """The vocoder pulls the decode's tiles as it goes: two bars open together would be drawn one under the other
    and interleave in a terminal."""
    from tqdm.auto import tqdm

    import audioldm_tiled.vae.interpreter as interpreter
    import audioldm_tiled.vocoder as vocoder

    open_bars, opened = [], []

    class Recorded(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if not self.disable:
                open_bars.append(self)
                opened.append((self.desc, len(open_bars)))

        def close(self):
            if self in open_bars:
                open_bars.remove(self)
            super().close()

    monkeypatch.setattr(interpreter, "tqdm", Recorded)
    monkeypatch.setattr(vocoder, "tqdm", Recorded)
    tiny_pipe.set_progress_bar_config(disable=False)
    tiny_pipe("rain", audio_length_in_s=4.0, num_inference_steps=1, generator=torch.Generator().manual_seed(0),
              tiling=TilingConfig(enabled=True, tile_frames=16, vocoder_chunk_frames=64))
    assert opened and max(depth for _, depth in opened) == 1, opened


@pytest.mark.parametrize("eta, prediction", [(1.0, "v_prediction"), (0.0, "epsilon")])
def test_a_long_ddim_step_in_pieces_is_the_whole_step(eta, prediction, monkeypatch):
    """Past STEP_FRAMES the step runs on pieces of frames with its noise drawn once: bit for bit the whole step
    (pieces of 7 frames here, so that a piece's own noise draw or a misplaced piece would show)."""
    from diffusers import DDIMScheduler

    from audioldm_tiled import denoise

    scheduler = DDIMScheduler(prediction_type=prediction, beta_schedule="squaredcos_cap_v2")
    scheduler.set_timesteps(5)
    t = scheduler.timesteps[1]
    noise, latents = torch.randn(2, 2, 3, 40, 4, generator=torch.Generator().manual_seed(0))
    whole = scheduler.step(noise, t, latents, eta=eta, generator=torch.Generator().manual_seed(1)).prev_sample
    monkeypatch.setattr(denoise, "STEP_FRAMES", 7)
    calls, step = [], scheduler.step
    monkeypatch.setattr(scheduler, "step", lambda *a, **k: calls.append(a[0].shape[2]) or step(*a, **k))
    pieces = denoise.scheduler_step(scheduler, noise, t, latents, {"eta": eta,
                                                                    "generator": torch.Generator().manual_seed(1)})
    assert calls == [7] * 5 + [5] and torch.equal(pieces, whole)
    # written into the prediction itself, which each piece reads before it is overwritten
    prediction = noise.clone()
    reused = denoise.scheduler_step(scheduler, prediction, t, latents,
                                    {"eta": eta, "generator": torch.Generator().manual_seed(1)}, reuse_noise=True)
    assert reused.data_ptr() == prediction.data_ptr() and torch.equal(reused, whole)
