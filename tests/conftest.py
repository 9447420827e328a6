import contextlib
import signal
import subprocess
from collections.abc import Iterator

import pytest
import torch

from audioldm_tiled.memory import OUT_OF_MEMORY
from audioldm_tiled.testing.architectures import build_components


@pytest.fixture(scope="session")
def tiny():
    """Seeded tiny components (real time geometry: hop 160, VAE factor 4, 64 mels, several GroupNorm groups)."""
    return build_components("tiny", seed=0)


@pytest.fixture()
def tiny_pipe(tiny):
    from audioldm_tiled import AudioLDMTiledPipeline

    pipe = AudioLDMTiledPipeline(**tiny)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: the unit every tolerance in these tests is stated in."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def nonstationary_latents(batch: int, frames: int, channels: int = 8, freq: int = 16, seed: int = 0) -> torch.Tensor:
    """A loud, shifted second half: tiles that normalised themselves would be visibly wrong."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, channels, frames, freq, generator=g)
    z[:, :, frames // 2 :] = z[:, :, frames // 2 :] * 3 + 1
    return z


def raise_cuda_out_of_memory(*args, **kwargs):
    """Stands in for an untiled decode or encode that runs out of memory on an accelerator."""
    raise OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 20.00 GiB")


# Exact tiling reorders float32 sums (pooled statistics, convolutions on slices): the measured error of the exact
# decode and encode is about 3e-6 of max |untiled|, while a wrong statistic (a tile normalised by itself) shows as
# more than 1e-2. 1e-4 sits between the two with a wide margin on each side.
EXACT_TOLERANCE = 1e-4
# Overlap-save vocoder chunks compute the same sums on the same samples; only float32 summation order can differ,
# measured ~3e-7 of max|waveform|. 1e-5 leaves a 30x margin, while a missing frame of context shows as > 1e-3.
CHUNKED_VOCODER_TOLERANCE = 1e-5
# Tiled against untiled in half precision, end to end (relative to the largest sample). Both run every convolution
# in the dtype and differ in summation order and in where GroupNorm rounds (the tiled one in float32). Measured on a
# 6 s render: float16 2.4e-2, bfloat16 5.4e-2 (unit roundoff 4.9e-4 and 3.9e-3; the random vocoder amplifies its
# input's rounding). A decode whose tiles normalise themselves is off by 0.69 of the largest value, 4.6x the
# bfloat16 bound.
HALF_PRECISION_TOLERANCE = {torch.float16: 0.05, torch.bfloat16: 0.15}


def snr_db(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Signal-to-error ratio of ``actual`` against ``expected`` in dB."""
    error = (actual.double() - expected.double()).pow(2).mean()
    return (10 * torch.log10(expected.double().pow(2).mean() / error)).item()


@contextlib.contextmanager
def child_process(args: list[str], **popen_kwargs) -> Iterator[subprocess.Popen]:
    """A command started for a test and ended with it, whatever happens in between (a --forever render left
    running writes 40 MB a minute). It starts with SIGINT at its default: a test run started in the background
    ignores SIGINT, and its children would inherit that and never see a test's Ctrl-C."""
    process = subprocess.Popen(args, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen_kwargs)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def _cpu_convolves(dtype: torch.dtype) -> bool:
    try:
        torch.nn.functional.conv2d(torch.zeros(1, 1, 2, 2, dtype=dtype), torch.zeros(1, 1, 1, 1, dtype=dtype))
        return True
    except RuntimeError:
        return False


# torch before 2.2 has no float16 convolution on the CPU, where the half-precision tests run their models.
CPU_HALF = _cpu_convolves(torch.float16)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """A test that needs float16 kernels on the CPU skips, saying why, on a torch that has none."""
    outcome = yield
    error = outcome.excinfo[1] if outcome.excinfo else None
    if not CPU_HALF and isinstance(error, RuntimeError) and "not implemented for 'Half'" in str(error):
        outcome.force_exception(pytest.skip.Exception(
            f"torch {torch.__version__} has no float16 kernels on the CPU: {error}", _use_item_location=True))
