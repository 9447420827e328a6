"""AudioSR's components against the original package's modules: random weights put into the original
``LatentDiffusion``, its state dict converted by the project's converter, then the same inputs through both.

Tolerance: float32 through the same operations in another order (diffusers' attention is one fused kernel where
the original computes softmax(QK^T)V step by step; its GroupNorm and convolutions are the same calls), so the
difference is rounding: 1e-5 of the largest output value, about 100 float32 ulps after a few dozen layers, is far
below any error of layout (a swapped or missing weight moves the output by tens of percent).
"""

import math

import numpy as np
import pytest
import torch

from audioldm_tiled.audiosr.components import ARCHITECTURES, LATENT_CHANNELS, N_MELS, SAMPLE_RATE, build_components
from audioldm_tiled.audiosr.convert import convert_state_dict
from audiosr_original import latent_diffusion, original, original_batch
from conftest import relative_error

TINY = ARCHITECTURES["audiosr-tiny"]
TOLERANCE = 1e-5


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn anew (the original zero-initialises its output convolutions, which would make any
    comparison of those layers pass): weights scaled by their fan-in, so that activations stay of order one through
    the whole depth; norms' scales near one; biases small."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.dim() > 1:
                parameter.copy_(noise / math.sqrt(parameter[0].numel()))
            elif "norm" in name or name.endswith(("gamma", "g")):
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.1 * noise)
    return module


@pytest.fixture(scope="module")
def pair():
    """(the original LatentDiffusion with random weights, this project's components converted from it)."""
    model = _randomised(latent_diffusion(TINY), seed=1)
    model.scale_factor.fill_(0.37)
    # The conditioning VAE is configured as the first one and frozen; given its weights here (a differing one is
    # kept apart: test_a_differing_conditioning_encoder_is_kept_as_its_own_vae).
    model.cond_stage_models[0].vae.load_state_dict(model.first_stage_model.state_dict())
    return model, convert_state_dict(model.state_dict(), TINY)


def test_the_converted_components_have_the_original_parameter_counts(pair):
    model, ours = pair
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(ours["unet"]) == count(model.model.diffusion_model)
    assert count(ours["vae"]) == count(model.first_stage_model) - count(model.first_stage_model.vocoder)
    assert count(ours["vocoder"]) == count(model.first_stage_model.vocoder)
    assert ours["vae"].config.scaling_factor == pytest.approx(0.37)
    assert "condition_vae" not in ours


def test_a_differing_conditioning_encoder_is_kept_as_its_own_vae(pair):
    model, _ = pair
    state = dict(model.state_dict())
    key = "cond_stage_models.0.vae.encoder.conv_in.weight"
    state[key] = state[key] + 1
    converted = convert_state_dict(state, TINY)
    assert torch.equal(converted["condition_vae"].encoder.conv_in.weight, state[key])
    assert torch.equal(converted["vae"].encoder.conv_in.weight, state["first_stage_model.encoder.conv_in.weight"])


def test_the_vae_encodes_and_decodes_as_the_original(pair):
    model, ours = pair
    mel = torch.randn(2, 1, 64, N_MELS, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = model.first_stage_model.encode(mel)
        posterior = ours["vae"].encode(mel).latent_dist
        assert relative_error(posterior.mean, theirs.mean) < TOLERANCE
        assert relative_error(posterior.logvar, theirs.logvar) < TOLERANCE
        z = theirs.mean
        assert relative_error(ours["vae"].decode(z).sample, model.first_stage_model.decode(z)) < TOLERANCE


def test_one_unet_call_equals_the_original(pair):
    model, ours = pair
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2 * LATENT_CHANNELS, 16, N_MELS // 8, generator=g)
    t = torch.tensor([999, 321])
    with torch.no_grad():
        theirs = model.model.diffusion_model(x, t, context_list=[], context_attn_mask_list=[])
        mine = ours["unet"](x, t, encoder_hidden_states=None).sample
    assert theirs.abs().max() > 0.1 and relative_error(mine, theirs) < TOLERANCE


def test_the_vocoder_equals_the_original(pair):
    model, ours = pair
    mel = torch.randn(1, 40, N_MELS, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = model.first_stage_model.vocoder(mel.transpose(1, 2)).squeeze(1)
        mine = ours["vocoder"](mel)
    assert relative_error(mine.reshape(theirs.shape), theirs) < TOLERANCE


def test_a_checkpoint_of_another_layout_is_refused_by_name(pair):
    model, _ = pair
    state = dict(model.state_dict())
    state["model.diffusion_model.input_blocks.99.0.in_layers.0.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="not an AudioSR checkpoint of this layout"):
        convert_state_dict(state, TINY)
    del state["model.diffusion_model.input_blocks.99.0.in_layers.0.weight"]
    state["model.diffusion_model.out.2.bias"] = torch.zeros(5)
    with pytest.raises(ValueError, match="the checkpoint's unet does not fit AudioSR's layout: 0 missing .* 1 of "
                                         "another shape"):
        convert_state_dict(state, TINY)
    with pytest.raises(ValueError, match="not an AudioSR checkpoint of this layout"):
        convert_state_dict(model.state_dict(), ARCHITECTURES["audiosr"])  # another depth: modules it has not


def test_the_public_shapes_are_the_original_config_shapes():
    """The full-size components against the original modules built from the package's own config (shapes only)."""
    modules = original()
    config = modules["audiosr.utils"].get_basic_config()["model"]["params"]
    openaimodel = modules["audiosr.latent_diffusion.modules.diffusionmodules.openaimodel"]
    with torch.device("meta"):
        theirs = openaimodel.UNetModel(**config["unet_config"]["params"])
        mine = build_components("audiosr")
    shapes = lambda module: sorted(tuple(p.shape) for p in module.parameters())  # noqa: E731
    assert shapes(mine["unet"]) == shapes(theirs)
    hifigan, model = modules["audiosr.hifigan"], modules["audiosr.utilities.model"]
    public = getattr(model, "public_config_48k", model.get_vocoder_config_48k)  # tiny_config swaps the latter
    with torch.device("meta"):
        vocoder = hifigan.Generator_old(hifigan.AttrDict(public()))
        vocoder.remove_weight_norm()  # as the package does before loading a checkpoint
    assert sum(p.numel() for p in vocoder.parameters()) == sum(p.numel() for p in mine["vocoder"].parameters())


def _recording(seconds: float = 5.12, cutoff_hz: float = 11025.0) -> np.ndarray:
    """Noise band-limited at ``cutoff_hz`` with a tone in it, at 48 kHz: what the front end must find the top of."""
    from scipy import signal

    rng = np.random.default_rng(0)
    noise = rng.standard_normal(round(seconds * SAMPLE_RATE))
    noise = signal.sosfilt(signal.butter(12, cutoff_hz / 24000, output="sos"), noise)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(noise.shape[0]) / SAMPLE_RATE)
    return (0.2 * noise + tone + 0.05).astype(np.float32)


def test_the_front_end_equals_the_original():
    """Input preparation, magnitude and log-mel, cutoff and low-pass (each filter type), against the original's
    functions on a 48 kHz recording (the original resamples with torchaudio first; at 48 kHz that is nothing).
    Tolerance: the same float32 STFT and float64 filters; 1e-5 of the largest value for what passes through the
    mel's log, the cutoff bin exactly."""
    from audioldm_tiled.audiosr import front_end

    utils = original()["audiosr.utils"]
    recording = _recording(4.0)
    mine = front_end.prepared(recording)
    theirs = utils.pad_wav(utils.normalize_wav(recording)[None], round(5.12 * SAMPLE_RATE))
    np.testing.assert_allclose(mine, theirs[0], atol=1e-7)
    frames = 512
    their_mel, their_stft = utils.wav_feature_extraction(theirs, frames)
    magnitude, log_mel = front_end.magnitude_and_log_mel(torch.from_numpy(mine)[None])
    assert relative_error(log_mel[0], their_mel) < TOLERANCE and relative_error(magnitude[0], their_stft) < TOLERANCE
    assert front_end.cutoff_bin(magnitude[0]) == utils._locate_cutoff_freq(their_stft, percentile=0.985)
    assert 11025 < front_end.cutoff_hz(magnitude[0]) < 12500  # the band's top, within its filter's roll-off
    for seed in range(12):  # the original draws the type from NumPy's global generator after seeding it
        np.random.seed(seed)
        expected = utils.lowpass_filtering_prepare_inference(
            {"waveform": torch.from_numpy(theirs), "stft": their_stft, "sampling_rate": SAMPLE_RATE})
        kind = front_end.filter_type(seed)
        mine_low = front_end.low_passed(mine, front_end.cutoff_hz(magnitude[0]), kind)
        assert relative_error(torch.tensor(mine_low).float(), expected["waveform_lowpass"][0]) < TOLERANCE, kind
    assert {front_end.filter_type(seed) for seed in range(12)} == set(front_end.FILTER_TYPES)


def test_a_whole_super_resolution_equals_the_original(pair):
    """5.12 s (one window) through both with the same noise: the original draws, from torch's global generator, the
    input mel's posterior sample (which it uses only for its shape), the low-passed latent's sample, the initial
    latents, then each DDIM step's noise; the pipeline draws the same from its generator after the first. Four
    steps (a divisor of 1000: the original's DDIM then takes as many), guidance 3.5, eta 1."""
    from audioldm_tiled.audiosr.pipeline import AudioSRTiledPipeline

    model, ours = pair
    recording = _recording(5.12)
    torch.manual_seed(7)
    with torch.no_grad():
        theirs = model.generate_batch(original_batch(recording, seed=3), ddim_steps=4,
                                      unconditional_guidance_scale=3.5)
    pipe = AudioSRTiledPipeline(**{k: ours[k] for k in ("vae", "unet", "vocoder", "scheduler")})
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(7)
    torch.randn((1, LATENT_CHANNELS, 64, N_MELS // 8), generator=generator)  # the original's first, unused draw
    mine = pipe(recording, sampling_rate=SAMPLE_RATE, num_inference_steps=4, guidance_scale=3.5, seed=3,
                generator=generator).audios
    expected = torch.from_numpy(theirs[:, 0, : mine.shape[1]])
    assert mine.shape == (1, recording.shape[0]) and np.abs(mine).max() > 0.1
    # 2e-6 measured: float32 rounding through four UNet calls, the decode, the vocoder and two STFTs; 10x margin
    assert relative_error(torch.from_numpy(mine), expected) < 2e-5


def test_each_window_is_conditioned_on_its_own_frames():
    """The low-passed latent concatenated to the noisy latent's channels, cropped to each window as the noisy
    latent is (negative rows first when guided): a UNet that records its input sees, in every call, the windows'
    own frames of the conditioning."""
    from audioldm_tiled import TilingConfig
    from audioldm_tiled.conditioning import concatenated_frames
    from audioldm_tiled.denoise import plan_windows, predict_noise

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, sample, t, encoder_hidden_states=None, cross_attention_kwargs=None):
            seen.append(sample.clone())
            return type("Out", (), {"sample": sample[:, :2]})()

    latents = torch.randn(1, 2, 40, 4, generator=torch.Generator().manual_seed(0))
    frames = torch.stack([torch.full((1, 3, 40, 4), -1.0),
                          torch.arange(40.0).view(1, 1, 40, 1).expand(1, 3, 40, 4)])
    plan = plan_windows(40, TilingConfig(window_frames=16, window_overlap_frames=8))
    predict_noise(Recorder(), latents, torch.tensor(5), concatenated_frames(frames), 3.0, plan, batch_size=2)
    assert len(plan.windows) > 2 and sum(s.shape[0] for s in seen) == 2 * len(plan.windows)
    windows = iter(plan.windows)
    for call in seen:
        group = [next(windows) for _ in range(call.shape[0] // 2)]
        for j, w in enumerate(group):
            negative, positive = call[j], call[len(group) + j]
            assert torch.equal(negative[:2], latents[0, :, w.start:w.stop]) and (negative[2:] == -1).all()
            assert torch.equal(positive[2:, :, 0], torch.arange(w.start, w.stop, dtype=torch.float32).expand(3, -1))
