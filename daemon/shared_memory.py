"""The shared-memory extensions (Triton's extension_shared_memory.md): regions a client
registers by name, then names in an input's or an output's parameters instead of sending data.

A system region is a file in /dev/shm (a POSIX shm_open key such as "/input_simple") that the
client created. It is opened once at register time and read and written with pread/pwrite on
that descriptor, never mapped: the client may shrink the file at any moment, and a mapped read
past its end is a SIGBUS that kills the daemon, checked beforehand or not (the check races the
copy). A short pread is a clear error instead. An input (but BYTES) is not read when the request
arrives: it becomes a common.deferred.FileSlice, which the scheduler reads with one preadv
straight into the worker's batch region when it stacks the batch (one kernel copy, no buffer
of the daemon's in between); the region stays held, its descriptor open, while the slice lives.

Which files a client may name (it may be any network caller, and the daemon reads and writes
what it names): only a regular file directly in /dev/shm, not a symlink, owned by the daemon's
own user; other users' files are refused even where their mode would let the daemon open them.

CUDA regions are daemon/cuda_memory.py's; `cuda` links that registry here, where names are looked up.
"""

from __future__ import annotations

import errno
import math
import os
import stat

import numpy as np

from inferd.common.codec import check_datatype_and_shape, from_raw, raw_view
from inferd.common.deferred import FileSlice
from inferd.common.errors import ErrorCode, InferdError, clip, invalid

SHM_DIR = "/dev/shm"
# Regions whose file is open at once: registered ones, and unregistered ones a request still
# holds (each a descriptor; frontends/guard.FD_RESERVE keeps room for them).
MAX_REGIONS = 128
MAX_NAME_CHARS = 128  # a region's name
MAX_KEY_CHARS = 255  # NAME_MAX of a file in /dev/shm
PARAMS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")


def _integer(value, what: str) -> int:
    if type(value) is not int or value < 0:
        raise invalid(f"{what} must be a non-negative integer")
    return value


class Region:
    """A registered system region: `byte_size` bytes at `offset` in the file open on `fd`.
    Unregistered while an inference still holds it (its outputs to write, its inputs not read
    yet), the descriptor closes when the last holder lets go."""

    __slots__ = ("name", "key", "offset", "byte_size", "fd", "holders", "registered", "_open")

    def __init__(self, name: str, key: str, offset: int, byte_size: int, fd: int, open_regions: set):
        self.name, self.key, self.offset, self.byte_size, self.fd = name, key, offset, byte_size, fd
        self.holders = 0
        self.registered = True
        self._open = open_regions  # the registry's regions whose file is open, this one among them
        open_regions.add(self)

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def hold(self) -> None:
        self.holders += 1

    def release(self) -> None:
        self.holders -= 1
        if not self.registered and self.holders == 0:
            os.close(self.fd)
            self._open.discard(self)

    def span(self, what: str, offset: int, size: int) -> int:
        """The file position of `size` bytes at `offset` in the region, refused if they do not
        fit in it."""
        if offset + size > self.byte_size:
            raise invalid(f"{what}: {size} bytes at offset {offset} run past the end of shared memory region "
                          f"{clip(self.name)} ({self.byte_size} bytes)")
        return self.offset + offset

    def file_ends_before(self, end: int) -> bool:
        return os.fstat(self.fd).st_size < end

    def shrunk(self) -> InferdError:
        return invalid(f"the file of shared memory region {clip(self.name)} ({clip(self.key)}) is smaller than "
                       "the region now: the client shrank it after registering")


def _open_key(key: str) -> int:
    """The descriptor of /dev/shm/<key>, read-write, after the checks in the module's docstring."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        raise invalid(f"a shared memory key must be a string of 1 to {MAX_KEY_CHARS} characters")
    name = key.lstrip("/")  # shm_open's convention: "/name" is /dev/shm/name
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise invalid(f"shared memory key {clip(key)} must name a file directly in {SHM_DIR}, e.g. \"/input0\"")
    try:
        dir_fd = os.open(SHM_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise InferdError(ErrorCode.FAILED_PRECONDITION, f"{SHM_DIR} cannot be opened: {e.strerror}") from None
    try:  # O_NONBLOCK: a FIFO someone put there must not block the loop on open
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as e:
        why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror  # (O_NOFOLLOW met a link)
        raise invalid(f"unable to open shared memory key {clip(key)}: {why}") from None
    finally:
        os.close(dir_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        raise invalid(f"shared memory key {clip(key)} must be a regular file owned by the server's user")
    return fd


class SystemSharedMemory:
    """The registered system regions, by name."""

    def __init__(self, max_regions: int = MAX_REGIONS):
        self._regions: dict[str, Region] = {}
        self._open: set[Region] = set()  # the registered ones, and unregistered ones still held
        self._max = max_regions
        self.cuda = None  # the CudaSharedMemory registry (cuda_memory.py), which sets it

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        check_region_name(name)
        offset, byte_size = _integer(offset, "offset"), _integer(byte_size, "byte_size")
        if name in self._regions or (self.cuda is not None and self.cuda.get_region(name) is not None):
            raise invalid(f"shared memory region {clip(name)} is already registered")
        if len(self._open) >= self._max:  # (unregistering while requests hold regions frees no descriptor)
            raise InferdError(ErrorCode.RESOURCE_EXHAUSTED, f"{self._max} shared memory regions are open already "
                              f"({len(self._regions)} registered, the others unregistered but still used by requests)")
        fd = _open_key(key)
        if os.fstat(fd).st_size < offset + byte_size:
            os.close(fd)
            raise invalid(f"shared memory key {clip(key)} is smaller than offset + byte_size ({offset + byte_size})")
        self._regions[name] = Region(name, key, offset, byte_size, fd, self._open)

    def unregister(self, name: str = "") -> None:
        """One region, or all of them (name ""). An unknown name is no error (as in Triton)."""
        names = [name] if name else list(self._regions)
        for each in names:
            region = self._regions.pop(each, None)
            if region is not None:
                region.registered = False
                region.holders += 1
                region.release()

    def status(self, name: str = "") -> list[dict]:
        if not name:
            return [region.status() for region in self._regions.values()]
        return [self.get(name).status()]

    def get(self, name) -> Region:
        region = self._regions.get(name) if isinstance(name, str) else None
        if region is None:
            raise InferdError(ErrorCode.NOT_FOUND, f"no shared memory region {clip(str(name))} is registered")
        return region

    def close(self) -> None:
        """The daemon stops: every region goes."""
        self.unregister()

    # -- inference ------------------------------------------------------------------------

    def input_reader(self, budget, max_bytes: int) -> InputReader:
        """What a codec calls for each input with a shared_memory_region parameter:
        (name, datatype, shape, parameters) -> the tensor; at most `max_bytes` in all. Used as
        a context manager around the request's whole life: its inputs' regions are let go
        at its end."""
        return InputReader(self, budget, max_bytes)

    def read_input(self, name: str, datatype, shape, params: dict, budget, left: list[int]) -> np.ndarray | FileSlice:
        """The input `name` from the region its parameters name: a FileSlice, read when its batch
        is stacked (BYTES, parsed now, is read now). `left`: the bytes this request may still
        read (server.max_request_bytes), decreased."""
        region, offset, size = self._target(f"input {clip(name)}", params)
        position = region.span(f"input {clip(name)}", offset, size)
        if (typed := take_input_bytes(name, datatype, shape, size, left)) is not None:
            dtype, dims = typed
            if region.file_ends_before(position + size):  # (shrunk already: said now, not at stacking)
                raise region.shrunk()
            return FileSlice(region, position, dtype, dims)
        buffer = np.empty(size, np.uint8)
        view, done = memoryview(buffer), 0
        while done < size:
            got = os.preadv(region.fd, [view[done:]], position + done)
            if got == 0:
                raise region.shrunk()
            done += got
        return from_raw(name, datatype, shape, buffer.data, budget)

    def _target(self, what: str, params: dict) -> tuple[Region, int, int]:
        if "shared_memory_byte_size" not in params:
            raise invalid(f"{what}: shared_memory_region needs shared_memory_byte_size")
        size = _integer(params["shared_memory_byte_size"], f"{what}: shared_memory_byte_size")
        offset = _integer(params.get("shared_memory_offset", 0), f"{what}: shared_memory_offset")
        region = self._regions.get(params["shared_memory_region"]) if isinstance(params["shared_memory_region"], str) else None
        if region is None and self.cuda is not None:  # Triton looks a name up in both registries
            region = self.cuda.get_region(params["shared_memory_region"])
        if region is None:
            raise invalid(f"{what}: no shared memory region {clip(str(params['shared_memory_region']))} is registered")
        region.span(what, offset, size)
        return region, offset, size

    def output_targets(self, output_parameters: dict[str, dict]) -> OutputTargets:
        """The outputs to write into regions, each region held until `release`."""
        targets = OutputTargets()
        try:
            for name, params in output_parameters.items():
                if "shared_memory_region" in params:
                    if "classification" in params:  # (Triton's server and clients refuse it too)
                        raise invalid(f"output {clip(name)} can't set both 'shared_memory_region' and 'classification'")
                    region, offset, size = self._target(f"output {clip(name)}", params)
                    region.holders += 1
                    targets.add(name, region, offset, size)
        except InferdError:
            targets.release()
            raise
        return targets


class InputReader:
    """The shared-memory inputs of one request, read (FileSlice) as its codec meets them and
    let go when the request is done (`with`)."""

    __slots__ = ("_shm", "_budget", "_left", "_slices")

    def __init__(self, shm: SystemSharedMemory, budget, max_bytes: int):
        self._shm, self._budget, self._left, self._slices = shm, budget, [max_bytes], []

    def __call__(self, name: str, datatype, shape, params: dict):
        shm = self._shm
        if shm.cuda is not None and shm.cuda.get_region(params["shared_memory_region"]) is not None:
            target = shm._target(f"input {clip(name)}", params)
            return shm.cuda.read_input(name, datatype, shape, target, self._budget, self._left)
        tensor = shm.read_input(name, datatype, shape, params, self._budget, self._left)
        if type(tensor) is FileSlice:
            self._slices.append(tensor)
        return tensor

    def release(self) -> None:
        """Lets go of the regions the request's inputs come from (once its batch is stacked)."""
        slices, self._slices = self._slices, []
        for each in slices:
            each.release()

    def __enter__(self) -> InputReader:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_region_name(name) -> None:
    """A system or CUDA region's name (one namespace: cuda_memory.py registers there too)."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise invalid(f"a shared memory region's name must be a string of 1 to {MAX_NAME_CHARS} characters")


def take_input_bytes(name: str, datatype, shape, size: int, left: list[int]) -> tuple[np.dtype, tuple] | None:
    """An input of `size` bytes from a (system or CUDA) region, checked before it is read: within
    the request's `left` bytes (decreased), and for a type other than BYTES exactly its shape's
    size; returns (dtype, dims), or None for BYTES."""
    if size > left[0]:
        raise invalid(f"input {clip(name)}: shared memory inputs of a request may hold at most "
                      "server.max_request_bytes in all")
    left[0] -= size
    if datatype == "BYTES":
        return None
    dtype, dims = check_datatype_and_shape(name, datatype, shape)
    if math.prod(dims) * dtype.itemsize != size:
        raise invalid(f"input {clip(name)}: shape {list(dims)} of {datatype} needs "
                      f"{math.prod(dims) * dtype.itemsize} bytes, shared_memory_byte_size is {size}")
    return dtype, dims


class OutputTargets:
    """The outputs of one inference that go into shared memory regions."""

    __slots__ = ("_targets",)

    def __init__(self):
        self._targets: dict[str, tuple[Region, int, int]] = {}

    def __bool__(self) -> bool:
        return bool(self._targets)

    def add(self, name: str, region: Region, offset: int, size: int) -> None:
        self._targets[name] = (region, offset, size)

    def write(self, outputs: dict[str, np.ndarray]) -> set[str]:
        """Each target output written into its region; returns their names. A response with no
        outputs (a decoupled request's empty final one) writes nothing, as Triton's; one that
        lacks a target output is an error, not stale bytes left for the client to read (requested
        outputs are checked at validation and every model response is checked for them in the
        backend, so this is a daemon fault)."""
        written = set()
        if not outputs:
            return written
        for name, (region, offset, size) in self._targets.items():
            if name not in outputs:
                raise InferdError(ErrorCode.INTERNAL, f"output {clip(name)} was requested into a shared memory "
                                  "region but the response has no such output")
            raw = raw_view(outputs[name])
            if len(raw) > size:
                raise invalid(f"output {clip(name)} has {len(raw)} bytes, more than its shared_memory_byte_size ({size})")
            if not isinstance(region, Region):  # a CUDA region (cuda_memory.py): one copy to the GPU
                region.write(raw, offset)
                written.add(name)
                continue
            position = region.offset + offset
            if region.file_ends_before(position + len(raw)):
                raise region.shrunk()  # (pwrite would grow the file again: refused instead)
            view, done = memoryview(raw).cast("B"), 0
            while done < len(raw):
                done += os.pwritev(region.fd, [view[done:]], position + done)
            written.add(name)
        return written

    def release(self) -> None:
        targets, self._targets = self._targets, {}
        for region, _, _ in targets.values():
            region.release()

    def __enter__(self) -> OutputTargets:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
