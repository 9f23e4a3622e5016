"""Hostile and careless uses of the CUDA shared memory extension against the real daemon on a
machine without a GPU, through tritonclient over HTTP and gRPC and raw HTTP: register answers a
clear 400 / INVALID_ARGUMENT saying there is no GPU, whatever JSON object it holds (a body
that is no JSON object is refused as such); status lists nothing; unregistering is no error; an
inference naming a region nobody registered is a 400; the daemon serves on. (With a GPU: tests/e2e/test_cuda_shared_memory.py.)"""

from __future__ import annotations

import base64
import http.client

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from inferd.daemon.cuda_memory import has_gpu

pytestmark = pytest.mark.skipif(has_gpu(), reason="this machine has a GPU: tests/e2e/test_cuda_shared_memory.py")

HANDLE = base64.b64encode(bytes(range(64)))  # what cuda_shared_memory.get_raw_handle gives: base64
NO_GPU = "CUDA shared memory needs a GPU; this server has none"
ROWS = np.arange(16, dtype=np.int32).reshape(1, 16)


@pytest.fixture(params=["http", "grpc"])
def client(request, daemon):
    if request.param == "http":
        c = httpclient.InferenceServerClient(daemon.url[len("http://"):])
    else:
        [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
        c = grpcclient.InferenceServerClient(event["address"])
    c.module, c.refused = (httpclient, "400") if request.param == "http" else (grpcclient, "StatusCode.INVALID_ARGUMENT")
    yield c
    c.close()


def _regions(client) -> list:
    status = client.get_cuda_shared_memory_status()
    return status if client.module is httpclient else list(status.regions)


def _serves(client) -> None:
    m = client.module
    inputs = [m.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
    for each in inputs:
        each.set_data_from_numpy(ROWS)
    result = client.infer("add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * ROWS)


@pytest.mark.parametrize("name, handle, device, size", [
    ("gpu0", HANDLE, 0, 64),  # a well-formed request
    ("gpu0", HANDLE, 7, 1 << 40),  # no such device, a huge size
    ("x" * 1000, b"", 0, 0),  # a name too long, an empty handle
])
def test_register_says_there_is_no_gpu(client, name, handle, device, size):
    with pytest.raises(InferenceServerException, match=NO_GPU) as caught:
        client.register_cuda_shared_memory(name, handle, device, size)
    assert caught.value.status() == client.refused
    assert _regions(client) == []
    _serves(client)


def test_status_lists_nothing_and_unregistering_is_no_error(client):
    assert _regions(client) == []
    client.unregister_cuda_shared_memory("never_registered")
    client.unregister_cuda_shared_memory()
    with pytest.raises(InferenceServerException, match="no CUDA shared memory region 'gpu0' is registered") as caught:
        client.get_cuda_shared_memory_status("gpu0")
    assert caught.value.status() == ("404" if client.module is httpclient else "StatusCode.NOT_FOUND")


def test_inputs_and_outputs_naming_an_unregistered_region_are_refused(client):
    m = client.module
    inputs = [m.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
    inputs[0].set_shared_memory("gpu_input", ROWS.nbytes)
    inputs[1].set_data_from_numpy(ROWS)
    with pytest.raises(InferenceServerException, match="no shared memory region 'gpu_input' is registered") as caught:
        client.infer("add_sub", inputs)
    assert caught.value.status() == client.refused
    inputs[0].set_data_from_numpy(ROWS)
    output = m.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory("gpu_output", ROWS.nbytes)
    with pytest.raises(InferenceServerException, match="no shared memory region 'gpu_output' is registered"):
        client.infer("add_sub", inputs, outputs=[output])
    _serves(client)


NOT_AN_OBJECT = "the register request must be a JSON object"
NO_GPU = "CUDA shared memory needs a GPU; this server has none"


@pytest.mark.parametrize("body, message", [
    (b"not json", NOT_AN_OBJECT), (b"[]", NOT_AN_OBJECT), (b"{}", NO_GPU), (b'{"raw_handle": "AAAA"}', NO_GPU),
    (b'{"raw_handle": {"b64": 5}, "device_id": -1}', NO_GPU),
    (orjson.dumps({"raw_handle": {"b64": "A" * 1_000_000}, "device_id": 0, "byte_size": 64}), NO_GPU),
])
def test_raw_register_bodies_get_a_400(daemon, body, message):
    """A body that is no JSON object is refused as such; any object (its fields unchecked) gets
    the no-GPU answer, since without a GPU nothing in it can be registered."""
    connection = http.client.HTTPConnection(*daemon.address, timeout=60)
    try:
        connection.request("POST", "/v2/cudasharedmemory/region/r/register", body=body)
        response = connection.getresponse()
        status, doc = response.status, orjson.loads(response.read())
    finally:
        connection.close()
    assert (status, doc) == (400, {"error": message})
    connection = http.client.HTTPConnection(*daemon.address, timeout=60)
    try:
        connection.request("GET", "/v2/cudasharedmemory/status")
        assert orjson.loads(connection.getresponse().read()) == []
    finally:
        connection.close()
