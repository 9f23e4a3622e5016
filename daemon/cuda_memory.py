"""CUDA shared memory (the CUDA part of Triton's extension_shared_memory.md): a client allocates
GPU memory, exports it with cudaIpcGetMemHandle and registers the handle's 64 bytes (gRPC
raw_handle; HTTP {"raw_handle": {"b64": ...}}) with a device id and a size. Inputs and outputs
then name the region exactly as they name system regions (shared_memory.py looks a name up in
both registries; a name is unique across the two, as in Triton).

The daemon speaks to the GPU through the NVIDIA driver's own library, libcuda.so.1, with ctypes,
loaded only when a region is registered: it comes with every driver, so nothing else is
installed, and the daemon still imports no CUDA runtime (tests/unit/test_architecture.py).
Register opens the handle in the device's primary context (cuIpcOpenMemHandle) and refuses a
size past the end of the allocation it names (cuMemGetAddressRange): no copy ever leaves it.
An input costs one device-to-host copy into a buffer of the daemon's (the model runs in a worker
process, which is fed from host memory); an output one host-to-device copy, waited for before
the answer goes out. The copies run on the event loop, as system regions' preads do: the codecs
read inputs synchronously, and a request's inputs are bounded by server.max_request_bytes.

Without a GPU register answers 400 and says so; status lists nothing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
from pathlib import Path

import numpy as np
import structlog

from inferd.common.codec import from_raw
from inferd.common.errors import ErrorCode, InferdError, clip, invalid
from inferd.daemon.shared_memory import check_region_name, take_input_bytes

HANDLE_BYTES = 64  # CU_IPC_HANDLE_SIZE
MAX_REGIONS = 256  # registered CUDA regions at once
LIBRARIES = ("libcuda.so.1",)  # the driver's soname, found by the dynamic loader
LAZY_ENABLE_PEER_ACCESS = 1  # CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS

log = structlog.get_logger("inferd.cuda_memory")


def has_gpu() -> bool:
    """Whether an NVIDIA GPU and its driver are present (without loading a CUDA library): its
    device node, or the driver's entry in /proc (a container may show either)."""
    if any(Path("/dev").glob("nvidia[0-9]*")):
        return True
    with contextlib.suppress(OSError):
        return any(Path("/proc/driver/nvidia/gpus").iterdir())
    return False


class IpcHandle(ctypes.Structure):
    """CUipcMemHandle (= cudaIpcMemHandle_t): 64 opaque bytes, passed by value."""
    _fields_ = [("reserved", ctypes.c_ubyte * HANDLE_BYTES)]


def handle_from_json(value) -> bytes:
    """HTTP's raw_handle, {"b64": "<base64 of the handle>"}, as bytes."""
    text = value.get("b64") if isinstance(value, dict) and len(value) == 1 else None
    if not isinstance(text, str) or len(text) > 4 * HANDLE_BYTES:
        raise invalid('raw_handle must be {"b64": "<the base64 of a cudaIpcMemHandle_t>"}')
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("raw_handle's b64 is not valid base64") from None


def check_register(name, raw_handle, device_id, byte_size) -> tuple[bytes, int, int]:
    """The register request's arguments, checked before any GPU call: (handle, device, size).
    The handle: gRPC's bytes, or HTTP's {"b64": ...}."""
    check_region_name(name)
    if isinstance(raw_handle, dict):
        raw_handle = handle_from_json(raw_handle)
    if not isinstance(raw_handle, bytes) or len(raw_handle) != HANDLE_BYTES:
        got = len(raw_handle) if isinstance(raw_handle, bytes) else type(raw_handle).__name__
        raise invalid(f"raw_handle must be the {HANDLE_BYTES} bytes of a cudaIpcMemHandle_t, got {got}")
    for value, what in ((device_id, "device_id"), (byte_size, "byte_size")):
        if type(value) is not int or value < 0:
            raise invalid(f"{what} must be a non-negative integer")
    if byte_size == 0:
        raise invalid("byte_size must be at least 1")
    return raw_handle, device_id, byte_size


def cuda_error(what: str, result: int, name: str | None, text: str | None,
               code: ErrorCode = ErrorCode.INVALID_ARGUMENT) -> InferdError:
    """A failed driver call as a clear error: what was tried, CUresult's name and its text."""
    said = f"{name}: {text}" if name and text else name or text or "an unknown CUDA error"
    return InferdError(code, f"{what} failed ({said}, CUresult {result})")


def load_library(names=LIBRARIES):
    """libcuda through ctypes, or a clear error saying what is missing."""
    errors = []
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError as e:
            errors.append(str(e))
    raise InferdError(ErrorCode.FAILED_PRECONDITION, "CUDA shared memory needs the NVIDIA driver's libcuda.so.1, which "
                      "cannot be loaded (" + "; ".join(errors) + "): install the driver's user-space libraries "
                      "(in a container, run it with the NVIDIA container toolkit, e.g. --gpus)")


_c = ctypes
_PTR = _c.c_uint64  # CUdeviceptr
_SIGNATURES = {  # the driver's symbols used, by name, and their arguments (each returns a CUresult)
    # Each exact symbol: cuda.h maps some names to _v2 symbols (64-bit sizes, the current ABI),
    # and newer drivers export _v2 symbols of other calls with other arguments (cuCtxSynchronize_v2
    # takes a context), so no name is looked up by rule.
    "cuInit": ("cuInit", [_c.c_uint]),
    "cuDeviceGetCount": ("cuDeviceGetCount", [_c.POINTER(_c.c_int)]),
    "cuDeviceGet": ("cuDeviceGet", [_c.POINTER(_c.c_int), _c.c_int]),
    "cuDevicePrimaryCtxRetain": ("cuDevicePrimaryCtxRetain", [_c.POINTER(_c.c_void_p), _c.c_int]),
    "cuCtxSetCurrent": ("cuCtxSetCurrent", [_c.c_void_p]),
    "cuCtxSynchronize": ("cuCtxSynchronize", []),
    "cuIpcOpenMemHandle": ("cuIpcOpenMemHandle_v2", [_c.POINTER(_PTR), IpcHandle, _c.c_uint]),
    "cuIpcCloseMemHandle": ("cuIpcCloseMemHandle", [_PTR]),
    "cuMemGetAddressRange": ("cuMemGetAddressRange_v2", [_c.POINTER(_PTR), _c.POINTER(_c.c_size_t), _PTR]),
    "cuMemcpyDtoH": ("cuMemcpyDtoH_v2", [_c.c_void_p, _PTR, _c.c_size_t]),
    "cuMemcpyHtoD": ("cuMemcpyHtoD_v2", [_PTR, _c.c_void_p, _c.c_size_t]),
    "cuGetErrorName": ("cuGetErrorName", [_c.c_int, _c.POINTER(_c.c_char_p)]),
    "cuGetErrorString": ("cuGetErrorString", [_c.c_int, _c.POINTER(_c.c_char_p)]),
}


class Driver:
    """The driver calls this module needs, each result checked; one primary context per device."""

    def __init__(self, lib):
        self._fns = {}
        for name, (symbol, argtypes) in _SIGNATURES.items():
            try:
                fn = getattr(lib, symbol)
            except AttributeError:
                raise InferdError(ErrorCode.FAILED_PRECONDITION, f"the NVIDIA driver's libcuda has no {symbol}: "
                                  "CUDA shared memory needs a driver for CUDA 11 or newer") from None
            fn.argtypes, fn.restype = argtypes, _c.c_int
            self._fns[name] = fn
        self._contexts: dict[int, int] = {}
        self._call("cuInit", "cuInit", 0, code=ErrorCode.FAILED_PRECONDITION)
        count = _c.c_int()
        self._call("cuDeviceGetCount", "counting GPUs", _c.byref(count), code=ErrorCode.FAILED_PRECONDITION)
        self.device_count = count.value

    def _text(self, fn: str, result: int) -> str | None:
        out = _c.c_char_p()
        if self._fns[fn](result, _c.byref(out)) != 0 or not out.value:
            return None
        return out.value.decode(errors="replace")

    def _call(self, fn: str, what: str, *args, code: ErrorCode = ErrorCode.INTERNAL) -> None:
        result = self._fns[fn](*args)
        if result != 0:
            raise cuda_error(what, result, self._text("cuGetErrorName", result),
                             self._text("cuGetErrorString", result), code)

    def use(self, device: int) -> None:
        """Make `device`'s primary context current on this thread (retained once, kept)."""
        if device not in self._contexts:
            dev, ctx = _c.c_int(), _c.c_void_p()
            self._call("cuDeviceGet", f"opening GPU {device}", _c.byref(dev), device)
            self._call("cuDevicePrimaryCtxRetain", f"a context on GPU {device}", _c.byref(ctx), dev)
            self._contexts[device] = ctx.value
        self._call("cuCtxSetCurrent", f"selecting GPU {device}", _c.c_void_p(self._contexts[device]))

    def open(self, device: int, handle: bytes) -> tuple[int, int]:
        """The handle opened on `device`: its address and the bytes from it to its allocation's end."""
        self.use(device)
        ptr = _PTR()
        self._call("cuIpcOpenMemHandle", "opening the CUDA IPC handle", _c.byref(ptr), IpcHandle.from_buffer_copy(handle),
                   LAZY_ENABLE_PEER_ACCESS, code=ErrorCode.INVALID_ARGUMENT)
        base, size = _PTR(), _c.c_size_t()
        try:
            self._call("cuMemGetAddressRange", "finding the handle's allocation", _c.byref(base), _c.byref(size), ptr)
        except InferdError:
            self.close(device, ptr.value)
            raise
        return ptr.value, base.value + size.value - ptr.value

    def close(self, device: int, ptr: int) -> None:
        self.use(device)
        self._call("cuIpcCloseMemHandle", "closing a CUDA IPC handle", _PTR(ptr))

    def to_host(self, device: int, dst: np.ndarray, src: int) -> None:
        self.use(device)
        self._call("cuMemcpyDtoH", "copying from GPU memory", _c.c_void_p(dst.ctypes.data), _PTR(src), dst.nbytes)

    def to_device(self, device: int, dst: int, src: np.ndarray) -> None:
        self.use(device)
        self._call("cuMemcpyHtoD", "copying into GPU memory", _PTR(dst), _c.c_void_p(src.ctypes.data), src.nbytes)
        # From pageable memory the call may return before the DMA ends: the answer must not
        # tell the client to read the region before its bytes are there.
        self._call("cuCtxSynchronize", "waiting for the copy into GPU memory")


class CudaRegion:
    """A registered CUDA region, `byte_size` bytes at device address `ptr` (duck-types
    shared_memory.Region: span, holders, release). Unregistered while an inference holds it,
    its handle closes when the last holder lets go."""

    __slots__ = ("name", "device_id", "byte_size", "ptr", "handle", "holders", "registered", "_driver")

    def __init__(self, name: str, device_id: int, byte_size: int, ptr: int, driver: Driver, handle: bytes = b""):
        self.name, self.device_id, self.byte_size, self.ptr, self._driver = name, device_id, byte_size, ptr, driver
        self.handle = handle
        self.holders = 0
        self.registered = True

    def status(self) -> dict:
        return {"name": self.name, "device_id": self.device_id, "byte_size": self.byte_size}

    def hold(self) -> None:
        self.holders += 1

    def release(self) -> None:
        self.holders -= 1
        if not self.registered and self.holders == 0:
            try:  # (after an answer or an unregister that succeeded: logged, not theirs to fail)
                self._driver.close(self.device_id, self.ptr)
            except InferdError as e:
                log.error("CUDA IPC handle not closed", region=self.name, error=e.message)

    def span(self, what: str, offset: int, size: int) -> int:
        """`offset`, refused if `size` bytes there do not fit in the region."""
        if offset + size > self.byte_size:
            raise invalid(f"{what}: {size} bytes at offset {offset} run past the end of CUDA shared memory region "
                          f"{clip(self.name)} ({self.byte_size} bytes)")
        return offset

    def read(self, offset: int, size: int) -> np.ndarray:
        buffer = np.empty(size, np.uint8)
        if size:
            self._driver.to_host(self.device_id, buffer, self.ptr + offset)
        return buffer

    def write(self, raw, offset: int) -> None:
        data = np.frombuffer(raw, np.uint8)
        if data.nbytes:
            self.span("output", offset, data.nbytes)
            self._driver.to_device(self.device_id, self.ptr + offset, data)


class CudaSharedMemory:
    """The registered CUDA regions, by name. Linked both ways with `system` (SystemSharedMemory):
    a name is unique across the two registries, and an inference looks it up in both."""

    def __init__(self, system=None, max_regions: int = MAX_REGIONS, load=load_library, gpu=has_gpu):
        self._regions: dict[str, CudaRegion] = {}
        self._max = max_regions
        self._system = system
        if system is not None:
            system.cuda = self
        self._load, self._gpu = load, gpu  # (how the driver is found)
        self._driver: Driver | None = None

    def driver(self) -> Driver:
        """The driver, loaded at the first register (a clear error without its library)."""
        if self._driver is None:
            self._driver = Driver(self._load())
        return self._driver

    def register(self, name: str, raw_handle: bytes | dict, device_id: int, byte_size: int) -> None:
        if not self._gpu():  # first: no handle could work here
            raise invalid("CUDA shared memory needs a GPU; this server has none")
        raw_handle, device_id, byte_size = check_register(name, raw_handle, device_id, byte_size)
        if name in self._regions or self._system_has(name):
            raise invalid(f"shared memory region {clip(name)} is already registered")
        if len(self._regions) >= self._max:
            raise InferdError(ErrorCode.RESOURCE_EXHAUSTED, f"{self._max} CUDA shared memory regions are registered already")
        # One mapping per handle: closing one of two would unmap the other's memory under it.
        if any(region.handle == raw_handle for region in self._regions.values()):
            raise invalid(f"this CUDA IPC handle is registered already, under another name than {clip(name)}")
        driver = self.driver()
        if device_id >= driver.device_count:
            raise invalid(f"device_id {device_id}: this server sees {driver.device_count} GPU(s)")
        ptr, available = driver.open(device_id, raw_handle)
        if byte_size > available:
            driver.close(device_id, ptr)
            raise invalid(f"byte_size {byte_size} runs past the end of the GPU allocation the handle names "
                          f"({available} bytes from its start)")
        self._regions[name] = CudaRegion(name, device_id, byte_size, ptr, driver, raw_handle)

    def _system_has(self, name: str) -> bool:
        if self._system is None:
            return False
        try:
            self._system.get(name)
        except InferdError:
            return False
        return True

    def unregister(self, name: str = "") -> None:
        """One region, or all of them (name ""). An unknown name is no error (as in Triton)."""
        names = [name] if name else list(self._regions)
        for each in names:
            region = self._regions.pop(each, None) if isinstance(each, str) else None
            if region is not None:
                region.registered = False
                region.hold()
                region.release()  # (closes the handle now, or when the last inference lets go)

    def status(self, name: str = "") -> list[dict]:
        if not name:
            return [region.status() for region in self._regions.values()]
        region = self.get_region(name)
        if region is None:
            raise InferdError(ErrorCode.NOT_FOUND, f"no CUDA shared memory region {clip(name)} is registered")
        return [region.status()]

    def get_region(self, name) -> CudaRegion | None:
        return self._regions.get(name) if isinstance(name, str) else None

    def close(self) -> None:
        """The daemon stops: every region goes."""
        self.unregister()

    def read_input(self, name: str, datatype, shape, target: tuple[CudaRegion, int, int], budget,
                   left: list[int]) -> np.ndarray:
        """The input `name` copied out of its region; `target` (region, offset, size) is checked
        against the region already. `left`: the bytes this request may still read, decreased."""
        region, offset, size = target
        take_input_bytes(name, datatype, shape, size, left)  # (refused before the copy)
        return from_raw(name, datatype, shape, region.read(offset, size).data, budget)
