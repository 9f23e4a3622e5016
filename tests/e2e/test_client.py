"""inferd.client against the real daemon, over its Unix socket and over HTTP, blocking and
asyncio; plus a scripted stand-in daemon for connections that drop."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import msgpack
import numpy as np
import pytest
from samples import EVERY_DATATYPE

from inferd.client import AsyncClient, Client, InferdClientError, default_socket_path

RNG = np.random.default_rng(11)


class _Blocking:
    """A blocking Client behind AsyncClient's awaitable methods, so one test covers both."""

    def __init__(self, client: Client):
        self._client = client

    @property
    def connections_opened(self) -> int:
        return self._client.connections_opened

    def __getattr__(self, name):
        method = getattr(self._client, name)

        async def call(*args, **kwargs):
            return method(*args, **kwargs)

        return call


def _where(daemon, transport: str) -> dict:
    return {"socket": daemon.socket_path} if transport == "unix" else {"url": daemon.url}


@pytest.fixture(params=["sync-unix", "sync-http", "async-unix", "async-http"])
async def client(request, daemon):
    mode, transport = request.param.split("-")
    if mode == "sync":
        with Client(**_where(daemon, transport)) as c:
            yield _Blocking(c)
    else:
        async with AsyncClient(**_where(daemon, transport)) as c:
            yield c


def _add_sub_inputs(rows: int, base: int = 0) -> dict[str, np.ndarray]:
    a = (base + np.arange(rows * 16, dtype=np.int32)).reshape(rows, 16)
    return {"INPUT0": a, "INPUT1": RNG.integers(-1000, 1000, (rows, 16), dtype=np.int32)}


@pytest.mark.parametrize("rows", [1, 8])
async def test_mlp_matches_onnxruntime(client, reference, rows):
    x = RNG.standard_normal((rows, 512)).astype(np.float32)
    outputs = await client.infer("mlp", {"input": x}, request_id=f"mlp-{rows}")
    assert list(outputs) == ["output"]
    assert outputs["output"].dtype == np.float32 and outputs["output"].shape == (rows, 10)
    np.testing.assert_allclose(outputs["output"], reference("mlp", {"input": x})["output"], atol=1e-5)


async def test_requested_outputs_only(client):
    inputs = _add_sub_inputs(3)
    outputs = await client.infer("add_sub", inputs, outputs=["OUTPUT1"], version="1")
    assert list(outputs) == ["OUTPUT1"]
    np.testing.assert_array_equal(outputs["OUTPUT1"], inputs["INPUT0"] - inputs["INPUT1"])


async def test_every_v2_datatype_round_trips(client):
    text = np.array([[b.decode() for b in EVERY_DATATYPE["BYTES"][0]]])
    values = {**EVERY_DATATYPE, "BYTES": text}  # str elements: sent as UTF-8
    outputs = await client.infer("identity_all", {f"IN_{t}": v for t, v in values.items()})
    assert sorted(outputs) == sorted(f"OUT_{t}" for t in values)
    for datatype, array in values.items():
        got = outputs[f"OUT_{datatype}"]
        assert got.shape == array.shape, datatype
        if datatype == "BYTES":
            assert got.dtype == object
            assert got.tolist() == [[s.encode() for s in row] for row in array.tolist()]
        else:
            assert got.dtype == array.dtype, datatype
            np.testing.assert_array_equal(got, array)
    # bytes elements go through as they are (UTF-8 here: the model's tensor is an ONNX string)
    raw = np.array([["café".encode(), b"x"]], dtype=object)
    out = await client.infer("identity_all", {**{f"IN_{t}": v[:, :2] for t, v in values.items()}, "IN_BYTES": raw},
                             outputs=["OUT_BYTES"])
    assert out["OUT_BYTES"].tolist() == raw.tolist()


async def test_errors_carry_the_protocol_code_and_the_client_keeps_working(client):
    good = _add_sub_inputs(2)

    async def still_works():
        out = await client.infer("add_sub", good)
        np.testing.assert_array_equal(out["OUTPUT0"], good["INPUT0"] + good["INPUT1"])

    with pytest.raises(InferdClientError) as e:
        await client.infer("no_such_model", good)
    assert e.value.code == "not_found" and "no_such_model" in e.value.message
    assert str(e.value).startswith("not_found: ")
    await still_works()

    with pytest.raises(InferdClientError) as e:
        await client.infer("add_sub", {**good, "INPUT0": np.zeros((2, 5), np.int32)})
    assert e.value.code == "invalid_argument" and "INPUT0" in e.value.message
    await still_works()

    with pytest.raises(InferdClientError) as e:
        await client.infer("corrupt", {"x": np.ones((1, 4), np.float32)})
    assert e.value.code == "unavailable" and "FAILED" in e.value.message
    await still_works()

    with pytest.raises(InferdClientError) as e:
        await client.ready("no_such_model")
    assert e.value.code == "not_found"
    await still_works()

    assert client.connections_opened == 1  # errors are answers, not broken connections


async def test_health_metadata_and_models(client):
    assert await client.live() is True
    assert await client.ready() is True
    assert await client.ready("mlp") is True
    assert await client.ready("mlp", version="1") is True
    assert await client.ready("corrupt") is False
    server = await client.server_metadata()
    assert server["name"] == "inferd" and "binary_tensor_data" in server["extensions"]
    meta = await client.model_metadata("mlp")
    assert meta["name"] == "mlp" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 512]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    models = {m["name"]: m for m in await client.models()}
    assert models["mlp"]["state"] == "READY"
    assert models["corrupt"]["state"] == "FAILED" and models["corrupt"]["reason"]


@pytest.mark.parametrize("transport", ["unix", "http"])
async def test_concurrent_callers_each_get_their_own_rows(daemon, transport):
    """32 callers x 50 requests on one AsyncClient; every request's values say whose it is."""
    async with AsyncClient(**_where(daemon, transport)) as c:

        async def caller(i: int) -> int:
            for j in range(50):
                inputs = _add_sub_inputs(1 + (i + j) % 4, base=(i * 50 + j) * 1000)
                out = await c.infer("add_sub", inputs)
                np.testing.assert_array_equal(out["OUTPUT0"], inputs["INPUT0"] + inputs["INPUT1"])
                np.testing.assert_array_equal(out["OUTPUT1"], inputs["INPUT0"] - inputs["INPUT1"])
            return i

        assert await asyncio.gather(*(caller(i) for i in range(32))) == list(range(32))
        if transport == "unix":
            assert c.connections_opened == 1  # pipelined, not pooled


async def test_replies_out_of_order_and_a_cancelled_caller(daemon):
    """A slow request keeps running while later ones are answered; a caller that gives up on
    one leaves the connection to everyone else, and its late reply is dropped."""
    big = RNG.standard_normal((256, 1024)).astype(np.float32)
    inputs = _add_sub_inputs(2)
    async with AsyncClient(socket=daemon.socket_path) as c:
        assert await c.live()
        slow = asyncio.create_task(c.infer("slow", {"x": big}))
        await asyncio.sleep(0)  # the slow request is sent first
        out = await c.infer("add_sub", inputs)
        np.testing.assert_array_equal(out["OUTPUT0"], inputs["INPUT0"] + inputs["INPUT1"])
        assert not slow.done()  # its reply comes after the add_sub's
        assert (await slow)["y"].shape == (256, 1024)

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.infer("slow", {"x": big}), timeout=0.01)
        out = await c.infer("add_sub", inputs)
        np.testing.assert_array_equal(out["OUTPUT1"], inputs["INPUT0"] - inputs["INPUT1"])
        # The same work sent later: by its answer the abandoned request's has come too, unclaimed.
        assert (await c.infer("slow", {"x": big}))["y"].shape == (256, 1024)
        out = await c.infer("add_sub", inputs)
        np.testing.assert_array_equal(out["OUTPUT0"], inputs["INPUT0"] + inputs["INPUT1"])
        assert c.connections_opened == 1


@pytest.mark.parametrize("transport", ["unix", "http"])
def test_timeout_ms_is_a_queue_deadline(daemon, transport):
    """`held` holds a lone request for 1 s; with 200 ms to live it is answered deadline_exceeded
    when its deadline passes, not when the hold ends; with a long deadline it is served; with
    none left it is answered at once."""
    inputs = _add_sub_inputs(1)
    where = {"socket": daemon.socket_path} if transport == "unix" else {"url": daemon.url}
    with Client(**where, timeout=30) as c:  # (an answer lost would fail the test, not hang it)
        out = c.infer("add_sub", inputs, timeout_ms=60_000)
        np.testing.assert_array_equal(out["OUTPUT0"], inputs["INPUT0"] + inputs["INPUT1"])
        started = time.monotonic()
        with pytest.raises(InferdClientError) as e:
            c.infer("held", inputs, timeout_ms=200)
        assert e.value.code == "deadline_exceeded"
        assert time.monotonic() - started < 0.9
        # Already expired when queued, at light load (the last batch was a lone request): the
        # queue answers it inside the call that queues it, and the connection goes on serving.
        for _ in range(2):
            with pytest.raises(InferdClientError) as e:
                c.infer("add_sub", inputs, timeout_ms=0)
            assert e.value.code == "deadline_exceeded"
            out = c.infer("add_sub", inputs)
            np.testing.assert_array_equal(out["OUTPUT1"], inputs["INPUT0"] - inputs["INPUT1"])


def test_unreachable_socket_is_unavailable(tmp_path):
    path = str(tmp_path / "nobody.sock")
    with Client(socket=path) as c, pytest.raises(InferdClientError) as e:
        c.live()
    assert e.value.code == "unavailable" and path in e.value.message


def test_default_socket_path_follows_the_daemons_auto(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "inferd.sock").touch()
    assert default_socket_path() == str(tmp_path / "inferd.sock")
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "unit"))
    (tmp_path / "unit").mkdir()
    (tmp_path / "unit" / "inferd.sock").touch()
    assert default_socket_path() == str(tmp_path / "unit" / "inferd.sock")


# -- connections that drop: a scripted stand-in for the daemon -------------------------------


def _read_frame(conn: socket.socket) -> dict | None:
    header = conn.recv(4, socket.MSG_WAITALL)
    if len(header) < 4:
        return None
    (length,) = struct.unpack(">I", header)
    return msgpack.unpackb(conn.recv(length, socket.MSG_WAITALL))


def _answer(conn: socket.socket, request: dict) -> None:
    payload = msgpack.packb({"id": request["id"], "ok": True, "live": True})
    conn.sendall(struct.pack(">I", len(payload)) + payload)


def _unix_listener(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    return listener


class _StandIn:
    """Serves one scripted function per connection, in order, on a thread."""

    def __init__(self, listener: socket.socket, *scripts):
        self.listener = listener
        self.thread = threading.Thread(target=self._serve, args=(scripts,), daemon=True)

    def _serve(self, scripts) -> None:
        for script in scripts:
            conn, _ = self.listener.accept()
            with conn:
                script(conn)

    def __enter__(self) -> _StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(10)
        self.listener.close()
        assert not self.thread.is_alive()


def _answer_one_then_close(conn: socket.socket) -> None:
    _answer(conn, _read_frame(conn))


def test_sync_client_resends_once_when_its_idle_connection_was_closed(tmp_path):
    path = str(tmp_path / "s.sock")
    with _StandIn(_unix_listener(path), _answer_one_then_close, _answer_one_then_close), Client(socket=path) as c:
        assert c.live()
        assert c.live()  # the first connection is gone by now: sent again on a new one
        assert c.connections_opened == 2


def test_sync_http_resends_once_when_its_keep_alive_connection_was_closed():
    def answer_then_close(conn):
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # keep-alive, then gone

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with _StandIn(listener, answer_then_close, answer_then_close), Client(url=f"http://127.0.0.1:{port}") as c:
        assert c.live()
        assert c.live()
        assert c.connections_opened == 2


async def test_async_calls_in_flight_fail_when_the_connection_drops_and_the_next_reconnects(tmp_path):
    path = str(tmp_path / "a.sock")

    def read_two_then_close(conn):
        assert _read_frame(conn) and _read_frame(conn)

    with _StandIn(_unix_listener(path), read_two_then_close, _answer_one_then_close):
        async with AsyncClient(socket=path) as c:
            results = await asyncio.gather(c.live(), c.live(), return_exceptions=True)
            assert [type(r) for r in results] == [InferdClientError, InferdClientError]
            assert {r.code for r in results} == {"unavailable"}
            assert "lost the connection" in results[0].message
            assert await c.live() is True
            assert c.connections_opened == 2
