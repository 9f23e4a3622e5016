"""Hostile connections against every listener of the real daemon: slowloris heads and bodies,
idle connections under a low descriptor limit, replies left unread, an HTTP/2 PING flood, and a
listener that cannot bind. Raw sockets, so that the bytes are exactly the hostile ones."""

from __future__ import annotations

import json
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess

from inferd.client import Client

LIMITS = {  # short, so that the tests are; the defaults are in docs/operations.md
    "INFERD_SERVER_HEADER_TIMEOUT_S": "1",
    "INFERD_SERVER_BODY_TIMEOUT_S": "2",
    "INFERD_SERVER_IDLE_TIMEOUT_S": "3",
}
CLOSED_WITHIN_S = 20  # generous: the timeouts above are 1-3 s and the sweep runs every second

ECHO = '''
class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 16384]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1, 16384]}]

    def infer(self, inputs):
        return {"y": inputs["x"]}
'''
ROW = np.ones((1, 16384), np.float32)  # 64 KiB in, 64 KiB out

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


H2_SETTINGS = h2_frame(0x4, 0, 0)
H2_PING = h2_frame(0x6, 0, 0, b"12345678")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "echo" / "1").mkdir(parents=True)
    (root / "echo" / "1" / "model.py").write_text(ECHO)
    return root


@pytest.fixture(scope="module")
def daemon(repo):
    with DaemonProcess(repo, env=LIMITS) as d:
        yield d


def grpc_address(d: DaemonProcess) -> tuple[str, int]:
    [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
    host, port = event["address"].rsplit(":", 1)
    return host, int(port)


def connect(d: DaemonProcess, listener: str) -> socket.socket:
    if listener in ("socket", "http_socket"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(d.socket_path if listener == "socket" else d.http_socket_path)
    else:
        sock = socket.create_connection(d.address if listener == "http" else grpc_address(d))
    sock.setblocking(False)
    return sock


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def closed_by_server(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass  # (a 408 or a GOAWAY first is fine)
        return True
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def trickle(socks: list[socket.socket], head: bytes, drip: bytes, seconds: float) -> float | None:
    """Send `head` on each socket, then one `drip` every 0.2 s on each, as slowloris does, until
    the daemon has closed them all (returns how long that took) or `seconds` pass (None)."""
    for s in socks:
        s.send(head)
    started = time.monotonic()
    open_ = list(socks)
    while open_ and time.monotonic() - started < seconds:
        select.select(open_, [], [], 0.2)
        open_ = [s for s in open_ if not closed_by_server(s)]
        for s in open_:
            try:
                s.send(drip)
            except (BlockingIOError, ConnectionError):
                pass
    return None if open_ else time.monotonic() - started


SLOWLORIS = {  # listener -> (what is sent at once, what drips after it)
    "http": (b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\n", b"X"),  # a head that never ends
    "http_socket": (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a"),
    "http body": (b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{", b" "),
    "socket": (struct.pack(">I", 100_000) + b"\x85", b"\xc0"),  # a frame that never completes
    "grpc": (H2_PREFACE[:10], b""),  # a connection preface that never completes (idle: no call)
}


@pytest.mark.parametrize("case", list(SLOWLORIS))
def test_slowloris_connections_are_closed_and_the_listener_serves_on(daemon, case):
    listener = case.split()[0]
    socks = [connect(daemon, listener) for _ in range(50)]
    try:
        took = trickle(socks, *SLOWLORIS[case], seconds=CLOSED_WITHIN_S)
        assert took is not None, f"slowloris connections on {listener} were still open after {CLOSED_WITHIN_S} s"
    finally:
        for s in socks:
            s.close()
    with Client(socket=daemon.socket_path, timeout=10) as c:
        assert c.live()
    assert daemon.http_get("/v2/health/live") == b'{"live":true}'


def test_a_slow_http_body_gets_408(daemon):
    """The handler reading the body is answered, not left waiting (the head had arrived)."""
    sock = connect(daemon, "http")
    sock.setblocking(True)
    sock.settimeout(CLOSED_WITHIN_S)
    sock.sendall(b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    answer = b""
    try:
        while chunk := sock.recv(4096):  # to the end: the daemon closes the connection after it
            answer += chunk
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ") and b"server.body_timeout_s" in answer, answer
    assert not [line for line in daemon.lines if "Traceback" in line or "Unhandled" in line]


def test_idle_connections_are_closed_but_a_waiting_caller_is_not(daemon):
    """Idle: no request in progress, on any listener (an HTTP/2 client that has sent its preface
    and SETTINGS too). A client that keeps using its connection keeps it."""
    socks = {name: connect(daemon, name) for name in ("http", "http_socket", "socket", "grpc")}
    socks["grpc"].send(H2_PREFACE + H2_SETTINGS)  # a complete, well-behaved, idle HTTP/2 client
    try:
        deadline = time.monotonic() + CLOSED_WITHIN_S
        while time.monotonic() < deadline and not all(closed_by_server(s) for s in socks.values()):
            time.sleep(0.2)
        assert all(closed_by_server(s) for s in socks.values()), [n for n, s in socks.items() if not closed_by_server(s)]
    finally:
        for s in socks.values():
            s.close()
    with Client(socket=daemon.socket_path, timeout=30) as c:  # a busy client keeps its connection
        for _ in range(3):
            assert c.infer("echo", {"x": ROW})["y"].shape == ROW.shape
            time.sleep(1.5)  # half the idle timeout between calls
        assert c.connections_opened == 1


NOFILE = 400


def test_idle_connections_under_a_low_descriptor_limit_lock_out_no_front_end(repo):
    """450 idle connections where the daemon may open only 400 descriptors (before: every
    front-end refused or reset new connections): each listener's cap is fitted to the limit,
    and at the cap the longest-idle connection makes room."""
    program = [sys.executable, "-c", "import resource, runpy; "
               f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE})); "
               "runpy.run_module('inferd.daemon', run_name='__main__', alter_sys=True)"]
    with DaemonProcess(repo, program=program) as d:  # the default timeouts: the flood stays idle
        flood = []
        try:
            for _ in range(450):
                try:
                    flood.append(connect(d, "http"))
                except OSError:
                    break
            time.sleep(1)  # let the daemon accept them all
            assert d.http_get("/v2/health/live") == b'{"live":true}'
            with Client(socket=d.socket_path, timeout=10) as c:
                assert c.live()
                assert c.infer("echo", {"x": ROW})["y"].shape == ROW.shape
            client = grpcclient.InferenceServerClient("{}:{}".format(*grpc_address(d)))
            try:
                assert client.is_server_live(client_timeout=10)
            finally:
                client.close()
        finally:
            for s in flood:
                s.close()
        [fitted] = d.events("too few file descriptors for server.max_connections; lowering it")
        assert fitted["per_listener"] * 4 < NOFILE


def test_at_the_connection_cap_the_longest_idle_connection_makes_room(repo):
    with DaemonProcess(repo, env={"INFERD_SERVER_MAX_CONNECTIONS": "5"}) as d:
        idle = []
        for _ in range(5):
            idle.append(connect(d, "socket"))
            time.sleep(0.05)  # in order: the first is the longest idle
        with Client(socket=d.socket_path, timeout=10) as c:
            assert c.infer("echo", {"x": ROW})["y"].shape == ROW.shape  # a sixth connection is served
            deadline = time.monotonic() + CLOSED_WITHIN_S
            while not closed_by_server(idle[0]):
                assert time.monotonic() < deadline, "the longest-idle connection was not closed"
                time.sleep(0.1)
            assert not any(closed_by_server(s) for s in idle[1:])
        for s in idle:
            s.close()


def infer_frame(request_id: int) -> bytes:
    payload = msgpack.packb({"op": "infer", "id": request_id, "model": "echo",
                             "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16384], "data": ROW.tobytes()}]})
    return struct.pack(">I", len(payload)) + payload


def send_until_blocked(sock: socket.socket, data: bytes, stalled_s: float = 3.0) -> int:
    """Send as much of `data` as the daemon reads; stop once it has read nothing for `stalled_s`."""
    view, sent, stalled_since = memoryview(data), 0, time.monotonic()
    while sent < len(data) and time.monotonic() - stalled_since < stalled_s:
        _, writable, _ = select.select([], [sock], [], 0.2)
        if writable:
            try:
                n = sock.send(view[sent : sent + (1 << 20)])
            except BlockingIOError:
                continue
            except ConnectionError:  # the daemon cut the connection
                break
            sent += n
            stalled_since = time.monotonic()
    return sent


def test_unread_replies_stop_the_socket_being_read_and_bound_memory(daemon):
    """3,000 pipelined 64 KiB requests whose replies are never read: the daemon stops reading
    the connection once the unread replies pass server.write_buffer_bytes."""
    with Client(socket=daemon.socket_path, timeout=30) as c:  # warm: worker, shared memory, buffers
        for _ in range(20):
            c.infer("echo", {"x": np.ones((8, 16384), np.float32)})
    before = rss_bytes(daemon.proc.pid)
    sock = connect(daemon, "socket")
    try:
        sent = send_until_blocked(sock, b"".join(infer_frame(i) for i in range(3000)))
        grown = rss_bytes(daemon.proc.pid) - before
        assert sent < 3000 * 65536 / 4, f"the daemon read {sent / 2**20:.0f} MiB of requests whose replies were unread"
        assert grown < 48 * 2**20, f"the daemon grew by {grown / 2**20:.0f} MiB"
        with Client(socket=daemon.socket_path, timeout=10) as c:
            assert c.live()  # the others are served meanwhile
    finally:
        sock.close()


def test_http2_ping_flood_is_cut_off(daemon):
    sock = connect(daemon, "grpc")
    try:
        before = rss_bytes(daemon.proc.pid)
        sock.setblocking(True)
        sock.sendall(H2_PREFACE + H2_SETTINGS)
        sock.setblocking(False)
        sent = send_until_blocked(sock, H2_PING * 1_000_000)  # 16 MiB of PINGs, their ACKs never read
        grown = rss_bytes(daemon.proc.pid) - before
        deadline = time.monotonic() + CLOSED_WITHIN_S
        while not closed_by_server(sock):
            assert time.monotonic() < deadline, "the flooding connection is still open"
            time.sleep(0.1)
        assert grown < 8 * 2**20, f"the daemon grew by {grown / 2**20:.0f} MiB (sent {sent} bytes of PINGs)"
    finally:
        sock.close()
    client = grpcclient.InferenceServerClient("{}:{}".format(*grpc_address(daemon)))
    try:
        assert client.is_server_live(client_timeout=10)
    finally:
        client.close()


def test_grpc_advertises_its_stream_limit(repo):
    with DaemonProcess(repo, env={"INFERD_SERVER_HTTP2_MAX_STREAMS": "7"}) as d:
        sock = socket.create_connection(grpc_address(d), timeout=10)
        try:
            sock.sendall(H2_PREFACE + H2_SETTINGS)
            data = b""
            advertised = []  # MAX_CONCURRENT_STREAMS of each SETTINGS frame (h2 sends its default first)
            while 7 not in advertised:
                chunk = sock.recv(65536)
                assert chunk, f"no SETTINGS_MAX_CONCURRENT_STREAMS = 7 from the server: {advertised}"
                data += chunk
                while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
                    length, kind, flags = int.from_bytes(data[:3], "big"), data[3], data[4]
                    if kind == 0x4 and not flags & 1:
                        for i in range(9, 9 + length, 6):
                            key, value = struct.unpack(">HI", data[i : i + 6])
                            if key == 3:
                                advertised.append(value)
                    data = data[9 + length :]
        finally:
            sock.close()


@pytest.mark.parametrize("frontend", ["http", "grpc"])
def test_address_in_use_names_the_listener_and_the_address(repo, frontend):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    d = DaemonProcess(repo, f"--{frontend}", address)
    try:
        run = subprocess.run(d.command(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    finally:
        taken.close()
        d.stop()
    assert run.returncode == 1
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    [event] = [e for e in events if e["event"] == "cannot listen"]
    assert (event["frontend"], event["address"]) == (frontend, address)
    assert "in use" in event["error"]
