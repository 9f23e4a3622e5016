"""Tensors not read yet: an input still in the file a client named (a system shared-memory
region), read straight into the place it goes (the rows of the worker's batch region) when its
batch is stacked, so its bytes are copied once, by the kernel, with no buffer in between.

The file is read with preadv on its descriptor, never mapped: the client may shrink it at any
moment, and a mapped read past its end is a SIGBUS that kills the daemon; a short read is a
clear error instead. Everything else that looks at a request's inputs (validation, queue
limits, a sequence's idle rows) needs only their shape, dtype and nbytes; a pipeline passes them
on to its steps unread; `materialize` reads the values into an array of their own.
"""

from __future__ import annotations

import os

import numpy as np

from inferd.common.errors import InferdError, invalid


class FileSlice:
    """`nbytes` bytes at `position` of the file open on `source.fd`: a tensor of `dtype` and
    `shape`, read when needed. `source` (the daemon's registered region) is held until
    `release` (its request is done; at the latest when this is collected), so its descriptor
    stays open even if the region is unregistered meanwhile; it has `hold()`, `release()` and
    `shrunk() -> InferdError` (the file is shorter than the region)."""

    __slots__ = ("source", "position", "dtype", "shape", "nbytes")

    def __init__(self, source, position: int, dtype: np.dtype, shape: tuple[int, ...]):
        self.position, self.dtype, self.shape = position, dtype, shape
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        source.hold()
        self.source = source  # (set last: __del__ releases only what was held)

    def release(self) -> None:
        """Let go of the source: read no more (an exception's traceback may keep this alive in
        a reference cycle long after its request is done)."""
        source, self.source = getattr(self, "source", None), None
        if source is not None:
            source.release()

    __del__ = release

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"FileSlice({self.dtype}, {list(self.shape)}, {self.nbytes} bytes at {self.position})"

    def read_into(self, out: np.ndarray) -> None:
        """The values into `out`, a C-contiguous array of `nbytes` bytes (its dtype aside)."""
        if not out.flags.c_contiguous or out.nbytes != self.nbytes:
            raise ValueError(f"read_into needs a contiguous destination of {self.nbytes} bytes")
        if self.source is None:
            raise invalid("a shared memory input was read after its request was done")
        view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
        while done < self.nbytes:
            try:
                got = os.preadv(self.source.fd, [view[done:]], self.position + done)
            except OSError as e:
                raise invalid(f"a shared memory input could not be read: {e.strerror}") from None
            if got == 0:
                raise self.source.shrunk()
            done += got

    def materialize(self) -> np.ndarray:
        array = np.empty(self.shape, self.dtype)
        self.read_into(array)
        return array


class UnreadPart(InferdError):
    """Stacking a batch met a part that could not be read (its file shrank): `index` is its
    place in the batch; the error is that part's, for its own request."""

    def __init__(self, index: int, error: InferdError):
        super().__init__(error.code, error.message)
        self.index = index


def stack_into(parts: list, out: np.ndarray) -> None:
    """The parts stacked along the first dimension into `out` (their concatenation's shape and
    dtype): a FileSlice is read straight into its rows. Raises UnreadPart."""
    if len(parts) == 1:
        return _put(0, parts[0], out)
    if not any(type(p) is FileSlice for p in parts):  # the usual batch: one C loop, not one per part
        np.concatenate(parts, out=out)
        return
    row = 0
    for index, part in enumerate(parts):
        rows = part.shape[0]
        _put(index, part, out[row : row + rows])
        row += rows


def stacked(parts: list) -> np.ndarray:
    """The parts as one array, concatenated along the first dimension (a lone ndarray as is)."""
    if not any(type(p) is FileSlice for p in parts):
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    shape = parts[0].shape if len(parts) == 1 else (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    out = np.empty(shape, parts[0].dtype)
    stack_into(parts, out)
    return out


def _put(index: int, part, out: np.ndarray) -> None:
    if type(part) is not FileSlice:
        out[...] = part
        return
    try:
        part.read_into(out)
    except InferdError as e:
        raise UnreadPart(index, e) from None
