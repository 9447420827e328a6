"""diffusers' callback conventions: num_timesteps, guidance_scale, do_classifier_free_guidance, interrupt, and
prompt_embeds changed by a step-end callback, in windowed denoising, streaming and with timelines."""

import pytest
import torch
from diffusers.callbacks import SDCFGCutoffCallback

from audioldm_tiled import TilingConfig
from audioldm_tiled.denoise import plan_windows

WINDOWED = TilingConfig(window_frames=64, window_overlap_frames=16, show_progress=False)
WINDOWS = len(plan_windows(100, WINDOWED).windows)  # 4 s is 100 latent frames; the UNet runs once per window and step


def _unet_batches(pipe, monkeypatch) -> list[int]:
    """The batch size of every UNet call: two rows per window with guidance, one without."""
    batches = []
    real = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda sample, *a, **k: (batches.append(sample.shape[0]),
                                                                        real(sample, *a, **k))[1])
    return batches


def _run(pipe, stream: bool, **kwargs):
    args = dict(audio_length_in_s=4, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                tiling=WINDOWED, output_type="latent", **kwargs)
    if stream:
        args.pop("output_type")
        return list(pipe.stream(**args))
    return pipe(**args).audios


@pytest.mark.parametrize("stream", [False, True])
def test_cfg_cutoff_turns_guidance_off_after_the_cutoff(tiny_pipe, monkeypatch, stream):
    batches = _unet_batches(tiny_pipe, monkeypatch)
    cutoff = SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1)
    _run(tiny_pipe, stream, prompt="rain", callback_on_step_end=cutoff)
    assert WINDOWS > 1
    # steps 0 and 1 guided (two rows per window); the callback runs after step 1, so steps 2 and 3 are not
    assert batches == [2] * (2 * WINDOWS) + [1] * (2 * WINDOWS)
    assert tiny_pipe.num_timesteps == 4 and tiny_pipe.guidance_scale == 0.0
    assert not tiny_pipe.do_classifier_free_guidance


def test_cfg_cutoff_with_a_single_prompt_timeline(tiny_pipe, monkeypatch):
    batches = _unet_batches(tiny_pipe, monkeypatch)
    _run(tiny_pipe, False, prompt=[(0, "rain")], callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.25))
    assert batches == [2] * (2 * WINDOWS) + [1] * (2 * WINDOWS)


def test_guidance_scale_changed_by_a_callback_reaches_the_next_steps(tiny_pipe):
    def lower(pipe, step, timestep, kwargs):
        if step == 1:
            pipe._guidance_scale = 1.5
        return kwargs

    changed = _run(tiny_pipe, False, prompt="rain", guidance_scale=3.0, callback_on_step_end=lower)
    constant = _run(tiny_pipe, False, prompt="rain", guidance_scale=3.0)
    assert not torch.equal(changed, constant)  # the later steps used 1.5

    def increase(pipe, step, timestep, kwargs):  # diffusers' own test of the convention
        pipe._guidance_scale += 1.0
        return kwargs

    _run(tiny_pipe, False, prompt="rain", guidance_scale=2.0, callback_on_step_end=increase)
    assert tiny_pipe.guidance_scale == 2.0 + tiny_pipe.num_timesteps


def test_prompt_embeds_returned_by_a_callback_are_used(tiny_pipe):
    seen = []

    def swap(pipe, step, timestep, kwargs):
        seen.append(kwargs["prompt_embeds"].shape)
        return {"prompt_embeds": kwargs["prompt_embeds"].flip(0)} if step == 0 else kwargs  # conditional first

    swapped = _run(tiny_pipe, False, prompt="rain", callback_on_step_end=swap,
                   callback_on_step_end_tensor_inputs=["prompt_embeds"])
    assert seen[0] == (2, tiny_pipe.text_encoder.config.projection_dim)
    assert not torch.equal(swapped, _run(tiny_pipe, False, prompt="rain"))


def test_interrupt_stops_after_the_current_step(tiny_pipe, monkeypatch):
    batches = _unet_batches(tiny_pipe, monkeypatch)

    def stop(pipe, step, timestep, kwargs):
        if step == 1:
            pipe._interrupt = True
        return kwargs

    _run(tiny_pipe, True, prompt="rain", callback_on_step_end=stop)
    assert len(batches) == 2 * WINDOWS  # steps 0 and 1
    assert tiny_pipe.interrupt


def test_guidance_raised_without_negatives_is_refused(tiny_pipe):
    def raise_guidance(pipe, step, timestep, kwargs):
        pipe._guidance_scale = 3.0
        return kwargs

    with pytest.raises(ValueError, match="needs negative embeddings"):
        _run(tiny_pipe, False, prompt="rain", guidance_scale=1.0, callback_on_step_end=raise_guidance)
