"""What devices other than the CPU ask of the code: no float64 where the activations live (Apple's MPS has none)."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

import audioldm_tiled.vae.groupnorm as groupnorm
import audioldm_tiled.vae.interpreter as interpreter
from audioldm_tiled import TilingConfig, tiled_decode, tiled_encode
from conftest import nonstationary_latents


class NoFloat64OnTheDevice(TorchDispatchMode):
    """Emulates a device without float64 on the CPU: tensors derived from the activations or the weights are "on the
    device"; an explicit copy to the CPU (``.to("cpu", copy=True)``, what a transfer from a device is) is on the host.
    An op that makes a float64 tensor from a device tensor is recorded as a violation."""

    def __init__(self, device_tensors):
        super().__init__()
        self.device = WeakIdKeyDictionary({t: True for t in device_tensors})
        self.violations = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        transfer = func is torch.ops.aten._to_copy.default and (kwargs or {}).get("device") == torch.device("cpu")
        if not transfer and any(t in self.device for t in inputs):
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    if t.dtype == torch.float64:
                        self.violations.append(str(func))
                    self.device[t] = True
        return out


def emulated_device(fn, *device_tensors) -> list[str]:
    """The violations of running ``fn`` with ``device_tensors`` on the emulated device."""
    mode = NoFloat64OnTheDevice(device_tensors)
    with mode:
        fn()
    return mode.violations


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_no_float64_on_the_device_in_decode_and_encode(tiny, mode):
    vae = tiny["vae"]
    z = nonstationary_latents(1, 96)
    mel = torch.randn(1, 1, 384, 64, generator=torch.Generator().manual_seed(0)) - 4
    weights = list(vae.parameters())
    config = TilingConfig(enabled=True, mode=mode, tile_frames=16, proxy_frames=32, show_progress=False)
    with torch.no_grad():
        assert emulated_device(lambda: tiled_decode(vae, z, config), z, *weights) == []
        assert emulated_device(lambda: tiled_encode(vae, mel, config), mel, *weights) == []


@pytest.mark.parametrize("module, name, float64_version", [
    (groupnorm, "to_host", lambda moment: moment.double()),  # moments widened where they were computed
    (interpreter, "all_finite", lambda x: math.isfinite(x.sum(dtype=torch.float64).item())),  # a float64 sum
])
def test_the_emulated_device_catches_float64_from_activations(tiny, monkeypatch, module, name, float64_version):
    """The check above can fail: each float64 step it guards against, put back, is caught."""
    monkeypatch.setattr(module, name, float64_version)
    z = nonstationary_latents(1, 64)
    config = TilingConfig(enabled=True, tile_frames=16, show_progress=False)
    with torch.no_grad():
        assert emulated_device(lambda: tiled_decode(tiny["vae"], z, config), z)
