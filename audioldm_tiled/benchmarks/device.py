"""The device a benchmark measures on: where a point runs (``Target``), timing that waits for its queued work, and
peak memory (the device's on CUDA, the process's resident memory on the CPU); and the SNR that compares two
outputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..constants import DTYPES


@dataclass(frozen=True)
class Target:
    """Where a point runs: device, dtype name (a key of DTYPES) and, for the auto/fallback decode variants, the
    allocator cap in bytes (see ``cap_allocator``); and the random architecture the whole-pipeline stages
    (generate, windows, stream) build."""

    device: str = "cpu"
    dtype_name: str = "fp32"
    memory_limit: int | None = None
    model: str = "audioldm-s"

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, DTYPES[self.dtype_name])

    def elapsed(self, start: float) -> float:
        """Seconds since ``start``, after the device has finished its queued work."""
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start


class Device:
    """Timing and peak memory on the device the checks run on (the process's peak RSS on the CPU)."""

    def __init__(self, name: str):
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"

    def name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.cuda else "cpu"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def timed(self, fn: Callable[[], object]) -> tuple[object, float]:
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - start


def snr_db(actual: torch.Tensor, reference: torch.Tensor) -> float:
    actual, reference = actual.double().cpu(), reference.double().cpu()
    error = (actual - reference).pow(2).mean()
    return float("inf") if error == 0 else float(10 * torch.log10(reference.pow(2).mean() / error))
