"""Hostile requests against the real daemon, per front-end and format: whatever a client sends,
the answer is a clear 4xx / INVALID_ARGUMENT / RESOURCE_EXHAUSTED with a short message, the
event loop keeps answering health checks, and the daemon's memory stays near the request's size.

Each case reproduces a finding of issue 22 (the old daemon stalled for seconds to minutes, grew
by gigabytes, answered 500 with a traceback in its log, or truncated the data silently).
"""

from __future__ import annotations

import http.client
import os
import socket
import struct
import threading
import time

import msgpack
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from grpc_raw import framed, grpc_call, infer_message, pb_request
from samples import EVERY_DATATYPE
from tritonclient.grpc import service_pb2 as pb

from inferd.common.codec import to_raw

MAX_MESSAGE = 1100  # common.errors.MAX_MESSAGE_CHARS and a little JSON around it
LONG = "n" * (256 << 10)  # a 256 KiB name: echoed whole into a gRPC trailer it held the loop ~5 s
TOKEN = "hostile-token"


@pytest.fixture(scope="module")
def strict(tmp_path_factory, model_repo):
    """A daemon with a token and small limits, so the oversized cases stay small."""
    tmp = tmp_path_factory.mktemp("strict")
    (tmp / "token").write_text(TOKEN + "\n")
    os.chmod(tmp / "token", 0o600)
    config = tmp / "inferd.toml"
    config.write_text(f'[auth]\ntoken_file = "{tmp / "token"}"\n[server]\nmax_request_bytes = 1048576\n')
    with DaemonProcess(model_repo, config=config) as d:
        yield d


def _grpc_address(daemon) -> str:
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


def _grpc_port(daemon) -> int:
    return int(_grpc_address(daemon).rsplit(":", 1)[1])


def _post(daemon, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(*daemon.address, timeout=120)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, orjson.loads(response.read() or b"{}")
    finally:
        connection.close()


def _raw_http(daemon, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """A request written byte for byte (headers no client library would send)."""
    with socket.create_connection(daemon.address, timeout=60) as s:
        s.sendall(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return status, reply.partition(b"\r\n\r\n")[2]


def _unix_call(daemon, message: dict) -> dict:
    payload = msgpack.packb(message, use_bin_type=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(daemon.socket_path)
        s.sendall(struct.pack(">I", len(payload)) + payload)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            data += s.recv(65536)
    return msgpack.unpackb(data[4:], raw=False)


class HealthProbe:
    """/v2/health/live asked again and again on its own thread while a hostile request runs:
    the slowest answer says how long the event loop was held."""

    def __init__(self, daemon):
        self.address = daemon.address
        self.slowest = 0.0
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            connection = http.client.HTTPConnection(*self.address, timeout=120)
            connection.request("GET", "/v2/health/live")
            assert connection.getresponse().status == 200
            connection.close()
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.answered += 1
            self._stop.wait(0.02)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(150)


def _log_has_no_traceback(daemon, since: int) -> None:
    lines = daemon.lines[since:]
    assert not [line for line in lines if "Traceback" in line or '"exception"' in line or "Unhandled" in line]


# -- texts echoed to callers ----------------------------------------------------------------------

async def test_grpc_long_model_and_input_names_get_short_statuses(daemon):
    port = _grpc_port(daemon)
    with HealthProbe(daemon) as probe:
        unknown_model = grpc_call(port, infer_message(LONG, [("INPUT0", "INT32", [1, 16], bytes(64))]))
        unknown_input = grpc_call(port, infer_message("add_sub", [(LONG, "INT32", [1, 16], bytes(64))]))
    assert unknown_model.status == "5" and "unknown model 'nnn" in unknown_model.message  # NOT_FOUND
    assert unknown_input.status == "3" and "unknown input 'nnn" in unknown_input.message  # INVALID_ARGUMENT
    assert len(unknown_model.message) < MAX_MESSAGE and len(unknown_input.message) < MAX_MESSAGE
    assert probe.answered > 0 and probe.slowest < 2.0  # (the old daemon: ~5 s per call)


def test_http_and_unix_socket_clip_long_names(daemon):
    body = orjson.dumps({"inputs": [{"name": LONG, "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}]})
    status, doc = _post(daemon, "/v2/models/add_sub/infer", body)
    assert status == 400 and "unknown input 'nnn" in doc["error"] and len(doc["error"]) < MAX_MESSAGE
    reply = _unix_call(daemon, {"id": 1, "op": "infer", "model": LONG, "inputs": []})
    assert reply["error"]["code"] == "not_found" and len(reply["error"]["message"]) < MAX_MESSAGE


@pytest.mark.parametrize("value", [{"nested": 1}, [1, 2]])
def test_request_parameters_that_are_not_scalars_are_refused_alike_over_http_and_the_unix_socket(daemon, value):
    """V2 parameters are booleans, numbers or strings; a model's code reads them (Triton Python
    models), so the data plane refuses others for every front-end instead of dropping them."""
    inputs = [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": [0] * 16} for n in ("INPUT0", "INPUT1")]
    status, doc = _post(daemon, "/v2/models/add_sub/infer", orjson.dumps({"inputs": inputs, "parameters": {"p": value}}))
    assert status == 400 and "request parameter 'p': a value must be a boolean" in doc["error"], doc
    reply = _unix_call(daemon, {"id": 3, "op": "infer", "model": "add_sub", "parameters": {"p": value}, "inputs": [
        {"name": n, "datatype": "INT32", "shape": [1, 16], "data": bytes(64)} for n in ("INPUT0", "INPUT1")]})
    assert reply["error"]["code"] == "invalid_argument" and "request parameter 'p'" in reply["error"]["message"], reply
    status, doc = _post(daemon, "/v2/models/add_sub/infer", orjson.dumps({"inputs": inputs, "parameters": {"p": "fine"}}))
    assert status == 200, doc  # scalars still pass


# -- work that grows with the request -----------------------------------------------------------

def test_a_flood_of_binary_bytes_elements_is_refused_without_holding_the_loop(daemon):
    n = 8_000_000  # 31 MiB of empty BYTES elements (the old daemon held its loop ~11 s on them)
    head = orjson.dumps({"inputs": [{"name": "IN_BYTES", "datatype": "BYTES", "shape": [1, n],
                                     "parameters": {"binary_data_size": 4 * n}}]})
    peak = _PeakMemory(daemon)
    with HealthProbe(daemon) as probe:
        status, doc = _post(daemon, "/v2/models/identity_all/infer", head + bytes(4 * n),
                            {"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and "server.max_value_elements" in doc["error"]
    assert probe.answered > 0 and probe.slowest < 2.0
    assert peak.grown() < 4 * 4 * n  # a small multiple of the body (the old daemon: ~10x)


@pytest.mark.parametrize("front", ["json", "unix"])
def test_too_many_bytes_elements_in_json_or_on_the_unix_socket(daemon, front):
    n = 70_000  # over server.max_value_elements (65,536)
    if front == "json":
        body = orjson.dumps({"inputs": [{"name": "IN_BYTES", "datatype": "BYTES", "shape": [1, n], "data": ["a"] * n}]})
        status, doc = _post(daemon, "/v2/models/identity_all/infer", body)
        assert status == 400 and "server.max_value_elements" in doc["error"]
    else:
        data = (struct.pack("<I", 1) + b"a") * n
        reply = _unix_call(daemon, {"id": 2, "op": "infer", "model": "identity_all", "inputs": [
            {"name": "IN_BYTES", "datatype": "BYTES", "shape": [1, n], "data": data}]})
        assert reply["error"]["code"] == "invalid_argument" and "server.max_value_elements" in reply["error"]["message"]


def test_grpc_messages_over_max_request_bytes_are_refused_from_their_prefix(strict):
    port = _grpc_port(strict)
    message = infer_message("identity_all", [("IN_UINT8", "UINT8", [1, 8 << 20], bytes(8 << 20))])
    answer = grpc_call(port, message, token=TOKEN)
    assert answer.status == "8" and "server.max_request_bytes" in answer.message  # RESOURCE_EXHAUSTED
    assert answer.sent < len(message)  # answered before the client could send all of it
    small = grpc_call(port, infer_message("identity_all", [("IN_UINT8", "UINT8", [1, 16], bytes(16))]), token=TOKEN)
    assert small.status == "3" and "missing input" in small.message  # served: the next call is decoded as usual


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_big_output_comes_back_whole_while_health_is_answered(daemon, binary):
    """An identity model echoing a 12 MiB binary input: written in slices (JSON) and parts."""
    big = (np.arange(3 << 20, dtype=np.float32) / 3).reshape(1, -1)
    arrays = {f"IN_{k}": big if k == "FP32" else v[:, :1] for k, v in EVERY_DATATYPE.items()}
    raws = {k: to_raw(v) for k, v in arrays.items()}
    head = orjson.dumps({"inputs": [{"name": k, "datatype": k[3:], "shape": list(v.shape),
                                     "parameters": {"binary_data_size": len(raws[k])}} for k, v in arrays.items()],
                         "parameters": {"binary_data_output": binary}})
    connection = http.client.HTTPConnection(*daemon.address, timeout=120)
    with HealthProbe(daemon) as probe:
        connection.request("POST", "/v2/models/identity_all/infer", body=head + b"".join(raws.values()),
                           headers={"Inference-Header-Content-Length": str(len(head))})
        response = connection.getresponse()
        body = response.read()
    connection.close()
    assert response.status == 200 and probe.answered > 0 and probe.slowest < 2.0
    header_length = response.getheader("Inference-Header-Content-Length")
    doc = orjson.loads(body[: int(header_length)] if binary else body)
    [out] = [o for o in doc["outputs"] if o["name"] == "OUT_FP32"]
    if binary:
        offset = int(header_length) + sum(o["parameters"]["binary_data_size"] for o in doc["outputs"][: doc["outputs"].index(out)])
        got = np.frombuffer(body[offset : offset + big.nbytes], np.float32)
    else:
        got = np.array(out["data"], np.float32)
    assert out["shape"] == list(big.shape) and np.array_equal(got, big.reshape(-1))


def test_a_big_grpc_call_comes_back_whole_while_health_is_answered(daemon):
    """12 MiB of raw FP32 through tritonclient: read in slices, the raw contents kept as views."""
    big = (np.arange(3 << 20, dtype=np.float32) / 3).reshape(1, -1)
    client = grpcclient.InferenceServerClient(_grpc_address(daemon))
    inputs = []
    for datatype, sample in EVERY_DATATYPE.items():
        value = big if datatype == "FP32" else sample[:, :1]
        inputs.append(grpcclient.InferInput(f"IN_{datatype}", list(value.shape), datatype))
        inputs[-1].set_data_from_numpy(value)
    with HealthProbe(daemon) as probe:
        result = client.infer("identity_all", inputs)
    client.close()
    assert np.array_equal(result.as_numpy("OUT_FP32"), big) and result.as_numpy("OUT_BYTES").tolist() == [[b"hello"]]
    assert probe.answered > 0 and probe.slowest < 2.0


def test_grpc_structured_parts_over_max_structured_bytes_are_refused(daemon):
    """What protobuf parses in one step is bounded like JSON: typed contents (2 M varints
    here) and every message but ModelInfer's raw contents."""
    port = _grpc_port(daemon)
    typed = grpc_call(port, pb_request("add_sub", [("INPUT0", "INT32", [1, 2 << 20], {"int_contents": [0] * (2 << 20)})]))
    assert typed.status == "8" and "server.max_structured_bytes" in typed.message  # RESOURCE_EXHAUSTED
    metadata = grpc_call(port, framed(pb.ModelMetadataRequest(name="m" * (2 << 20))), method="ModelMetadata")
    assert metadata.status == "8" and "server.max_structured_bytes" in metadata.message


async def test_grpc_typed_contents_count_against_max_value_elements(daemon):
    port = _grpc_port(daemon)
    request = pb_request("add_sub", [("INPUT0", "INT32", [1, 70_000], {"int_contents": [0] * 70_000})])
    answer = grpc_call(port, request)
    assert answer.status == "3" and "server.max_value_elements" in answer.message


# -- malformed input: 4xx, never 500 ------------------------------------------------------------

GOOD = orjson.dumps({"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": [0] * 16} for n in ("INPUT0", "INPUT1")]})
HUGE_SHAPE = orjson.dumps({"inputs": [{"name": "IN_INT32", "datatype": "INT32", "shape": [0, 2**62],
                                       "parameters": {"binary_data_size": 0}}]})


@pytest.mark.parametrize("model,headers,body,words", [
    ("identity_all", b"Inference-Header-Content-Length: %d\r\n" % len(HUGE_SHAPE), HUGE_SHAPE, "too large"),
    ("add_sub", "Inference-Header-Content-Length: \u00b2\r\n".encode(), GOOD, "non-negative integer"),
    ("add_sub", b"Inference-Header-Content-Length: " + b"9" * 5000 + b"\r\n", GOOD, "non-negative integer"),
    ("add_sub", b"Content-Encoding: gzip\r\n", b"\x1f\x8b\x08\x00garbage" * 10, "cannot be read"),
    ("add_sub", b"", GOOD.replace(b"[0,0,0", b"[1.5,0,0", 1), "fraction"),
], ids=["zero and huge dimension", "non-ASCII digit length", "5,000-digit length", "garbage gzip", "1.5 for INT32"])
def test_malformed_http_requests_are_400_without_a_traceback(daemon, model, headers, body, words):
    since = len(daemon.lines)
    status, reply = _raw_http(daemon, b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\n" % model.encode() + headers, body)
    assert status == 400 and words in orjson.loads(reply)["error"]
    assert _post(daemon, "/v2/models/add_sub/infer", GOOD)[0] == 200
    _log_has_no_traceback(daemon, since)


@pytest.mark.parametrize("body,words", [
    (b"\0\0\0\0\x05\xff\xff\xff\xff\xff", "not a valid protobuf"),
    (b"", "no message"),
    (b"\0\0\0\0\x64" + b"\x0a\x02ab", "ends inside"),
    (b"\0" + struct.pack(">I", 140_000) + b"\x1a\x00" * 70_000, "fields"),
], ids=["invalid protobuf", "empty body", "message cut short", "70,000 top-level fields"])
def test_malformed_grpc_bodies_are_invalid_argument(daemon, body, words):
    since = len(daemon.lines)
    answer = grpc_call(_grpc_port(daemon), body)
    assert answer.status == "3" and words in answer.message
    _log_has_no_traceback(daemon, since)


def test_a_non_utf8_authorization_header_is_401_and_counted(strict):
    since = len(strict.lines)
    status, _ = _raw_http(strict, b"GET /v2/models/add_sub HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n")
    assert status == 401
    metrics = _get(strict, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert 'inferd_unauthenticated_total{protocol="http"} 1.0' in metrics
    _log_has_no_traceback(strict, since)


# -- helpers -------------------------------------------------------------------------------------

def _get(daemon, path: str, headers: dict) -> str:
    connection = http.client.HTTPConnection(*daemon.address, timeout=60)
    try:
        connection.request("GET", path, headers=headers)
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def _concurrently(n: int, call) -> list:
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(call())) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return out


class _PeakMemory:
    """The daemon's peak resident memory from now on (Linux resets VmHWM on clear_refs 5)."""

    def __init__(self, daemon):
        self.pid = daemon.proc.pid
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")
        self.base = self._read("VmRSS")

    def _read(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    def grown(self) -> int:
        return self._read("VmHWM") - self.base
