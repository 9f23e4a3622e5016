"""inferd.backends.triton.bls without a daemon: what a call says when there is no socket, or a bad
argument; its error codes against the daemon's; and its connections, against a stand-in that
speaks the Unix-socket protocol (one connection per process, a new one when it drops)."""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
import threading

import msgpack
import numpy as np
import pytest

from inferd.backends.triton import bls
from inferd.daemon.frontends.unix_codec import WIRE_CODES


@pytest.fixture(autouse=True)
def unconfigured():
    yield
    bls.configure("")


async def _first(responses):
    return [r async for r in responses]


CALLS = {
    "infer": lambda *a: bls.infer(*a),
    "stream": lambda *a: list(bls.stream(*a)),
    "async_infer": lambda *a: asyncio.run(bls.async_infer(*a)),
    "async_stream": lambda *a: asyncio.run(_first(bls.async_stream(*a))),
}
X = {"x": np.ones(2, np.float32)}


@pytest.mark.parametrize("how", CALLS)
def test_without_a_daemon_socket_every_call_is_unavailable(how):
    bls.configure("")
    with pytest.raises(bls.BlsError) as e:
        CALLS[how]("double", "", X, None, {}, None)
    assert e.value.code == "UNAVAILABLE" and "no Unix socket" in e.value.message


@pytest.mark.parametrize("how", CALLS)
def test_a_daemon_that_is_not_there_is_unavailable(how, tmp_path):
    bls.configure(str(tmp_path / "inferd.sock"))
    with pytest.raises(bls.BlsError) as e:
        CALLS[how]("double", "", X, None, {}, 5)
    assert e.value.code == "UNAVAILABLE" and "cannot connect" in e.value.message


@pytest.mark.parametrize("args, says", [
    (("", "", X, None, {}, None), "must be named"),
    (("m", "", [1, 2], None, {}, None), "inputs must map"),
    (("m", "", X, None, ["p"], None), "parameters must be a dict"),
    (("m", "", X, None, {}, 0), "timeout_s"),
    (("m", "", X, None, {}, -1.0), "timeout_s"),
    (("m", "", X, None, {}, "5"), "timeout_s"),
])
def test_bad_arguments_are_invalid_arg(args, says, tmp_path):
    bls.configure(str(tmp_path / "inferd.sock"))
    with pytest.raises(bls.BlsError) as e:
        bls.infer(*args)
    assert e.value.code == "INVALID_ARG" and says in e.value.message


def test_a_stream_says_a_bad_argument_when_called_not_when_iterated():
    bls.configure("")
    for stream in (bls.stream, bls.async_stream):
        with pytest.raises(bls.BlsError) as e:
            stream("double", "", X, None, {}, None)
        assert e.value.code == "UNAVAILABLE"


def test_every_daemon_error_code_has_a_triton_name():
    assert set(WIRE_CODES.values()) <= set(bls.TRITON_CODES)
    assert set(bls.TRITON_CODES.values()) <= {"UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE",
                                              "UNSUPPORTED", "ALREADY_EXISTS", "CANCELLED"}


def test_the_error_pickles_and_says_its_code():
    error = pickle.loads(pickle.dumps(bls.BlsError("NOT_FOUND", "unknown model 'm'")))
    assert (error.code, error.message, str(error)) == ("NOT_FOUND", "unknown model 'm'", "NOT_FOUND: unknown model 'm'")


class StandIn:
    """Answers every infer with y = 2x; after `drop_after` replies on a connection, closes it."""

    def __init__(self, path: str, drop_after: int | None = None):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen()
        self.drop_after = drop_after
        self.connections = 0
        self.requests: list[dict] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        answered = 0
        while self.drop_after is None or answered < self.drop_after:
            header = conn.recv(4, socket.MSG_WAITALL)
            if len(header) < 4:
                return
            request = msgpack.unpackb(conn.recv(struct.unpack(">I", header)[0], socket.MSG_WAITALL))
            self.requests.append(request)
            [x] = request["inputs"]
            y = (np.frombuffer(x["data"], np.float32) * 2).tobytes()
            payload = msgpack.packb({"id": request["id"], "ok": True, "model": request["model"], "version": "1",
                                     "outputs": [dict(x, name="y", data=y)]})
            conn.sendall(struct.pack(">I", len(payload)) + payload)
            answered += 1

    def close(self) -> None:
        self.listener.close()


def test_calls_share_one_connection_and_send_what_they_were_given(tmp_path):
    path = str(tmp_path / "inferd.sock")
    stand_in = StandIn(path)
    bls.configure(path)
    try:
        for i in range(3):
            out = bls.infer("double", "2", {"x": np.full(2, i, np.float32)}, "y", {"note": "hi"}, 1.5)
            assert out["y"].tolist() == [2 * i, 2 * i]
            out["y"][0] = -1  # the caller's own array, not a read-only view of the reply
        bls.infer("double", -1, X)  # Triton's "latest": the serving version
    finally:
        stand_in.close()
    assert stand_in.connections == 1
    assert {k: stand_in.requests[0][k] for k in ("model", "version", "outputs", "parameters", "timeout_ms")} == {
        "model": "double", "version": "2", "outputs": ["y"], "parameters": {"note": "hi"}, "timeout_ms": 1500}
    assert "version" not in stand_in.requests[-1] and "outputs" not in stand_in.requests[-1]


def test_a_dropped_connection_is_opened_again(tmp_path):
    path = str(tmp_path / "inferd.sock")
    stand_in = StandIn(path, drop_after=1)
    bls.configure(path)
    try:
        assert [bls.infer("double", "", {"x": np.full(1, i, np.float32)})["y"].tolist() for i in range(3)] == [[0], [2], [4]]
    finally:
        stand_in.close()
    assert stand_in.connections == 3
