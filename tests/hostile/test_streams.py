"""Hostile stream clients and careless decoupled models against the real daemon: a reader that
never reads (the model stops, execution_timeout_s ends it, the daemon serves on), a client that
goes away mid-stream (the model's generator is closed), too many requests in flight on one gRPC
stream, a model that yields wrong outputs or raises midway (the caller hears it after the
responses already sent; the worker serves on). Real sockets, real workers, real clients."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import struct
import threading
import time

import aiohttp
import h2.config
import h2.connection
import h2.events
import msgpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from grpc_raw import framed
from stream_models import REPEAT, place, stream_models
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException
from waiting import eventually

from inferd.client import AsyncClient, Client, InferdClientError

MAX_IN_FLIGHT = 100  # daemon/frontends/grpc_stream.py (the tests never import the gRPC front-end)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = stream_models(tmp_path_factory.mktemp("models"))
    place(root, "held_repeat", REPEAT, "max_queue_rows = 1000\nmax_workers = 1\n")
    with DaemonProcess(root) as d:
        yield d


def grpc_port(d: DaemonProcess) -> int:
    [address] = [e["address"] for e in d.events("listening") if e["frontend"] == "grpc"]
    return int(address.rsplit(":", 1)[1])


def yielded(d: DaemonProcess, x: int) -> list[str]:
    """What the endless model wrote for requests with this x: counts, then "closed"."""
    log = d.models / "endless" / "endless.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[1] for line in lines if line.split()[0] == str(x)]


def unix_stream_request(x: int) -> bytes:
    x_raw = np.array([x], np.int64).tobytes()
    payload = msgpack.packb({"id": 1, "op": "infer", "stream": True, "model": "endless",
                             "inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": x_raw}]})
    return struct.pack(">I", len(payload)) + payload


def open_and_never_read(d: DaemonProcess, protocol: str, x: int) -> socket.socket:
    """A stream request to the endless model on a socket whose replies are never read."""
    if protocol == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(d.socket_path)
        sock.sendall(unix_stream_request(x))
    elif protocol == "http":
        sock = socket.create_connection(d.address)
        body = json.dumps({"x": x}).encode()
        sock.sendall(b"POST /v2/models/endless/generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    else:  # gRPC over raw HTTP/2: the window is never opened again, as by a client that does not read
        sock = socket.create_connection(("127.0.0.1", grpc_port(d)))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "localhost"),
                              (":path", "/inference.GRPCInferenceService/ModelStreamInfer"),
                              ("content-type", "application/grpc"), ("te", "trailers")])
        message = pb.ModelInferRequest(model_name="endless")
        message.inputs.add(name="x", datatype="INT64", shape=[1], contents=pb.InferTensorContents(int64_contents=[x]))
        conn.send_data(1, framed(message))
        sock.sendall(conn.data_to_send())
    return sock


@pytest.mark.parametrize("protocol, x", [("unix", 1), ("http", 2), ("grpc", 3)])
async def test_a_reader_that_never_reads_stops_the_model_not_the_daemon(daemon, protocol, x):
    sock = open_and_never_read(daemon, protocol, x)
    try:
        await eventually(lambda: len(yielded(daemon, x)) > 0, 30, "the model to start")

        async def stalled():  # the model stops yielding: it waits for credit
            before = len(yielded(daemon, x))
            await asyncio.sleep(1)
            return before == len(yielded(daemon, x))

        await eventually(stalled, 30, "the model to stop")
        # 64 KiB per response: what the socket buffers and write_buffer_bytes (1 MiB) hold, and a few more.
        assert len(yielded(daemon, x)) < 100
        with Client(socket=daemon.socket_path, timeout=10) as client:  # the daemon serves on meanwhile
            started = time.monotonic()
            assert client.infer("double", {"x": np.array([3])})["y"].tolist() == [6]
            assert time.monotonic() - started < 2
        # execution_timeout_s (5 s) ends the request: its worker is killed, and replaced.
        await eventually(lambda: len([e for e in daemon.events("batch timed out; killing its worker")
                                      if e.get("model") == "endless"]) >= x, 30, "execution_timeout_s to end it")
    finally:
        sock.close()
    with Client(socket=daemon.socket_path, timeout=30) as client:
        for reply in client.stream("endless", {"x": np.array([0])}):
            assert reply["y"].tolist() == [1]
            break


async def test_a_slow_async_stream_consumer_stalls_the_model(daemon):
    """The async client read every reply into an unbounded queue: a consumer that sleeps let the
    model run on (and the client's memory grow) until execution_timeout_s killed it."""
    async with AsyncClient(socket=daemon.socket_path, timeout=30) as client:
        replies = client.stream("endless", {"x": np.array([14])})
        assert (await anext(replies))["y"].tolist() == [1]

        async def stalled():
            before = len(yielded(daemon, 14))
            await asyncio.sleep(1)
            return before == len(yielded(daemon, 14))

        await eventually(stalled, 4, "the model to stop while the consumer sleeps")
        # STREAM_BUFFER (8) here, what the socket and the daemon's write buffer hold (1 MiB), WINDOW (4).
        assert len(yielded(daemon, 14)) < 60
        for n in range(2, 6):  # the consumer goes on: so does the stream, in order
            assert (await anext(replies))["y"].tolist() == [n]
        await replies.aclose()


async def test_a_client_that_goes_away_mid_stream_stops_the_model(daemon):
    with Client(socket=daemon.socket_path, timeout=30) as client:  # Unix: leaving the loop closes the connection
        for n, reply in enumerate(client.stream("endless", {"x": np.array([10])}), 1):
            assert reply["y"].tolist() == [n]
            if n == 3:
                break
    await eventually(lambda: yielded(daemon, 10)[-1:] == ["closed"], 30, "the Unix stream's model to stop")

    async with AsyncClient(socket=daemon.socket_path, timeout=30) as client:  # async: a "cancel" on the same connection
        async for reply in client.stream("endless", {"x": np.array([13])}):
            if reply["y"][0] == 3:
                break
        await eventually(lambda: yielded(daemon, 13)[-1:] == ["closed"], 30, "the async stream's model to stop")
        assert (await client.infer("double", {"x": np.array([2])}))["y"].tolist() == [4]
        assert client.connections_opened == 1

    async with aiohttp.ClientSession() as session:  # HTTP: the connection closes after three events
        async with session.post(f"{daemon.url}/v2/models/endless/generate_stream", json={"x": 11}) as r:
            events = 0
            async for line in r.content:
                events += line.startswith(b"data: ")
                if events == 3:
                    break
            r.close()
    await eventually(lambda: yielded(daemon, 11)[-1:] == ["closed"], 30, "the SSE stream's model to stop")

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port(daemon)}")  # gRPC: the stream is cancelled
    got: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put(error or result))
    tensor = grpcclient.InferInput("x", [1], "INT64")
    tensor.set_data_from_numpy(np.array([12], np.int64))
    client.async_stream_infer("endless", [tensor])
    assert [int(got.get(timeout=30).as_numpy("y")[0]) for _ in range(3)] == [1, 2, 3]
    client.stop_stream(cancel_requests=True)
    client.close()
    await eventually(lambda: yielded(daemon, 12)[-1:] == ["closed"], 30, "the gRPC stream's model to stop")
    # Going away is no failure of the daemon's: nothing logged as one.
    assert not [e for e in daemon.log_events() if e.get("event") in ("HTTP request failed", "gRPC stream failed",
                                                                     "gRPC stream request failed", "unix-socket reply failed")]


def test_too_many_requests_in_flight_on_one_grpc_stream_are_refused_one_by_one(daemon):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port(daemon)}")
    got: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put(error or result))
    inputs = []
    for name, array in (("IN", np.array([1], np.int32)), ("DELAY", np.array([3000], np.uint32)), ("WAIT", np.zeros(1, np.uint32))):
        inputs.append(grpcclient.InferInput(name, list(array.shape), "INT32" if name == "IN" else "UINT32"))
        inputs[-1].set_data_from_numpy(array)
    for i in range(MAX_IN_FLIGHT + 5):
        client.async_stream_infer("held_repeat", inputs, request_id=str(i))
    refused = [got.get(timeout=30) for _ in range(5)]
    assert all(isinstance(e, InferenceServerException) and f"this stream has {MAX_IN_FLIGHT} requests running" in e.message()
               for e in refused)
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)
    client.stop_stream(cancel_requests=True)  # withdraws them all: the one running stops too
    client.close()
    with Client(socket=daemon.socket_path, timeout=30) as c:  # its worker is free again
        ins = {"IN": np.array([7], np.int32), "DELAY": np.zeros(1, np.uint32), "WAIT": np.zeros(1, np.uint32)}
        assert [r["OUT"].tolist() for r in c.stream("held_repeat", ins)] == [[7]]


@pytest.mark.parametrize("x, responses, message", [
    (1, 2, "ValueError: midway"),
    (2, 2, "did not return output 'y'"),
    (3, 0, "must be a generator"),
    (4, 1, "output 'y' has shape [2], declared [1]"),
])
def test_a_careless_model_fails_its_request_after_what_it_sent_and_serves_on(daemon, x, responses, message):
    with Client(socket=daemon.socket_path, timeout=30) as client:
        got = []
        with pytest.raises(InferdClientError) as e:
            for reply in client.stream("careless", {"x": np.array([x])}):
                got.append(int(reply["y"][0]))
        assert got == list(range(1, responses + 1))
        assert e.value.code == "internal" and message in e.value.message
        assert [int(r["y"][0]) for r in client.stream("careless", {"x": np.array([0])})] == [1, 2, 3]
        assert client.connections_opened == 1
    assert not [e for e in daemon.events("worker exited") if e.get("model") == "careless"]


async def test_cancel_on_the_unix_socket_ends_the_stream_with_cancelled(daemon):
    def exactly(sock, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the daemon closed the connection"
            data += chunk
        return data

    def read(sock) -> dict:
        (length,) = struct.unpack(">I", exactly(sock, 4))
        return msgpack.unpackb(exactly(sock, length))

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(daemon.socket_path)
        sock.sendall(unix_stream_request(14))
        first = read(sock)
        assert first["id"] == 1 and first["final"] is False and first["ok"]
        for request, target in ((2, 1), (3, 99), (4, "x")):
            payload = msgpack.packb({"id": request, "op": "cancel", "request": target})
            sock.sendall(struct.pack(">I", len(payload)) + payload)
        replies = {}
        while len(replies) < 4:
            reply = read(sock)
            if reply["id"] != 1 or reply.get("final"):
                replies[reply["id"]] = reply
        assert replies[1]["ok"] is False and replies[1]["final"] is True and replies[1]["error"]["code"] == "cancelled"
        assert replies[2] == {"id": 2, "ok": True, "cancelled": True}
        assert replies[3] == {"id": 3, "ok": True, "cancelled": False}
        assert replies[4]["ok"] is False and replies[4]["error"]["code"] == "invalid_argument"
    await eventually(lambda: yielded(daemon, 14)[-1:] == ["closed"], 30, "the cancelled stream's model to stop")


def test_a_plain_request_marked_stream_false_is_no_stream_to_cancel(daemon):
    """`"stream": false` is a plain request: it is answered once, not marked final, and a cancel
    naming it finds no stream (it was once entered among the connection's streams, where it
    stayed, one entry per request, for the connection's life)."""
    x_raw = np.array([21], np.int64).tobytes()
    frames = b""
    for msg in ({"id": 1, "op": "infer", "stream": False, "model": "double",
                 "inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": x_raw}]},
                {"id": 2, "op": "cancel", "request": 1}):
        payload = msgpack.packb(msg)
        frames += struct.pack(">I", len(payload)) + payload
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(daemon.socket_path)
        sock.sendall(frames)  # (one write: the cancel is read while the infer runs)
        replies = {}
        data = b""
        while len(replies) < 2:
            chunk = sock.recv(1 << 16)
            assert chunk, "the daemon closed the connection"
            data += chunk
            while len(data) >= 4 and len(data) >= 4 + struct.unpack(">I", data[:4])[0]:
                (length,) = struct.unpack(">I", data[:4])
                reply = msgpack.unpackb(data[4:4 + length])
                data = data[4 + length:]
                replies[reply["id"]] = reply
    assert replies[2] == {"id": 2, "ok": True, "cancelled": False}
    assert replies[1]["ok"] is True and "final" not in replies[1]
    assert np.frombuffer(replies[1]["outputs"][0]["data"], np.int64).tolist() == [42]


def raw_stream(port: int, body: bytes, end: bool = True) -> tuple[str, list]:
    """ModelStreamInfer over raw HTTP/2 with `body` (framed messages): (grpc-status, answers)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "localhost"),
                          (":path", "/inference.GRPCInferenceService/ModelStreamInfer"),
                          ("content-type", "application/grpc"), ("te", "trailers")])
    conn.send_data(1, body, end_stream=end)
    data, answers = b"", []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(conn.data_to_send())
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return "EOF", answers
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                    while len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[1:5], "big"):
                        size = int.from_bytes(data[1:5], "big")
                        answers.append(pb.ModelStreamInferResponse.FromString(data[5:5 + size]))
                        data = data[5 + size:]
                elif isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                    fields = dict(event.headers)
                    if "grpc-status" in fields:
                        return fields["grpc-status"] + " " + fields.get("grpc-message", ""), answers
            sock.sendall(conn.data_to_send())


def test_bad_messages_on_a_grpc_stream(daemon):
    port = grpc_port(daemon)
    good = pb.ModelInferRequest(model_name="double", id="ok")
    good.inputs.add(name="x", datatype="INT64", shape=[1], contents=pb.InferTensorContents(int64_contents=[5]))
    # A message that does not parse is that request's error; the stream goes on and ends OK.
    status, answers = raw_stream(port, b"\0\0\0\0\3\xff\xff\xff" + framed(good))
    assert status.startswith("0") and len(answers) == 2
    assert "not a valid protobuf message" in answers[0].error_message
    assert answers[1].infer_response.id == "ok" and answers[1].infer_response.raw_output_contents
    # A message over server.max_request_bytes (64 MiB) ends the stream with a status.
    status, _ = raw_stream(port, b"\0" + (1 << 30).to_bytes(4, "big"), end=False)
    assert status.startswith(str(8)) and "server.max_request_bytes" in status  # RESOURCE_EXHAUSTED
    # A stream cut inside a message: INVALID_ARGUMENT, the daemon serves on.
    status, _ = raw_stream(port, framed(good)[:-2])
    assert status.startswith("3 ")
    with Client(socket=daemon.socket_path, timeout=30) as client:
        assert client.infer("double", {"x": np.array([1])})["y"].tolist() == [2]


def test_sigterm_ends_endless_streams_within_the_drain_timeout(tmp_path):
    """Streams being read (Unix socket, gRPC) of a model that never ends: the drain waits
    server.drain_timeout_s, then each stream ends with "shutting down", the models stop, and
    the daemon exits 0."""
    root = stream_models(tmp_path / "models")
    (root / "endless" / "config.toml").write_text("execution_timeout_s = 60\nmin_workers = 2\n")
    with DaemonProcess(root, env={"INFERD_SERVER_DRAIN_TIMEOUT_S": "2"}) as d:
        errors: queue.Queue = queue.Queue()

        def unix():
            try:
                with Client(socket=d.socket_path, timeout=60) as client:
                    for _ in client.stream("endless", {"x": np.array([20])}):
                        pass
            except InferdClientError as e:
                errors.put(("unix", e.code, e.message))

        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port(d)}")
        grpc.start_stream(callback=lambda result, error: error and errors.put(("grpc", "", error.message())))
        tensor = grpcclient.InferInput("x", [1], "INT64")
        tensor.set_data_from_numpy(np.array([21], np.int64))
        grpc.async_stream_infer("endless", [tensor])
        reader = threading.Thread(target=unix)
        reader.start()
        asyncio.run(eventually(lambda: len(yielded(d, 20)) > 10 and len(yielded(d, 21)) > 10, 30, "both streams"))
        started = time.monotonic()
        assert d.terminate(timeout=60) == 0
        assert time.monotonic() - started < 2 + 15
        reader.join(10)
        got = [errors.get(timeout=10) for _ in range(2)]
        assert ("unix", "unavailable", "the server is shutting down") in got
        assert any(p == "grpc" and "shutting down" in m for p, _, m in got)
        grpc.close()
