"""Shared memory for batch tensors between the daemon and one worker.

Each worker gets two regions, created by the daemon with memfd_create and handed over once on
the worker's socket (SCM_RIGHTS): inputs (the daemon writes, the worker reads) and outputs (the
worker writes, the daemon reads). The messages then carry only [name, datatype, shape, offset,
nbytes] per tensor. A region grows by ftruncate on the writer's side; the message says the new
size and the reader maps it again. A memfd has no name in /dev/shm: its memory goes back to the
system when the last process holding it closes it or dies, so nothing can be left behind.
BYTES tensors (lists of variable-length blobs) and small tensors (up to INLINE_BYTES) still
travel in the message: for those, the views and copies here cost more than the bytes.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from inferd.backends import ipc
from inferd.common.deferred import stack_into, stacked
from inferd.common.tensors import DATATYPES, datatype_of

INITIAL_SIZE = 1 << 20
INLINE_BYTES = 4096  # a batch tensor this small travels in the message itself
_ALIGN = 64  # each tensor starts on a cache line: runtimes may read it with aligned loads


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class Region:
    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size
        self._map = mmap.mmap(fd, size)

    @classmethod
    def create(cls, name: str, size: int = INITIAL_SIZE) -> Region:
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

    def write(self, tensors: dict[str, list[np.ndarray]]) -> list:
        """Copy each tensor's parts (the requests of a batch, stacked along the first dimension)
        straight into the region: a large batch is never concatenated anywhere else (BYTES and
        small tensors are, into the message, as ipc packs them). A part still in a client's
        file (common.deferred.FileSlice) is read straight into its rows. Returns the
        descriptors, in the form `read` takes; raises UnreadPart."""
        return self.write_pairs(tensors.items())

    def write_pairs(self, tensors) -> list:
        """`write` for (name, parts) pairs, where a name may come more than once (a per-request
        model's outputs, caller after caller: inferd.backends.per_request)."""
        layout, offset = [], 0
        for name, parts in tensors:
            nbytes = parts[0].nbytes if len(parts) == 1 else sum(p.nbytes for p in parts)
            if nbytes <= INLINE_BYTES or parts[0].dtype == object or parts[0].dtype.kind in "US":
                layout.append((name, parts, None))
                continue
            layout.append((name, parts, offset))
            offset = _aligned(offset + nbytes)
        self._grow(offset)
        out = []
        for name, parts, start in layout:
            if start is None:
                out.extend(ipc.pack_tensors({name: stacked(parts)}))
                continue
            shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:]) if len(parts) > 1 else parts[0].shape
            dtype = parts[0].dtype.newbyteorder("<")  # the wire is little-endian, like ipc's
            view = np.ndarray(shape, dtype, self._map, start)
            stack_into(parts, view)
            out.append([name, datatype_of(view), list(shape), start, view.nbytes])
        return out

    def read(self, items: list, copy: bool) -> dict[str, np.ndarray]:
        """Arrays for descriptors from `write`: views into the region, or copies (`copy`) that
        stay valid after the region is written again."""
        out = {}
        for item in items:
            if len(item) == 4:  # inline (BYTES, or small)
                out.update(ipc.unpack_tensors([item]))
                continue
            name, datatype, shape, offset, _ = item
            dtype = DATATYPES[datatype]
            view = np.ndarray(shape, dtype, self._map, offset)
            out[name] = view.copy() if copy else view
        return out

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a view is still alive somewhere: the map goes with it
            pass
        os.close(self.fd)

