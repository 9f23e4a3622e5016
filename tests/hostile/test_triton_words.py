"""The errors answered in Triton's words (which its example clients look for) quote what the
client sent: a version string or an input name of any length comes back clipped, with the
protocol's status, and the daemon keeps serving."""

from __future__ import annotations

import http.client

from grpc_raw import framed, grpc_call
from tritonclient.grpc import service_pb2 as pb

MAX_MESSAGE = 1100  # common.errors.MAX_MESSAGE_CHARS and a little JSON around it
LONG = "v" * (256 << 10)


def _grpc_port(daemon) -> int:
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    return int(event["address"].rsplit(":", 1)[1])


def _add_sub(version: str = "", contents: bool = False, name: str = "INPUT0") -> bytes:
    request = pb.ModelInferRequest(model_name="add_sub", model_version=version)
    for tensor in (name, "INPUT1"):
        entry = request.inputs.add(name=tensor, datatype="INT32", shape=[1, 16])
        if contents:
            entry.contents.int_contents.extend(range(16))
        request.raw_input_contents.append(bytes(64))
    return framed(request)


def test_a_version_that_is_not_a_number_is_invalid_over_grpc(daemon):
    port = _grpc_port(daemon)
    answer = grpc_call(port, _add_sub(version=LONG))
    assert answer.status == "3"  # INVALID_ARGUMENT
    assert answer.message.startswith("failed to get model version from specified version string 'vvv")
    assert len(answer.message) < MAX_MESSAGE
    assert grpc_call(port, _add_sub(version="1")).status == "0"  # and it serves on


def test_a_version_that_is_not_a_number_is_invalid_over_http(daemon):
    connection = http.client.HTTPConnection(*daemon.address, timeout=60)
    try:
        connection.request("GET", "/v2/models/add_sub/versions/v" + "x" * 4000)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 400, body
    assert b"failed to get model version from specified version string" in body and len(body) < MAX_MESSAGE


def test_contents_beside_raw_contents_names_the_input_clipped(daemon):
    answer = grpc_call(_grpc_port(daemon), _add_sub(contents=True, name=LONG))
    assert answer.status == "3"
    assert answer.message.startswith("contents field must not be specified when using raw_input_contents for 'vvv")
    assert answer.message.endswith("for model 'add_sub'") and len(answer.message) < MAX_MESSAGE
