"""One render across the ranks of a ``torch.distributed`` process group.

Every rank holds the whole latent and the same generator. At each denoising step a rank runs its contiguous share
of the windows, adds their weighted noise predictions into a zero buffer, and one ``all_reduce`` sums the buffers;
every rank then takes the same scheduler step. The merge weights are at most two per frame (the overlap is at most
half a window), and a sum of two terms does not depend on their order, so the result is bit for bit the
single-process merge, whatever the rank count.

Every rank finishes or every rank fails. Each collective below starts with an agreement, one small all_reduce
in which every rank says whether it has failed (``agree``); a rank that fails anywhere between two collectives
reports its error in that agreement instead (``guarded``, around each render), so that every rank raises
``RankFailed`` with its message at its next collective instead of waiting forever on one the failed rank never
reaches. A render ends with one more agreement, so no rank leaves with success while another fails.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from .errors import RankFailed
from .geometry import join_frames

T = TypeVar("T")

# How long a rank waits in a collective for the others (init_process_group's timeout).
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


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

    def owners(self, count: int) -> list[int]:
        """The rank that holds each of ``count`` items under ``share``."""
        return [r for r in range(self.world) for _ in Ranks(r, self.world).share(count)]

    def peer(self, rank: int) -> int:
        """The global rank of this group's ``rank``: what point-to-point calls and broadcasts take."""
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def device(self) -> torch.device:
        """Where this group's collectives take their tensors: the current CUDA device for NCCL, else the CPU."""
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def check_ranks_argument(asked: object) -> None:
    """``ranks`` is None, "auto" or a ProcessGroup; else a ValueError saying so."""
    if not (asked is None or asked == "auto" or (dist.is_available() and isinstance(asked, dist.ProcessGroup))):
        raise ValueError(f"`ranks` must be None (this process alone), 'auto' (share the render over the default "
                         f"process group's ranks) or a torch.distributed ProcessGroup, got {asked!r}")


def ranks_for(asked: object) -> Ranks | None:
    """The ranks a render is shared over, from what the caller asked (``Request.ranks``): None (the default) is
    this process alone, whatever process group exists (each rank of a data-parallel job renders its own prompts);
    ``"auto"`` is the default process group when one is initialised with more than one rank; a ``ProcessGroup``
    is that group."""
    check_ranks_argument(asked)
    if asked is None:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = None if asked == "auto" else asked
    world = dist.get_world_size(group)
    return Ranks(dist.get_rank(group), world, group) if world > 1 else None


class ArgumentsDiffer(RankFailed, ValueError):
    """The ranks sharing one render were called with different arguments; every rank raises it."""


def agree_on(ranks: Ranks, fingerprint: str, what: str) -> None:
    """Every rank holds the same ``fingerprint`` of ``what``, or every rank raises the same ArgumentsDiffer (a
    ValueError) naming the ranks that differ from rank 0 (one all_gather of a short string)."""
    prints = gather_objects(ranks, fingerprint)
    differ = [rank for rank, value in enumerate(prints) if value != prints[0]]
    if differ:
        raise ArgumentsDiffer(f"one render shared over {ranks.world} ranks needs the same arguments on every rank, but "
                         f"{what} on rank(s) {', '.join(map(str, differ))} differ from rank 0's. To render different "
                         "prompts on each rank, leave `ranks` out: each process then renders alone.")


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
    return ranks_for("auto")


def together(ranks: Ranks | None, work: Callable[[], T]) -> T:
    """``work()`` on every rank; when it raises on any rank, every rank raises RankFailed naming the first failing
    rank and its error. Without ranks, just ``work()``."""
    if ranks is None:
        return work()
    error: BaseException | None = None
    result = None
    try:
        result = work()
    except RankFailed:
        raise  # agreed on already, inside the work
    except Exception as caught:  # noqa: BLE001 - reported to every rank below, then raised here too
        error = caught
    agree(ranks, error)
    return result


@contextlib.contextmanager
def guarded(ranks: Ranks | None) -> Iterator[None]:
    """Around a rank's part of one render: an error raised in it is reported to the other ranks at their next
    agreement, and every rank raises RankFailed; on success the ranks agree once more at the end, so that none
    returns while another fails."""
    if ranks is None:
        yield
        return
    try:
        yield
    except RankFailed:
        raise
    except Exception as error:  # noqa: BLE001 - every rank learns of it in agree(), which raises RankFailed
        agree(ranks, error)
        raise
    agree(ranks, None)


def guarded_pieces(ranks: Ranks | None, pieces: Iterator[T]) -> Iterator[T]:
    """``pieces`` under ``guarded``: every rank must iterate them to the end."""
    with guarded(ranks):
        yield from pieces


def agree(ranks: Ranks, error: BaseException | None) -> None:
    """Every rank says whether its work failed (one small all_reduce); if any did, every rank raises RankFailed
    with the first failing rank's message, chained to its own error where it has one."""
    failed = torch.tensor([0 if error is None else 1], device=ranks.device())
    dist.all_reduce(failed, group=ranks.group)
    if failed.item():
        messages: list[str | None] = [None] * ranks.world
        dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}",
                               group=ranks.group)
        first = next(r for r, message in enumerate(messages) if message is not None)
        raise RankFailed(f"rank {first} of {ranks.world} failed: {messages[first]}") from error


def gather_objects(ranks: Ranks, value: T) -> list[T]:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
    agree(ranks, None)
    values: list = [None] * ranks.world
    dist.all_gather_object(values, value, group=ranks.group)
    return values


def smallest(ranks: Ranks | None, value: int) -> int:
    """The smallest of every rank's ``value``: one decision for all ranks (a window batch from the smallest
    budget)."""
    if ranks is None:
        return value
    agree(ranks, None)
    tensor = torch.tensor([value], dtype=torch.int64, device=ranks.device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=ranks.group)
    return int(tensor.item())


def sum_over_ranks(ranks: Ranks, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place (moved to the group's device and back where they differ)."""
    agree(ranks, None)
    device = ranks.device()
    if tensor.device == device:
        dist.all_reduce(tensor, group=ranks.group)
        return tensor
    moved = tensor.to(device)
    dist.all_reduce(moved, group=ranks.group)
    tensor.copy_(moved)
    return tensor


Span = tuple[int, int]


def exchange_frames(ranks: Ranks, read: Callable[[int, int], torch.Tensor], owned: list[Span], needed: list[Span],
                    shape: tuple[int, ...], dtype: torch.dtype, dim: int = 2) -> list[tuple[int, torch.Tensor]]:
    """Frames along ``dim`` that this rank needs and another rank holds, by point-to-point exchange.

    Rank r holds frames ``owned[r]`` (``read(lo, hi)`` gives frames [lo, hi) of them) and needs ``needed[r]``;
    every rank knows both lists. Each rank sends every other rank the part of its own frames that rank needs, in one
    ``batch_isend_irecv``, and returns what it received as (first frame, tensor) pairs in time order; the part of
    ``needed`` it holds itself is not copied. ``shape`` is the tensors' shape with any length along ``dim``.
    """
    me = ranks.rank
    device = ranks.device()
    # What this rank sends is read first: a read that fails is agreed on before any rank waits for a message.
    sends = together(ranks, lambda: {
        other: read(*span).to(device=device, dtype=dtype).contiguous() for other in range(ranks.world)
        if other != me and (span := (max(owned[me][0], needed[other][0]), min(owned[me][1], needed[other][1])))[0]
        < span[1]})
    ops, received = [], []
    for other in range(ranks.world):
        if other == me:
            continue
        if other in sends:
            ops.append(dist.P2POp(dist.isend, sends[other], ranks.peer(other), group=ranks.group))
        lo, hi = max(owned[other][0], needed[me][0]), min(owned[other][1], needed[me][1])
        if lo < hi:
            size = list(shape)
            size[dim] = hi - lo
            buffer = torch.empty(size, dtype=dtype, device=device)
            ops.append(dist.P2POp(dist.irecv, buffer, ranks.peer(other), group=ranks.group))
            received.append((lo, buffer))
    for request in dist.batch_isend_irecv(ops) if ops else []:
        request.wait()
    return sorted(received, key=lambda item: item[0])


def in_rank_order(ranks: Ranks, pieces: Iterator[torch.Tensor], root: int | None = 0,
                  dim: int = -1) -> Iterator[torch.Tensor]:
    """The ranks' pieces in rank order, each rank's concatenated along ``dim`` (the same rank count and every
    dimension but ``dim`` alike): on ``root``, its own pieces as they are made, then each other rank's block as it
    arrives, and nothing on the other ranks; with ``root=None`` every rank gets every block.

    Making the pieces is shared work: a rank whose pieces fail makes every rank raise RankFailed (on the root after
    its own pieces, so what it streamed out is discarded by its consumer)."""
    if root == ranks.rank:
        error = None
        try:
            yield from pieces
        except RankFailed:
            raise
        except Exception as caught:  # noqa: BLE001 - every rank learns of it in agree()
            error = caught
        agree(ranks, error)
        for other in range(ranks.world):
            if other != root:
                block = _receive(ranks, other)
                if block is not None:
                    yield block
        return
    block = together(ranks, lambda: join_frames(list(pieces), dim))
    if root is not None:
        _send(ranks, block, root)
        return
    for owner in range(ranks.world):
        shared = broadcast_tensor(ranks, block if owner == ranks.rank else None, owner)
        if shared is not None:
            yield shared


def _header(block: torch.Tensor | None) -> list:
    return [] if block is None else [block.dtype, *block.shape]


def _send(ranks: Ranks, block: torch.Tensor | None, to: int) -> None:
    dist.send_object_list([_header(block)], dst=ranks.peer(to), group=ranks.group)
    if block is not None:
        dist.send(block.to(ranks.device()).contiguous(), dst=ranks.peer(to), group=ranks.group)


def _receive(ranks: Ranks, source: int) -> torch.Tensor | None:
    header = [None]
    dist.recv_object_list(header, src=ranks.peer(source), group=ranks.group)
    if not header[0]:
        return None
    dtype, *shape = header[0]
    block = torch.empty(shape, dtype=dtype, device=ranks.device())
    dist.recv(block, src=ranks.peer(source), group=ranks.group)
    return block


def broadcast_tensor(ranks: Ranks, block: torch.Tensor | None, owner: int) -> torch.Tensor | None:
    """``owner``'s tensor (or None) on every rank; the others need not know its shape or dtype."""
    agree(ranks, None)
    header = [_header(block)]
    dist.broadcast_object_list(header, src=ranks.peer(owner), group=ranks.group)
    if not header[0]:
        return None
    dtype, *shape = header[0]
    tensor = block.to(ranks.device()).contiguous() if owner == ranks.rank else \
        torch.empty(shape, dtype=dtype, device=ranks.device())
    dist.broadcast(tensor, src=ranks.peer(owner), group=ranks.group)
    return tensor
