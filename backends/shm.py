"""Shared memory for batch tensors between the daemon and one worker.

Each worker gets two regions, created by the daemon with memfd_create and handed over once on
the worker's socket (SCM_RIGHTS): inputs (the daemon writes, the worker reads) and outputs (the
worker writes, the daemon reads). The messages then carry only [name, datatype, shape, offset,
nbytes] per tensor. A region grows by ftruncate on the writer's side; the message says the new
size and the reader maps it again. A memfd has no name in /dev/shm: its memory goes back to the
system when the last process holding it closes it or dies, so nothing can be left behind.
BYTES tensors (lists of variable-length blobs) still travel in the message.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from inferd.config.tensors import DATATYPES

INITIAL_SIZE = 1 << 20
_ALIGN = 64  # each tensor starts on a cache line: runtimes may read it with aligned loads
_NUMERIC = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class Region:
    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size
        self._map = mmap.mmap(fd, size)

    @classmethod
    def create(cls, name: str, size: int = INITIAL_SIZE) -> "Region":
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd, size)

    def follow(self, size: int) -> None:
        """The writer on the other side grew the region to `size`: map all of it."""
        if size > self.size:
            self._map = mmap.mmap(self.fd, size)  # the old map goes when its last view does
            self.size = size

    def _grow(self, needed: int) -> None:
        if needed > self.size:
            size = max(needed, 2 * self.size)
            os.ftruncate(self.fd, size)
            self.follow(size)

    def write(self, tensors: dict[str, np.ndarray]) -> list:
        """Copy the numeric tensors in; returns their descriptors and BYTES ones inline, in the
        form `read` takes."""
        layout, offset = [], 0
        for name, array in tensors.items():
            if array.dtype == object:
                layout.append((name, array, None))
                continue
            layout.append((name, array, offset))
            offset = _aligned(offset + array.nbytes)
        self._grow(offset)
        out = []
        for name, array, start in layout:
            if start is None:
                out.append([name, "BYTES", list(array.shape), [_as_bytes(x) for x in array.reshape(-1).tolist()]])
                continue
            dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
            datatype = _NUMERIC.get(dtype)
            if datatype is None:
                raise ValueError(f"tensor {name!r} has dtype {array.dtype}, which has no V2 datatype")
            view = np.frombuffer(self._map, dtype=dtype, count=array.size, offset=start).reshape(array.shape)
            view[...] = array
            out.append([name, datatype, list(array.shape), start, array.nbytes])
        return out

    def read(self, items: list, copy: bool) -> dict[str, np.ndarray]:
        """Arrays for descriptors from `write`: views into the region, or copies (`copy`) that
        stay valid after the region is written again."""
        out = {}
        for item in items:
            name, datatype, shape = item[0], item[1], item[2]
            if datatype == "BYTES":
                array = np.empty(len(item[3]), dtype=object)
                array[:] = item[3]
                out[name] = array.reshape(shape)
                continue
            offset, nbytes = item[3], item[4]
            dtype = DATATYPES[datatype]
            view = np.frombuffer(self._map, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset).reshape(shape)
            out[name] = view.copy() if copy else view
        return out

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a view is still alive somewhere: the map goes with it
            pass
        os.close(self.fd)


def _as_bytes(x) -> bytes:
    return x.encode() if isinstance(x, str) else bytes(x)
