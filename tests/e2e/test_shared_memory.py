"""The system shared memory extension through tritonclient (HTTP and gRPC), as Triton's
simple_{http,grpc}_shm_client.py and simple_{http,grpc}_shm_string_client.py use it: regions
created with tritonclient.utils.shared_memory, registered, inputs read from and outputs
written into them, status listed, all unregistered. And the CUDA extension without a GPU."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from samples import EVERY_DATATYPE
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from inferd.daemon.cuda_memory import has_gpu


@pytest.fixture(params=["http", "grpc"])
def client(request, daemon):
    if request.param == "http":
        c = httpclient.InferenceServerClient(daemon.url[len("http://"):])
    else:
        [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
        c = grpcclient.InferenceServerClient(event["address"])
    c.module = httpclient if request.param == "http" else grpcclient
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture
def regions():
    made = []

    def make(size: int):
        tag = uuid.uuid4().hex[:12]
        handle = shm.create_shared_memory_region(f"r{tag}", f"/inferd_test_{tag}", size)
        made.append(handle)
        return handle, f"r{tag}", f"/inferd_test_{tag}"

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def test_int32_inputs_from_and_outputs_into_regions(client, regions):
    """simple_*_shm_client.py: INPUT0/INPUT1 in one region, OUTPUT0/OUTPUT1 in another."""
    m = client.module
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, np.int32)
    size = a.nbytes
    ip, ip_name, ip_key = regions(2 * size)
    op, op_name, op_key = regions(2 * size)
    shm.set_shared_memory_region(ip, [a, b])
    client.register_system_shared_memory(ip_name, ip_key, 2 * size)
    client.register_system_shared_memory(op_name, op_key, 2 * size)
    status = client.get_system_shared_memory_status()
    names = {r["name"] for r in status} if client.module is httpclient else set(status.regions)
    assert {ip_name, op_name} <= names

    inputs = [m.InferInput("INPUT0", [1, 16], "INT32"), m.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory(ip_name, size)
    inputs[1].set_shared_memory(ip_name, size, offset=size)
    outputs = [m.InferRequestedOutput("OUTPUT0"), m.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory(op_name, size)
    outputs[1].set_shared_memory(op_name, size, offset=size)
    result = client.infer("add_sub", inputs, outputs=outputs)

    out0 = result.get_output("OUTPUT0")
    shape = list(out0["shape"]) if client.module is httpclient else list(out0.shape)
    assert shape == [1, 16]
    if client.module is httpclient:  # no data came back (no parameters either, as from Triton)
        assert "data" not in out0 and "parameters" not in out0
    else:
        assert result.get_response().raw_output_contents[0] == b""
    np.testing.assert_array_equal(shm.get_contents_as_numpy(op, np.int32, [1, 16]), a + b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(op, np.int32, [1, 16], offset=size), a - b)

    client.unregister_system_shared_memory(ip_name)
    status = client.get_system_shared_memory_status()
    names = {r["name"] for r in status} if client.module is httpclient else set(status.regions)
    assert ip_name not in names and op_name in names


def test_one_input_from_a_region_one_sent_and_one_output_each_way(client, regions):
    m = client.module
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), np.int32)
    ip, ip_name, ip_key = regions(a.nbytes)
    op, op_name, op_key = regions(a.nbytes)
    shm.set_shared_memory_region(ip, [a])
    client.register_system_shared_memory(ip_name, ip_key, a.nbytes)
    client.register_system_shared_memory(op_name, op_key, a.nbytes)
    inputs = [m.InferInput("INPUT0", [1, 16], "INT32"), m.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory(ip_name, a.nbytes)
    inputs[1].set_data_from_numpy(b)
    outputs = [m.InferRequestedOutput("OUTPUT0"), m.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory(op_name, a.nbytes)
    result = client.infer("add_sub", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(op, np.int32, [1, 16]), a + b)


def test_bytes_tensors_through_regions(client, regions):
    """simple_*_shm_string_client.py: BYTES inputs serialized into a region, the output read back."""
    m = client.module
    strings = np.array([[str(i).encode() * (i + 1) for i in range(16)]], dtype=object)
    raw = serialize_byte_tensor(strings)
    size = serialized_byte_size(raw)
    ip, ip_name, ip_key = regions(size)
    op, op_name, op_key = regions(size)
    shm.set_shared_memory_region(ip, [raw])
    client.register_system_shared_memory(ip_name, ip_key, size)
    client.register_system_shared_memory(op_name, op_key, size)
    tensor = m.InferInput("IN_BYTES", [1, 16], "BYTES")
    tensor.set_shared_memory(ip_name, size)
    wanted = m.InferRequestedOutput("OUT_BYTES")
    wanted.set_shared_memory(op_name, size)
    others = []  # identity_all takes one input per datatype: the others as data
    for datatype, array in EVERY_DATATYPE.items():
        if datatype != "BYTES":
            others.append(m.InferInput(f"IN_{datatype}", list(array.shape), datatype))
            others[-1].set_data_from_numpy(array)
    result = client.infer("identity_all", [tensor, *others], outputs=[wanted])
    out = result.get_output("OUT_BYTES")
    assert (out["datatype"] if client.module is httpclient else out.datatype) == "BYTES"
    np.testing.assert_array_equal(shm.get_contents_as_numpy(op, np.object_, [1, 16]), strings)


def test_status_of_one_region_and_unregister_all(client, regions):
    _, name, key = regions(64)
    client.register_system_shared_memory(name, key, 32, offset=16)
    status = client.get_system_shared_memory_status(name)
    if client.module is httpclient:
        assert status == [{"name": name, "key": key, "offset": 16, "byte_size": 32}]
    else:
        region = status.regions[name]
        assert (region.key, region.offset, region.byte_size) == (key, 16, 32)
    client.unregister_system_shared_memory()
    status = client.get_system_shared_memory_status()
    assert (status == []) if client.module is httpclient else (len(status.regions) == 0)


@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU: tests/e2e/test_cuda_shared_memory.py")
def test_cuda_shared_memory_needs_a_gpu(client):
    """No GPU here: register says so; status lists nothing."""
    status = client.get_cuda_shared_memory_status()
    assert (status == []) if client.module is httpclient else (len(status.regions) == 0)
    with pytest.raises(InferenceServerException, match="CUDA shared memory needs a GPU"):
        client.register_cuda_shared_memory("gpu0", b"\0" * 64, 0, 1024)
    client.unregister_cuda_shared_memory()


def test_server_metadata_lists_both_shared_memory_extensions(daemon):
    """As Triton's: the CUDA one is listed with or without a GPU (register says which)."""
    extensions = httpclient.InferenceServerClient(daemon.url[len("http://"):]).get_server_metadata()["extensions"]
    assert "system_shared_memory" in extensions and "cuda_shared_memory" in extensions
