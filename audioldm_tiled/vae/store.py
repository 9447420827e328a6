"""Where exact mode keeps the activations it must hold for the whole sequence between two barriers.

Exact tiling pauses every tile at each GroupNorm, so it holds one activation of the whole sequence (and a resnet's
residual) at once: about 1.5 times the widest activation, 9.8 MB per second of audio in float32. A store decides
where those paused tiles live:

- ``device``: on the compute device, as views of the tiles' outputs (fastest; memory grows with the length);
- ``host``: in host memory (pinned for CUDA), moved to the device tile by tile;
- ``disk``: in anonymous temporary files, written and read with explicit ``pwrite``/``preadv`` of each tile's frames,
  so no page of them is ever mapped into the process (a memory mapping's resident pages would count in RSS and in
  a cgroup's usage). The files are unlinked as they are created: the kernel frees them when the store closes,
  when the process fails, and even when it is killed.

Off the device, a tensor is kept time-major (its time axis, dim 2, first), so any run of frames is one contiguous
range of bytes. The tensor put last also stays on the device until the next put: the executors alternate the tile
order at every barrier, so the tile at each turn is read back from there.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import torch

from ..config import STORES
from ..files import format_bytes
from ..memory import BUDGET_SHARE, InsufficientMemoryError, available_memory, memory_budget
from ..spool import read_at, write_at

logger = logging.getLogger(__name__)

HOST = torch.device("cpu")
# Free disk space asked for beyond the stored activations' estimate: other writers share the disk.
DISK_MARGIN = 1.1


@dataclass(eq=False)
class Stored:
    """One tensor held by a store. ``refs`` counts its holders (a resnet's residual may be the core itself)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    payload: object  # a device tensor, a time-major host tensor, or an open temporary file
    refs: int = 1
    hot: torch.Tensor | None = field(default=None, repr=False)

    @property
    def frame_bytes(self) -> int:
        rest = [n for i, n in enumerate(self.shape) if i != 2]
        return int(torch.Size(rest).numel()) * torch.empty((), dtype=self.dtype).element_size()


class Store:
    """Holds tensors (B, C, T, ...) for the exact executor; ``read`` gives frames [lo, hi) of dim 2 on ``device``."""

    kind = "device"

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._hot: Stored | None = None

    @property
    def streams_attention(self) -> bool:
        """True where the whole sequence must never be gathered on the device (attention then runs over stored key
        tiles): every store but ``device``."""
        return self.kind != "device"

    def put(self, tensor: torch.Tensor) -> Stored:
        item = Stored(tuple(tensor.shape), tensor.dtype, self._save(tensor))
        if self.kind != "device":
            if self._hot is not None:
                self._hot.hot = None
            item.hot, self._hot = tensor, item
        return item

    def share(self, item: Stored) -> Stored:
        item.refs += 1
        return item

    def read(self, item: Stored, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        hi = item.shape[2] if hi is None else hi
        if item.hot is not None:
            return item.hot[:, :, lo:hi]
        return self._load(item, lo, hi)

    def release(self, item: Stored) -> None:
        item.refs -= 1
        if item.refs == 0:
            if item is self._hot:
                self._hot = None
            item.hot = None
            self._drop(item)

    def close(self) -> None:
        self._hot = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # The device store keeps the tensor itself (a view of the tile's output, its halo frames not worth a copy).
    def _save(self, tensor: torch.Tensor) -> object:
        return tensor

    def _load(self, item: Stored, lo: int, hi: int) -> torch.Tensor:
        return item.payload[:, :, lo:hi]

    def _drop(self, item: Stored) -> None:
        item.payload = None


def _time_major(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.movedim(2, 0)


def _from_time_major(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    # A strided view: the halo's torch.cat or the next convolution lays it out once, so no copy is made here.
    return frames.to(device, non_blocking=True).movedim(0, 2)


class HostStore(Store):
    """Paused tiles in host memory, pinned when the device is CUDA so the copies overlap with compute."""

    kind = "host"

    def _save(self, tensor: torch.Tensor) -> object:
        frames = _time_major(tensor)
        pin = self.device.type == "cuda"
        host = torch.empty(frames.shape, dtype=tensor.dtype, device=HOST, pin_memory=pin)
        host.copy_(frames, non_blocking=pin)
        return host

    def _load(self, item: Stored, lo: int, hi: int) -> torch.Tensor:
        return _from_time_major(item.payload[lo:hi], self.device)


class DiskStore(Store):
    """Paused tiles in unlinked temporary files under ``directory`` (None: the system's temporary directory)."""

    kind = "disk"

    def __init__(self, device: torch.device, directory: str | os.PathLike | None = None):
        super().__init__(device)
        self.directory = directory
        self.bytes_written = 0
        self._open: set[Stored] = set()

    def _save(self, tensor: torch.Tensor) -> object:
        data = _time_major(tensor).to(HOST).contiguous().reshape(-1).view(torch.uint8).numpy()
        folder = store_directory(self.directory)
        try:
            file = tempfile.TemporaryFile(dir=folder)
        except OSError as error:  # named here: the output file's path would otherwise be blamed
            raise OSError(error.errno, f"the exact decode's store folder: {error.strerror}", folder) from None
        try:
            done = write_at(file.fileno(), memoryview(data), 0)
        except OSError as error:
            file.close()
            raise OSError(error.errno, f"the exact decode's store folder: {error.strerror}", folder) from None
        except BaseException:
            file.close()
            raise
        self.bytes_written += done
        return file

    def put(self, tensor: torch.Tensor) -> Stored:
        item = super().put(tensor)
        self._open.add(item)
        return item

    def _load(self, item: Stored, lo: int, hi: int) -> torch.Tensor:
        size = item.frame_bytes
        buffer = torch.empty((hi - lo) * size, dtype=torch.uint8)
        read_at(item.payload.fileno(), memoryview(buffer.numpy()), lo * size, "the exact decode's temporary file")
        rest = item.shape[:2] + item.shape[3:]
        return _from_time_major(buffer.view(item.dtype).reshape((hi - lo, *rest)), self.device)

    def _drop(self, item: Stored) -> None:
        item.payload.close()
        self._open.discard(item)
        item.payload = None

    def close(self) -> None:
        super().close()
        for item in list(self._open):
            self._drop(item)


def open_store(kind: str, device: torch.device, directory: str | os.PathLike | None = None) -> Store:
    if kind == "device":
        return Store(device)
    if kind == "host":
        return HostStore(device)
    if kind == "disk":
        return DiskStore(device, directory)
    raise ValueError(f"store must be one of {STORES[1:]} here, got {kind!r}")


def store_directory(directory: str | os.PathLike | None) -> str:
    return os.fspath(directory) if directory is not None else tempfile.gettempdir()


def resolve_store(config, stored_bytes: float, device: torch.device | str) -> str:
    """The store ``config.store`` means where the whole sequence holds ``stored_bytes``: ``auto`` keeps it on the
    device when that fits the memory budget, else in host memory on an accelerator (when the host has room) and on
    disk on the CPU."""
    if config.store != "auto":
        return config.store
    device = torch.device(device)
    if stored_bytes <= memory_budget(config, device):
        return "device"
    if device.type != "cpu" and stored_bytes <= available_memory(HOST) * BUDGET_SHARE:
        return "host"
    return "disk"


def choose_store(config, stored_bytes: float, device: torch.device | str, what: str) -> str:
    """``resolve_store``, logged at INFO with the sizes when ``auto`` leaves the device."""
    kind = resolve_store(config, stored_bytes, device)
    if config.store == "auto" and kind != "device":
        where = "host memory" if kind == "host" else f"temporary files in {store_directory(config.store_dir)}"
        logger.info("%s: exact mode holds about %s for the whole sequence, more than the %s memory budget on %s; "
                    "keeping it in %s", what, format_bytes(stored_bytes),
                    format_bytes(memory_budget(config, device)), device, where)
    return kind


def check_disk_room(stored_bytes: float, directory: str | os.PathLike | None, what: str) -> None:
    """Raise InsufficientMemoryError when the store's directory has not room for ``stored_bytes`` (with a margin)."""
    path = store_directory(directory)
    try:
        free = shutil.disk_usage(path).free
    except OSError as error:
        raise InsufficientMemoryError(f"{what}: cannot use {path!r} for the exact decode's temporary files "
                                      f"({error.strerror or error})") from None
    if free < stored_bytes * DISK_MARGIN:
        raise InsufficientMemoryError(
            f"{what}: exact mode holds about {format_bytes(stored_bytes)} for the whole sequence, and neither the "
            f"memory budget nor {path!r} ({format_bytes(free)} free) has room for it. Free disk space or point "
            "TilingConfig.store_dir (CLI --store-dir) at a larger disk, or decode in fast mode "
            "(TilingConfig(mode='fast'), CLI --mode fast), whose memory does not grow with the length."
        )
