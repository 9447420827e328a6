"""Memory budget, peak estimates from shapes, and the tile sizes they imply.

An untiled VAE decode's (or encode's) peak is modelled as a measured factor times its widest activation (the
largest channels x frequency x time tensor it produces); the factors were measured, see their comments.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from fractions import Fraction

import torch

from .config import TilingConfig
from .tasks import Conv, Downsample, SaveResidual, Task, Upsample, receptive_halo

logger = logging.getLogger(__name__)

# Peak bytes of an untiled AudioLDM VAE decode (fp32, CPU) per latent frame, divided by the bytes per frame of its
# widest activation. Measured: `audioldm-tiled bench decode --seconds 10 40 120` (audioldm-s VAE, one process per
# point) gave peak RSS 1.775 GB at 40 s and 3.657 GB at 120 s: 0.94 MB more per latent frame, against 0.262 MB per
# frame for the widest activation (256 channels x 4 mel frames x 64 mel bins, float32): a factor of 3.59.
UNTILED_DECODE_PEAK_FACTOR = 3.6
# The same for the untiled encode, same method: `audioldm-tiled bench encode --seconds 10 40 120` gave peak RSS
# 1.350 GB at 40 s and 2.662 GB at 120 s: 164 kB more per mel frame, against 32.8 kB per mel frame for the widest
# activation (conv_in's 128 channels x 64 mel bins, float32): a factor of 5.01.
UNTILED_ENCODE_PEAK_FACTOR = 5.0
# What exact tiled decoding holds for the whole sequence (the stream and a resnet's residual, at most), per latent
# frame, divided by the widest activation's bytes per frame. Measured: `audioldm-tiled bench decode` (audioldm-s,
# docs/bench/decode-report.json) gave exact peak RSS 1.364, 2.158 and 3.944 GB at 40, 120 and 300 s: 0.397 MB more
# per latent frame over both steps, against 0.262 MB for the widest activation: a factor of 1.52.
EXACT_STORED_ACTIVATIONS = 1.5
# Only this share of the free memory is planned for: the allocator fragments, and other stages hold memory too.
BUDGET_SHARE = 0.8
MIN_TILE_FRAMES = 16
MAX_TILE_FRAMES = 256  # one training-length clip (10.24 s)


# glibc's malloc serves a freed block of up to 32 MB back from its heap instead of returning it to the system once it
# has seen one freed; chunk after chunk the heap then fragments and the peak RSS grows with the number of chunks
# (measured: chunked vocoder 0.93 GB at 10 s, 1.60 GB at 30 s). A fixed threshold keeps every large tensor in its own
# mapping, returned when freed: 0.87 GB at 30 s. M_MMAP_THRESHOLD is -3 in glibc's malloc.h.
_M_MMAP_THRESHOLD = -3
LARGE_ALLOCATION_BYTES = 4 << 20  # below every tile activation of the AudioLDM VAE and vocoder at default sizes


@functools.cache
def return_large_allocations_to_the_system() -> bool:
    """Make glibc map (and unmap) every allocation of 4 MB or more, so memory freed by one tile is not kept for the
    next. Process-wide and idempotent; a no-op (False) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES))
    except (OSError, AttributeError):
        return False


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


def widest_activation_per_frame(tasks: list[Task], batch: int, freq: int, dtype: torch.dtype) -> float:
    """Bytes per input frame of the largest activation (channels x frequency x time at one resolution) that the
    tasks (the encoder's or the decoder's) produce from an input with ``freq`` frequency rows."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    widest, scale = 0, Fraction(1)
    for task in tasks:
        if isinstance(task, (Conv, SaveResidual, Downsample)):
            module = task.shortcut if isinstance(task, SaveResidual) else task.module
            if module is not None:
                widest = max(widest, max(module.in_channels, module.out_channels) * freq * scale * scale)
        if isinstance(task, (Upsample, Downsample)):
            scale *= task.factor
    return float(widest * batch * itemsize)


def untiled_bytes(tasks: list[Task], x: torch.Tensor, peak_factor: float) -> int:
    """Estimated peak bytes of running ``tasks`` on ``x`` (B, C, T, F) untiled, beyond what the process holds."""
    return int(peak_factor * widest_activation_per_frame(tasks, x.shape[0], x.shape[3], x.dtype) * x.shape[2])


def untiled_fits(tasks: list[Task], x: torch.Tensor, config: TilingConfig,
                 peak_factor: float) -> tuple[bool, int, int]:
    """(fits, estimated bytes, budget bytes) for running ``tasks`` on ``x`` untiled."""
    budget = memory_budget(config, x.device)
    needed = untiled_bytes(tasks, x, peak_factor)
    return needed <= budget, needed, budget


class InsufficientMemoryError(MemoryError):
    """Raised before long work starts when what it must hold exceeds the memory budget."""


def exact_stored_bytes(tasks: list[Task], x: torch.Tensor) -> float:
    """Bytes that exact tiling of ``x`` holds for the whole sequence whatever its tile size (see
    EXACT_STORED_ACTIVATIONS): what grows with the length."""
    return EXACT_STORED_ACTIVATIONS * widest_activation_per_frame(tasks, x.shape[0], x.shape[3], x.dtype) * x.shape[2]


def choose_tile_frames(tasks: list[Task], x: torch.Tensor, config: TilingConfig, unit: int,
                       peak_factor: float) -> int:
    """The largest tile core in latent frames (``unit`` input frames each; at most MAX_TILE_FRAMES) whose working set
    fits the budget."""
    budget = memory_budget(config, x.device)
    per_frame = widest_activation_per_frame(tasks, x.shape[0], x.shape[3], x.dtype)
    stored = exact_stored_bytes(tasks, x) if config.mode == "exact" else 0
    halo = receptive_halo(tasks) if config.mode == "fast" else 2 * unit
    frames = int(((budget - stored) / (peak_factor * per_frame) - 2 * halo) / unit)
    if frames < MIN_TILE_FRAMES:
        logger.warning("memory budget %.2f GB is below what tiles of %d frames need; using them anyway",
                       budget / 1e9, MIN_TILE_FRAMES)
    return max(MIN_TILE_FRAMES, min(MAX_TILE_FRAMES, frames))


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocation failure on any device (CUDA OOM, or the CPU allocator's RuntimeError)."""
    if isinstance(error, torch.OutOfMemoryError):
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
