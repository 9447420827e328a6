"""Model offload: the tiled stages fire the offload hooks that a module's forward would, and read offloaded weights
only through accelerate, so offload on and off give the same audio."""

from contextlib import nullcontext

import pytest
import torch

accelerate = pytest.importorskip("accelerate")
from accelerate import cpu_offload  # noqa: E402
from accelerate.hooks import CpuOffload  # noqa: E402

import audioldm_tiled.vae.groupnorm as groupnorm  # noqa: E402
import audioldm_tiled.vocoder as vocoder_module  # noqa: E402
from audioldm_tiled import AudioLDMTiledPipeline, TilingConfig, chunked_vocode, tiled_decode, tiled_encode  # noqa: E402
from audioldm_tiled.testing.architectures import build_components  # noqa: E402
from conftest import nonstationary_latents  # noqa: E402

TILED = dict(enabled=True, tile_frames=16, proxy_frames=32, vocoder_chunk_frames=64, window_frames=64,
             window_overlap_frames=16, show_progress=False)


def _stages(vae, vocoder, mode: str):
    z = nonstationary_latents(1, 80)
    mel = torch.randn(1, 400, 64, generator=torch.Generator().manual_seed(1)) - 4
    config = TilingConfig(mode=mode, **TILED)
    with torch.no_grad():
        return tiled_decode(vae, z, config), tiled_encode(vae, mel[None], config).mean, chunked_vocode(vocoder, mel,
                                                                                                        config)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_weights_offloaded_to_meta_give_the_same_output(mode):
    """Sequential offload's layout: every weight on "meta", loaded from a weights map for each forward."""
    expected = _stages(*(build_components("tiny")[k] for k in ("vae", "vocoder")), mode)
    components = build_components("tiny")
    for name in ("vae", "vocoder"):
        cpu_offload(components[name], execution_device="cpu")
    assert components["vae"].decoder.conv_in.weight.device.type == "meta"
    for actual, reference in zip(_stages(components["vae"], components["vocoder"], mode), expected):
        assert torch.equal(actual, reference)


def test_reading_offloaded_weights_directly_fails(monkeypatch):
    """The test above can fail: without ``weights_on_device`` the GroupNorm and the vocoder read "meta" weights."""
    monkeypatch.setattr(groupnorm, "weights_on_device", lambda module: nullcontext())
    monkeypatch.setattr(vocoder_module, "weights_on_device", lambda module: nullcontext())
    components = build_components("tiny")
    for name in ("vae", "vocoder"):
        cpu_offload(components[name], execution_device="cpu")
    with pytest.raises((RuntimeError, NotImplementedError)):
        _stages(components["vae"], components["vocoder"], "exact")


def _render(pipe: AudioLDMTiledPipeline, **kwargs):
    args = dict(num_inference_steps=2, generator=torch.Generator().manual_seed(0), tiling=TilingConfig(**TILED))
    call = pipe("rain", audio_length_in_s=6, **args, **kwargs).audios
    streamed = torch.cat([torch.from_numpy(p) for p in pipe.stream("rain", audio_length_in_s=6, **args)], dim=1)
    restyled = pipe("wind", audio=torch.sin(torch.arange(48000) / 20).numpy(), strength=0.5, **args).audios
    return call, streamed.numpy(), restyled


def test_model_offload_fires_each_stages_hook_and_gives_the_same_audio(tiny, monkeypatch):
    expected = _render(AudioLDMTiledPipeline(**build_components("tiny")))
    pipe = AudioLDMTiledPipeline(**build_components("tiny"))
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_model_cpu_offload(device="cpu")
    fired = []
    real_pre_forward = CpuOffload.pre_forward

    def spy(self, module, *args, **kwargs):
        fired.append(type(module).__name__)
        return real_pre_forward(self, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", spy)
    freed = []
    real_free = pipe.maybe_free_model_hooks
    monkeypatch.setattr(pipe, "maybe_free_model_hooks", lambda: (freed.append(1), real_free()))
    for actual, reference in zip(_render(pipe), expected):
        assert torch.equal(torch.from_numpy(actual), torch.from_numpy(reference))
    # Tiled decode, tiled encode and the channels-last vocoder never call the modules' forward: every one of these
    # firings is a stage's own. The vocoder's fires once per chunk: 600 mel frames in 64-frame chunks for the call
    # and the stream (10 each), 300 for the 3 s input (5). The VAE's before each tile it yields: 10 tiles of 150
    # latent frames for the call and the stream, 5 tiles each way for the input's encode and decode.
    assert fired.count("SpeechT5HifiGan") == 10 + 10 + 5
    assert fired.count("AutoencoderKL") >= 10 + 10 + 5 + 5
    assert len(freed) == 3  # every call and stream offloads at its end
