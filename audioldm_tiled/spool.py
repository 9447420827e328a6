"""Signals too long to hold, kept on disk between the passes that read them whole.

A ``Spool`` is an append-only run of rows (samples or frames, each of one shape) in an unlinked temporary file,
written and read with explicit ``pwrite``/``pread``, as the exact decode's disk store keeps its tiles: no page is
mapped into the process, so its resident memory does not grow with the length, and the kernel frees the file when
it is closed, when the process fails, and even when it is killed.

Anything with ``length`` and ``read(lo, hi)`` (rows [lo, hi) as an array) is a ``Signal``: a spool, an array
(``ArraySignal``), a spool read backwards (``Reversed``), one cut or padded with zeros (``Fitted``).

``Frames`` turns a signal of rows (T, B, C, F) into what the tiled VAE and the windowed denoising read of a tensor
(B, C, T, F): its shape and frames along T, so that a log-mel or a latent too long to hold is read a tile or a
window at a time.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

BLOCK_ROWS = 1 << 18  # rows per pass step: 5.5 s at 48 kHz


class Signal(Protocol):
    length: int

    def read(self, lo: int, hi: int) -> np.ndarray: ...


class Spool:
    """Rows of ``row_shape`` and ``dtype`` appended in order, read back by range."""

    def __init__(self, row_shape: tuple[int, ...], dtype=np.float32, directory: str | os.PathLike | None = None):
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.length = 0
        try:
            self._file = tempfile.TemporaryFile(dir=directory)
        except OSError as error:
            raise OSError(error.errno, f"the temporary folder: {error.strerror}", directory or tempfile.gettempdir())\
                from None

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"a spool of rows {self.row_shape} was given rows {rows.shape[1:]}")
        write_at(self._file.fileno(), memoryview(rows.reshape(-1).view(np.uint8)), self.length * self.row_bytes)
        self.length += rows.shape[0]

    def read(self, lo: int, hi: int) -> np.ndarray:
        if not 0 <= lo <= hi <= self.length:
            raise IndexError(f"rows [{lo}, {hi}) of a spool of {self.length}")
        out = np.empty((hi - lo, *self.row_shape), dtype=self.dtype)
        read_at(self._file.fileno(), memoryview(out.reshape(-1).view(np.uint8)), lo * self.row_bytes,
                "a temporary file")
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_at(fd: int, data: memoryview, offset: int) -> int:
    """All of ``data`` into the file ``fd`` from byte ``offset`` (``pwrite`` until it is all written)."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)
    return done


def read_at(fd: int, view: memoryview, offset: int, what: str) -> None:
    """Fill ``view`` from the file ``fd`` from byte ``offset``; an OSError naming ``what`` if the file ends first."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(f"{what} ended early ({done} of {len(view)} bytes)")
        done += got


class ArraySignal:
    """An array (rows first) as a ``Signal``."""

    def __init__(self, array: np.ndarray):
        self.array, self.length = array, array.shape[0]

    def read(self, lo: int, hi: int) -> np.ndarray:
        return self.array[lo:hi]


class Reversed:
    """Rows [start, start + length) of ``signal`` read backwards: row i is ``signal``'s row start + length - 1 - i."""

    def __init__(self, signal: Signal, start: int = 0, length: int | None = None):
        self.signal, self.start = signal, start
        self.length = signal.length - start if length is None else length

    def read(self, lo: int, hi: int) -> np.ndarray:
        end = self.start + self.length
        return self.signal.read(end - hi, end - lo)[::-1]


class Fitted:
    """``signal`` cut or padded with zeros to ``length`` rows."""

    def __init__(self, signal: Signal, length: int):
        self.signal, self.length = signal, length

    def read(self, lo: int, hi: int) -> np.ndarray:
        have = self.signal.read(min(lo, self.signal.length), min(hi, self.signal.length))
        if have.shape[0] == hi - lo:
            return have
        out = np.zeros((hi - lo, *have.shape[1:]), dtype=have.dtype)
        out[: have.shape[0]] = have
        return out


def blocks(length: int, rows: int | None = None, start: int = 0) -> Iterator[tuple[int, int]]:
    """[lo, hi) ranges of ``rows`` (``BLOCK_ROWS``) covering [start, length) in order."""
    rows = rows or BLOCK_ROWS
    for lo in range(start, length, rows):
        yield lo, min(length, lo + rows)


class Frames:
    """A tensor (B, C, T, F) kept as ``rows``, a ``Signal`` of T rows (B, C, F), read along T: ``narrow(2, ...)``
    gives frames as a tensor of ``dtype`` on ``device``, as ``torch.Tensor.narrow`` would (``take_frames`` reads it
    like a tensor); ``shape``, ``dtype`` and ``device`` are the tensor's."""

    def __init__(self, rows: Signal, dtype: Any, device: Any):
        import torch

        batch, channels, bins = rows.read(0, 0).shape[1:]
        self.rows, self.dtype, self.device = rows, dtype, torch.device(device)
        self.shape = torch.Size((batch, channels, rows.length, bins))

    @classmethod
    def spooled(cls, tensor, dtype: Any = None, rows: int = 4096) -> Frames:
        """``tensor`` (B, C, T, F) moved to a float32 ``Spool`` a piece of ``rows`` frames at a time, read back in
        ``dtype`` (its own by default) on its device; float32 holds a half-precision value exactly, so the frames
        read are ``tensor.to(dtype)``'s."""
        spool = Spool((tensor.shape[0], tensor.shape[1], tensor.shape[3]), np.float32)
        for lo, hi in blocks(tensor.shape[2], rows):
            spool.append(tensor[:, :, lo:hi].permute(2, 0, 1, 3).float().cpu().numpy())
        return cls(spool, tensor.dtype if dtype is None else dtype, tensor.device)

    def dim(self) -> int:
        return 4

    def narrow(self, dim: int, start: int, length: int):
        import torch

        if dim not in (2, -2):
            raise ValueError(f"Frames are read along time (dim 2), not dim {dim}")
        rows = self.rows.read(start, start + length)
        return torch.from_numpy(np.ascontiguousarray(rows.transpose(1, 2, 0, 3))).to(self.device, self.dtype)

    def close(self) -> None:
        close = getattr(self.rows, "close", None)
        if close is not None:
            close()
