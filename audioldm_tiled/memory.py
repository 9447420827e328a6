"""How much memory a stage may plan for: the device's free memory under every limit that binds the process, the
out-of-memory errors a fallback may catch, and glibc's allocation threshold while tiles come and go.

The VAE's own peak models are in ``vae.budget``; the vocoder's and the UNet's sit beside their planners.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator

import torch

from .config import TilingConfig

logger = logging.getLogger(__name__)

# Only this share of the free memory is planned for: the allocator fragments, and other stages hold memory too.
BUDGET_SHARE = 0.8


# glibc's malloc serves a freed block of up to 32 MB back from its heap instead of returning it to the system once it
# has seen one freed; chunk after chunk the heap then fragments and the peak RSS grows with the number of chunks
# (measured: chunked vocoder 0.93 GB at 10 s, 1.60 GB at 30 s). A fixed threshold keeps every large tensor in its own
# mapping, returned when freed: 0.87 GB at 30 s. M_MMAP_THRESHOLD is -3 in glibc's malloc.h.
_M_MMAP_THRESHOLD = -3
GLIBC_DEFAULT_MMAP_THRESHOLD = 128 * 1024  # glibc's starting threshold (DEFAULT_MMAP_THRESHOLD_MIN)
LARGE_ALLOCATION_BYTES = 4 << 20  # below every tile activation of the AudioLDM VAE and vocoder at default sizes
_large_allocation_scopes = 0
_scopes_lock = threading.Lock()


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None where the C library is another one."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return None


def _threshold_outside_scopes() -> int:
    """The threshold this process runs with otherwise: glibc's environment setting, else its default."""
    try:
        return int(os.environ.get("MALLOC_MMAP_THRESHOLD_", GLIBC_DEFAULT_MMAP_THRESHOLD))
    except ValueError:
        return GLIBC_DEFAULT_MMAP_THRESHOLD


@contextlib.contextmanager
def large_allocations_returned() -> Iterator[bool]:
    """Within the block, glibc maps every allocation of ``LARGE_ALLOCATION_BYTES`` or more on its own and unmaps it
    when freed, so memory freed by one tile is not kept for the next; yields whether that took effect (False where
    the C library is not glibc).

    Blocks may nest and interleave (a streamed decode feeding a streamed vocoder); when the last one ends the
    threshold goes back to ``MALLOC_MMAP_THRESHOLD_`` if set, else glibc's default of 128 kB. glibc then keeps that
    value fixed: mallopt cannot give back its sliding threshold, which only ever rose from that default.
    """
    global _large_allocation_scopes
    mallopt = _mallopt()
    with _scopes_lock:
        _large_allocation_scopes += 1
        active = mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES))
    try:
        yield active
    finally:
        with _scopes_lock:
            _large_allocation_scopes -= 1
            if _large_allocation_scopes == 0 and mallopt is not None:
                mallopt(_M_MMAP_THRESHOLD, _threshold_outside_scopes())


def available_memory(device: torch.device | str | None = None) -> int:
    """Free bytes on ``device``: on CUDA ``torch.cuda.mem_get_info`` within the process's memory fraction; on the
    host the least of MemAvailable and the headroom under the process's memory cgroups and rlimits (see
    ``host_limits_headroom``)."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        allocated = torch.cuda.memory_allocated(device)
        free = free + torch.cuda.memory_reserved(device) - allocated
        # A cap from torch.cuda.set_per_process_memory_fraction binds the caching allocator before the device does
        # (torch 2.8 and later can tell it).
        get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
        if get_fraction is not None:
            free = min(free, int(get_fraction(device) * total) - allocated)
        return int(max(0, free))
    free = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if free is None:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min([free, *host_limits_headroom()])


def host_limits_headroom(cgroup_root: str = "/sys/fs/cgroup", proc_self: str = "/proc/self") -> list[int]:
    """Bytes this process may still take under each limit that binds it beyond the machine's free memory.

    A container's or a batch job's (Slurm's) memory cgroup: MemAvailable still shows the whole machine, and a
    process that passes the cgroup's limit is killed, with no out-of-memory error left to catch. Every enclosing
    cgroup's limit applies; headroom is limit - usage + inactive page cache (reclaimed before anything is killed).
    And ``ulimit -v`` / ``-d`` (RLIMIT_AS, RLIMIT_DATA): passing those fails the allocation instead, which the
    fallback could catch, but planning under them avoids the wasted untiled attempt."""
    headrooms = []
    try:
        with open(os.path.join(proc_self, "cgroup")) as f:
            memberships = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        memberships = []
    for _, controllers, path in memberships:
        if controllers == "":  # the unified (v2) hierarchy
            base, files = cgroup_root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, files = os.path.join(cgroup_root, "memory"), (
                "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        # Without a cgroup namespace the path may not exist under this mount; its root is then the process's own.
        parts = [part for part in path.split("/") if part]
        for depth in range(len(parts), -1, -1):
            headroom = _cgroup_headroom(os.path.join(base, *parts[:depth]), *files)
            if headroom is not None:
                headrooms.append(headroom)
    try:
        import resource

        sizes = process_sizes(proc_self)
        for limit, used in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
            soft, _ = resource.getrlimit(limit)
            if soft != resource.RLIM_INFINITY and used in sizes:
                headrooms.append(max(0, soft - sizes[used]))
    except ImportError:  # no rlimits off Unix
        pass
    return headrooms


def process_sizes(proc: str = "/proc/self") -> dict[str, int]:
    """The Vm* lines of a process's status file (VmRSS, VmData, VmSize ...) in bytes; empty where it can't be read."""
    try:
        with open(os.path.join(proc, "status")) as f:
            return {key: int(value.split()[0]) * 1024 for key, value in (line.split(":", 1) for line in f)
                    if key.startswith("Vm")}
    except (OSError, ValueError):
        return {}


# cgroup v1 writes "no limit" as 2**63 - 1 rounded down to a page; anything this large is no limit.
_CGROUP_UNLIMITED = 1 << 60


def _cgroup_headroom(directory: str, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    """limit - usage + inactive file cache of one cgroup directory; None where it sets no limit or can't be read."""
    try:
        with open(os.path.join(directory, limit_file)) as f:
            limit = f.read().strip()
        if limit == "max" or int(limit) >= _CGROUP_UNLIMITED:
            return None
        with open(os.path.join(directory, usage_file)) as f:
            usage = int(f.read())
    except (OSError, ValueError):
        return None
    inactive = 0
    try:
        with open(os.path.join(directory, "memory.stat")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
    except (OSError, ValueError):
        pass  # without it the headroom is only underestimated
    return max(0, int(limit) - usage + inactive)


def memory_budget(config: TilingConfig, device: torch.device | str | None) -> int:
    return config.memory_budget if config.memory_budget is not None else int(BUDGET_SHARE * available_memory(device))


# An accelerator's allocation failure: torch.OutOfMemoryError from torch 2.4 on, torch.cuda's name before it.
OUT_OF_MEMORY: type[Exception] = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


class InsufficientMemoryError(MemoryError):
    """Raised before long work starts when what it must hold exceeds the memory budget."""


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocation failure on any device (CUDA OOM, or the CPU allocator's RuntimeError)."""
    if isinstance(error, OUT_OF_MEMORY):
        return True
    return isinstance(error, RuntimeError) and (
        "out of memory" in str(error).lower() or "can't allocate memory" in str(error).lower()
    )


def release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# Extra peak bytes of one more window in a UNet call, per byte of that window's model input (both guidance rows).
# Measured: `audioldm-tiled bench windows --seconds 60` (audioldm-s UNet, fp32, guided, 256-frame windows, 2 steps)
# gave peak RSS 2.308 GB at 1 window per call and 2.855 GB at 4: 0.182 GB per window, against 2 x 8 x 256 x 16 x 4 B
# = 262 kB of input per window: a factor of 696, rounded to 700. It scales the input linearly; the UNet's
# self-attention grows with the square of the window, so windows much longer than 256 frames are under-estimated.
UNET_WINDOW_PEAK_FACTOR = 700
# On CPU the same run took 37.3 s at 1 window per call, 42.5 s at 2 and 39.9 s at 4: the cores are busy at one.


def choose_window_batch_size(latents: torch.Tensor, windows: int, window_frames: int, guided: bool,
                             config: TilingConfig) -> int:
    """Windows per UNet call: 1 on CPU (batching was slower there, see above); on an accelerator as many as the
    memory budget holds, at most ``windows``."""
    if latents.device.type == "cpu" or windows <= 1:
        return 1
    rows = 2 if guided else 1
    window_bytes = rows * latents[:, :, :window_frames].numel() * latents.element_size()
    fit = memory_budget(config, latents.device) // (UNET_WINDOW_PEAK_FACTOR * window_bytes)
    return int(max(1, min(windows, fit)))
