"""One render across the ranks of a ``torch.distributed`` process group.

Every rank holds the whole latent and the same generator. At each denoising step a rank runs its contiguous share
of the windows, adds their weighted noise predictions into a zero buffer, and one ``all_reduce`` sums the buffers;
every rank then takes the same scheduler step. The merge weights are at most two per frame (the overlap is at most
half a window), and a sum of two terms does not depend on their order, so the result is bit for bit the
single-process merge, whatever the rank count.

Work that can fail on one rank runs inside ``together``: the ranks then agree, in one small collective, whether all
succeeded, and if one failed every rank raises ``RankFailed`` with that rank's message instead of waiting forever
on a collective the failed rank never reaches.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# How long a rank waits in a collective for the others (init_process_group's timeout).
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


class RankFailed(RuntimeError):
    """A rank failed; every rank raises this with the same message (the failing rank chains its own error)."""


@dataclass(frozen=True)
class Ranks:
    """This process's rank among ``world`` ranks of ``group`` (None: the default group)."""

    rank: int
    world: int
    group: object | None = None

    def share(self, count: int) -> range:
        """This rank's contiguous share of ``count`` items; the first ``count % world`` ranks take one more."""
        base, extra = divmod(count, self.world)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def device(self) -> torch.device:
        """Where this group's collectives take their tensors: the current CUDA device for NCCL, else the CPU."""
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def current_ranks() -> Ranks | None:
    """The default process group when one is initialised with more than one rank, else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Ranks(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index becomes this rank's GPU on its node (LOCAL_RANK, else SLURM_LOCALID), made current
    for NCCL; any other device is returned as it is."""
    device = torch.device(device)
    if device.type != "cuda" or device.index is not None:
        return device
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    device = torch.device("cuda", local % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def init_from_environment(device: torch.device, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> Ranks | None:
    """Join the process group that ``torchrun`` (or ``srun`` with MASTER_ADDR/MASTER_PORT set) describes, with
    NCCL on CUDA and gloo elsewhere; None when WORLD_SIZE is absent or 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timeout)
    return current_ranks()


def together(ranks: Ranks | None, work: Callable[[], T]) -> T:
    """``work()`` on every rank; when it raises on any rank, every rank raises RankFailed naming the first failing
    rank and its error. Without ranks, just ``work()``."""
    if ranks is None:
        return work()
    error: BaseException | None = None
    try:
        result = work()
    except Exception as caught:  # noqa: BLE001 - reported to every rank below, then raised here too
        error = caught
    failed = torch.tensor([0 if error is None else 1], device=ranks.device())
    dist.all_reduce(failed, group=ranks.group)
    if failed.item():
        messages: list[str | None] = [None] * ranks.world
        dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}",
                               group=ranks.group)
        first = next(r for r, message in enumerate(messages) if message is not None)
        raise RankFailed(f"rank {first} of {ranks.world} failed: {messages[first]}") from error
    return result


def smallest(ranks: Ranks | None, value: int) -> int:
    """The smallest of every rank's ``value``: one decision for all ranks (a window batch from the smallest
    budget)."""
    if ranks is None:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=ranks.device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=ranks.group)
    return int(tensor.item())


def sum_over_ranks(ranks: Ranks, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place (moved to the group's device and back where they differ)."""
    device = ranks.device()
    if tensor.device == device:
        dist.all_reduce(tensor, group=ranks.group)
        return tensor
    moved = tensor.to(device)
    dist.all_reduce(moved, group=ranks.group)
    tensor.copy_(moved)
    return tensor
