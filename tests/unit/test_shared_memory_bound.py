"""The shared-memory registry bounds the descriptors it keeps open, not only the regions
registered: a region unregistered while a request holds it keeps its file open, so a client
cycling register / request / unregister must meet the bound too (daemon/shared_memory.py)."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from inferd.common.codec import ValueBudget
from inferd.common.errors import ErrorCode, InferdError
from inferd.daemon.shared_memory import SystemSharedMemory


@pytest.fixture
def key():
    name = f"inferd-test-{uuid.uuid4().hex}"
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(bytes(64))
    yield "/" + name
    os.unlink(f"/dev/shm/{name}")


def _fds_on(path: str) -> int:
    return sum(os.path.realpath(f"/proc/self/fd/{fd}") == path for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}"))


def test_unregistered_regions_that_requests_hold_count_against_the_bound(key):
    shm = SystemSharedMemory(max_regions=4)
    readers = []
    for _ in range(4):  # register, a queued request reads from it, unregister: its file stays open
        shm.register("r", key, 0, 64)
        reader = shm.input_reader(ValueBudget(1000), 1 << 20)
        reader("x", "INT32", [16], {"shared_memory_region": "r", "shared_memory_byte_size": 64})
        readers.append(reader)
        shm.unregister("r")
    assert shm.status() == [] and _fds_on("/dev/shm" + key) == 4
    with pytest.raises(InferdError) as e:
        shm.register("r", key, 0, 64)
    assert e.value.code is ErrorCode.RESOURCE_EXHAUSTED and "still used by requests" in e.value.message
    readers.pop().release()  # a request done: its region's file closes, and a region may be registered
    assert _fds_on("/dev/shm" + key) == 3
    shm.register("r", key, 0, 64)
    for reader in readers:
        reader.release()
    shm.close()
    assert _fds_on("/dev/shm" + key) == 0


def test_an_output_target_missing_from_a_response_is_an_error_not_stale_bytes(key):
    """A region kept its old bytes, with no error, when the response lacked its output; an empty
    response (a decoupled request's final one) still writes nothing."""
    shm = SystemSharedMemory(max_regions=4)
    shm.register("r", key, 0, 64)
    targets = shm.output_targets({"OUT": {"shared_memory_region": "r", "shared_memory_byte_size": 64}})
    assert targets.write({}) == set()
    with pytest.raises(InferdError) as e:
        targets.write({"OTHER": np.zeros(4, np.float32)})
    assert e.value.code is ErrorCode.INTERNAL and "no such output" in e.value.message
    assert targets.write({"OUT": np.ones(4, np.float32)}) == {"OUT"}
    with open("/dev/shm" + key, "rb") as f:
        assert np.frombuffer(f.read(16), np.float32).tolist() == [1.0] * 4
    targets.release()
    shm.close()
