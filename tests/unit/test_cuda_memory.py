"""CUDA shared memory's parts that run without a GPU (daemon/cuda_memory.py): the register
request's checks, the driver library's loading, CUDA errors as clear errors, a region's bounds,
the lookup through the system registry, and the ctypes calls through libcuda_stand_in.c (libcuda's
C signatures over host memory). On a GPU, for real: tests/e2e/test_cuda_shared_memory.py."""

from __future__ import annotations

import base64
import ctypes
import os

import numpy as np
import pytest

from inferd.common.errors import ErrorCode, InferdError
from inferd.daemon.cuda_memory import (
    HANDLE_BYTES,
    CudaRegion,
    CudaSharedMemory,
    Driver,
    IpcHandle,
    check_register,
    cuda_error,
    handle_from_json,
    has_gpu,
    load_library,
)
from inferd.daemon.shared_memory import SystemSharedMemory

HANDLE = bytes(range(HANDLE_BYTES))


def _refused(code: ErrorCode, match: str, fn, *args):
    with pytest.raises(InferdError, match=match) as caught:
        fn(*args)
    assert caught.value.code is code, caught.value


def test_a_good_register_request_passes_its_checks():
    assert check_register("r", HANDLE, 0, 64) == (HANDLE, 0, 64)
    b64 = {"b64": base64.b64encode(HANDLE).decode()}  # HTTP's form
    assert check_register("r", b64, 3, 1 << 40) == (HANDLE, 3, 1 << 40)
    assert ctypes.sizeof(IpcHandle) == HANDLE_BYTES and bytes(IpcHandle.from_buffer_copy(HANDLE)) == HANDLE


@pytest.mark.parametrize("args, match", [
    (("", HANDLE, 0, 64), "name must be a string of 1 to 128"),
    (("x" * 129, HANDLE, 0, 64), "name must be a string of 1 to 128"),
    ((7, HANDLE, 0, 64), "name must be a string"),
    (("r", HANDLE[:63], 0, 64), "the 64 bytes of a cudaIpcMemHandle_t, got 63"),
    (("r", HANDLE + b"\0", 0, 64), "got 65"),
    (("r", "not bytes", 0, 64), "got str"),
    (("r", None, 0, 64), "got NoneType"),
    (("r", HANDLE, -1, 64), "device_id must be a non-negative integer"),
    (("r", HANDLE, True, 64), "device_id must be a non-negative integer"),
    (("r", HANDLE, 0.0, 64), "device_id must be a non-negative integer"),
    (("r", HANDLE, 0, -5), "byte_size must be a non-negative integer"),
    (("r", HANDLE, 0, "64"), "byte_size must be a non-negative integer"),
    (("r", HANDLE, 0, 0), "byte_size must be at least 1"),
])
def test_bad_register_requests_are_refused_before_any_gpu_call(args, match):
    _refused(ErrorCode.INVALID_ARGUMENT, match, check_register, *args)


@pytest.mark.parametrize("value, match", [
    ({"b64": "!!!"}, "not valid base64"),
    ({"b64": base64.b64encode(HANDLE).decode() + "A"}, "not valid base64"),
    ({"b64": 12}, 'must be {"b64"'),
    ({"b64": "A" * 4096}, 'must be {"b64"'),  # (no decoding of a long string)
    ({"b64": "AA==", "more": 1}, 'must be {"b64"'),
    ({}, 'must be {"b64"'),
    ("AAAA", 'must be {"b64"'),
])
def test_http_handles_must_be_b64_of_64_bytes(value, match):
    _refused(ErrorCode.INVALID_ARGUMENT, match, handle_from_json, value)


def test_a_b64_handle_of_the_wrong_length_is_refused():
    _refused(ErrorCode.INVALID_ARGUMENT, "got 48", check_register, "r", {"b64": base64.b64encode(HANDLE[:48]).decode()}, 0, 64)


def test_a_missing_driver_library_says_what_to_install():
    _refused(ErrorCode.FAILED_PRECONDITION, "needs the NVIDIA driver's libcuda.so.1.*NVIDIA container toolkit",
             load_library, ("libinferd_no_such_cuda.so.1",))


def test_a_library_without_the_driver_calls_is_refused_clearly():
    """This process's own symbols (libc, Python) stand in for a libcuda too old or not one."""
    _refused(ErrorCode.FAILED_PRECONDITION, "libcuda has no cuInit", Driver, ctypes.CDLL(None))


def test_cuda_errors_become_clear_errors():
    error = cuda_error("opening the CUDA IPC handle", 1, "CUDA_ERROR_INVALID_VALUE", "invalid argument")
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert error.message == "opening the CUDA IPC handle failed (CUDA_ERROR_INVALID_VALUE: invalid argument, CUresult 1)"
    error = cuda_error("copying from GPU memory", 999, None, None, ErrorCode.INTERNAL)
    assert error.code is ErrorCode.INTERNAL and "an unknown CUDA error, CUresult 999" in error.message


@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU (tests/e2e/test_cuda_shared_memory.py runs there)")
def test_without_a_gpu_register_says_so_first():
    cuda = CudaSharedMemory(SystemSharedMemory())
    _refused(ErrorCode.INVALID_ARGUMENT, "CUDA shared memory needs a GPU; this server has none",
             cuda.register, "r", b"short", -1, 0)
    assert cuda.status() == []
    cuda.unregister("unknown")
    cuda.unregister()
    _refused(ErrorCode.NOT_FOUND, "no CUDA shared memory region 'r'", cuda.status, "r")


def test_with_a_gpu_but_no_driver_library_register_says_what_is_missing():
    """(A GPU's presence is the one thing assumed here: this machine has none.)"""
    cuda = CudaSharedMemory(SystemSharedMemory(), gpu=lambda: True,
                            load=lambda: load_library(("libinferd_no_such_cuda.so.1",)))
    _refused(ErrorCode.FAILED_PRECONDITION, "libcuda.so.1", cuda.register, "r", HANDLE, 0, 64)
    assert cuda.status() == []


def test_names_and_handles_are_unique_and_regions_counted(tmp_path):
    system = SystemSharedMemory()
    cuda = CudaSharedMemory(system, gpu=lambda: True, max_regions=2, load=lambda: pytest.fail("not loaded"))
    key = f"/inferd_cuda_test_{tmp_path.name}"
    with open(f"/dev/shm{key}", "wb") as f:
        f.write(b"\0" * 64)
    try:
        system.register("taken", key, 0, 64)
        _refused(ErrorCode.INVALID_ARGUMENT, "'taken' is already registered", cuda.register, "taken", HANDLE, 0, 64)
        cuda._regions["gpu"] = CudaRegion("gpu", 0, 64, 0, _Driver(), HANDLE)
        _refused(ErrorCode.INVALID_ARGUMENT, "'gpu' is already registered", system.register, "gpu", key, 0, 64)
        _refused(ErrorCode.INVALID_ARGUMENT, "this CUDA IPC handle is registered already, under another name than 'again'",
                 cuda.register, "again", HANDLE, 0, 64)
        cuda._regions["gpu2"] = CudaRegion("gpu2", 0, 64, 0, _Driver(), HANDLE[::-1])
        _refused(ErrorCode.RESOURCE_EXHAUSTED, "2 CUDA shared memory regions", cuda.register, "other", HANDLE, 0, 64)
    finally:
        system.close()
        os.unlink(f"/dev/shm{key}")


class _Driver:
    """Records the calls a region makes: libcuda cannot exist on this GPU-less machine (the real
    driver runs in tests/e2e/test_cuda_shared_memory.py)."""

    def __init__(self):
        self.calls = []

    def to_host(self, device, dst, src):
        self.calls.append(("to_host", device, src, dst.nbytes))
        dst[:] = 7

    def to_device(self, device, dst, src):
        self.calls.append(("to_device", device, dst, bytes(src)))

    def close(self, device, ptr):
        self.calls.append(("close", device, ptr))


def _linked(byte_size=64):
    system, driver = SystemSharedMemory(), _Driver()
    cuda = CudaSharedMemory(system)
    cuda._regions["gpu"] = CudaRegion("gpu", 1, byte_size, 0x1000, driver)
    return system, cuda, driver


def test_an_input_is_copied_once_from_within_its_cuda_region():
    system, cuda, driver = _linked()
    read = system.input_reader(None, 1 << 20)
    params = {"shared_memory_region": "gpu", "shared_memory_offset": 16, "shared_memory_byte_size": 8}
    tensor = read("IN", "INT32", [1, 2], params)
    assert tensor.tolist() == [[0x07070707, 0x07070707]]
    assert driver.calls == [("to_host", 1, 0x1010, 8)]


@pytest.mark.parametrize("offset, size, shape, match", [
    (60, 8, [2], "8 bytes at offset 60 run past the end of CUDA shared memory region 'gpu' \\(64 bytes\\)"),
    (0, 65, [65], "run past the end"),
    (0, 8, [3], "shape \\[3\\] of INT32 needs 12 bytes, shared_memory_byte_size is 8"),
])
def test_inputs_outside_their_cuda_region_are_refused_without_a_copy(offset, size, shape, match):
    system, cuda, driver = _linked()
    params = {"shared_memory_region": "gpu", "shared_memory_offset": offset, "shared_memory_byte_size": size}
    _refused(ErrorCode.INVALID_ARGUMENT, match, system.input_reader(None, 1 << 20), "IN", "INT32", shape, params)
    assert driver.calls == []


def test_cuda_inputs_count_toward_the_request_bytes():
    system, cuda, driver = _linked()
    read = system.input_reader(None, 12)
    read("A", "INT32", [2], {"shared_memory_region": "gpu", "shared_memory_byte_size": 8})
    _refused(ErrorCode.INVALID_ARGUMENT, "server.max_request_bytes", read, "B", "INT32", [2],
             {"shared_memory_region": "gpu", "shared_memory_offset": 8, "shared_memory_byte_size": 8})
    assert len(driver.calls) == 1


def test_outputs_go_into_their_cuda_region_and_unregister_waits_for_them():
    system, cuda, driver = _linked()
    targets = system.output_targets({"OUT": {"shared_memory_region": "gpu", "shared_memory_offset": 32,
                                             "shared_memory_byte_size": 32}, "plain": {}})
    cuda.unregister("gpu")  # while the inference still holds it: gone from status, not closed
    assert cuda.status() == [] and driver.calls == []
    with targets:
        assert targets.write({"OUT": np.array([1, 2], np.int32), "plain": np.zeros(1)}) == {"OUT"}
        _refused(ErrorCode.INVALID_ARGUMENT, "more than its shared_memory_byte_size", targets.write,
                 {"OUT": np.zeros(9, np.int32)})
    assert driver.calls == [("to_device", 1, 0x1020, b"\1\0\0\0\2\0\0\0"), ("close", 1, 0x1000)]


def test_an_output_past_its_cuda_region_is_refused_before_inference():
    system, cuda, driver = _linked()
    _refused(ErrorCode.INVALID_ARGUMENT, "run past the end of CUDA shared memory region 'gpu'", system.output_targets,
             {"OUT": {"shared_memory_region": "gpu", "shared_memory_offset": 40, "shared_memory_byte_size": 32}})
    assert cuda.status() == [{"name": "gpu", "device_id": 1, "byte_size": 64}]
    cuda.close()
    assert driver.calls == [("close", 1, 0x1000)] and cuda.status() == []


def test_a_handle_that_fails_to_close_is_logged_not_raised(capsys):
    class Failing(_Driver):
        def close(self, device, ptr):
            raise InferdError(ErrorCode.INTERNAL, "closing a CUDA IPC handle failed (CUDA_ERROR_INVALID_VALUE)")

    system, cuda, driver = _linked()
    cuda._regions["gpu"]._driver = Failing()
    cuda.unregister("gpu")
    assert cuda.status() == []
    out = capsys.readouterr()
    assert "CUDA IPC handle not closed" in out.out + out.err


# -- the ctypes calls, through a stand-in for libcuda (tests/unit/libcuda_stand_in.c) ---------------


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """libcuda_stand_in.c built into a shared library: the driver's symbols over host memory."""
    import shutil
    import subprocess
    from pathlib import Path

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build tests/unit/libcuda_stand_in.c")
    library = tmp_path_factory.mktemp("libcuda") / "libcuda_stand_in.so"
    source = Path(__file__).with_name("libcuda_stand_in.c")
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(source)], check=True)
    return str(library)


def _handle(memory: np.ndarray, pattern: bool = True) -> bytes:
    tail = bytes((i * 3) % 256 for i in range(16, 64)) if pattern else bytes(48)
    return memory.ctypes.data.to_bytes(8, "little") + memory.nbytes.to_bytes(8, "little") + tail


def test_the_driver_calls_cross_ctypes_as_cuda_h_declares_them(stand_in):
    lib = ctypes.CDLL(stand_in)
    memory = np.arange(32, dtype=np.int32)  # the client's "GPU" allocation: 128 bytes
    system = SystemSharedMemory()
    cuda = CudaSharedMemory(system, gpu=lambda: True, load=lambda: lib)
    _refused(ErrorCode.INVALID_ARGUMENT, "opening the CUDA IPC handle failed \\(CUDA_ERROR_INVALID_VALUE: invalid "
             "argument, CUresult 1\\)", cuda.register, "junk", _handle(memory, pattern=False), 0, 64)
    _refused(ErrorCode.INVALID_ARGUMENT, "this server sees 1 GPU", cuda.register, "dev", _handle(memory), 1, 64)
    _refused(ErrorCode.INVALID_ARGUMENT, "byte_size 129 runs past the end of the GPU allocation the handle names "
             "\\(128 bytes from its start\\)", cuda.register, "big", _handle(memory), 0, 129)
    assert lib.stand_in_closes() == 1  # (the handle opened for "big" was closed again)
    b64 = {"b64": base64.b64encode(_handle(memory)).decode()}
    cuda.register("gpu", b64, 0, 128)
    assert cuda.status() == [{"name": "gpu", "device_id": 0, "byte_size": 128}]

    read = system.input_reader(None, 1 << 20)
    tensor = read("IN", "INT32", [2, 4], {"shared_memory_region": "gpu", "shared_memory_offset": 16,
                                          "shared_memory_byte_size": 32})
    np.testing.assert_array_equal(tensor, memory[4:12].reshape(2, 4))
    targets = system.output_targets({"OUT": {"shared_memory_region": "gpu", "shared_memory_offset": 96,
                                             "shared_memory_byte_size": 32}})
    with targets:
        assert targets.write({"OUT": np.array([-1, -2, -3], np.int32)}) == {"OUT"}
    np.testing.assert_array_equal(memory[24:27], [-1, -2, -3])
    assert memory[27] == 27 and tensor[0, 0] == 4  # (nothing past the output; the input a copy)
    cuda.unregister()
    assert lib.stand_in_closes() == 2 and cuda.status() == []


def test_a_failed_copy_names_the_cuda_error(stand_in):
    """A copy the driver refuses (here: past what the stand-in mapped) is a clear error."""
    lib = ctypes.CDLL(stand_in)
    memory = np.zeros(16, np.uint8)
    driver = Driver(lib)
    ptr, available = driver.open(0, _handle(memory))
    assert (ptr, available) == (memory.ctypes.data, 16)
    region = CudaRegion("r", 0, 32, ptr, driver)  # (a size register would have refused)
    with pytest.raises(InferdError, match="copying from GPU memory failed \\(CUDA_ERROR_ILLEGAL_ADDRESS: an illegal "
                       "memory access was encountered, CUresult 700\\)") as caught:
        region.read(0, 32)
    assert caught.value.code is ErrorCode.INTERNAL
    driver.close(0, ptr)
