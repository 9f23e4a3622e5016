"""Closed-loop load generators for HTTP/1.1, the Unix-socket msgpack protocol and gRPC, on uvloop.

They share 2 cores with the server under test, so the hot paths are kept small:
- http: raw asyncio Protocol, pre-encoded request; a bytes.find, two int() parses and one
  transport.write per request. Only Content-Length framing is understood; anything else counts as
  an error and drops the connection.
- unix: raw asyncio Protocol, pre-encoded frame; frames are cut by their 4-byte length and `ok` is
  found by a byte search in the first bytes of the reply (unpacked only when that search fails).
- grpc: grpclib Channel + UnaryUnaryMethod with a pass-through codec: the request is serialized once
  and replies are not parsed (bench.verify parses one per run). grpclib itself costs far more per
  call than the two raw Protocols; use --procs to spread it.

`run_load` is self-contained (imports no numpy, onnxruntime or inferd) so that `--procs N` can run
it in spawned worker processes; windows are given in wall-clock ns and converted to perf_counter here.
"""

from __future__ import annotations

import asyncio
import time

import msgpack
import uvloop

# The daemon packs {"id": N, "ok": true, ...} in that order, so `"ok": true` sits within the first
# bytes of the payload: a map header (1-3), "id" (3), the id (1-9), "ok" (3), true (1).
UNIX_OK = b"\xa2ok\xc3"
UNIX_OK_WITHIN = 4 + 3 + 3 + 9 + 4
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def build_frame(message: dict) -> bytes:
    """One Unix-socket frame: 4-byte big-endian length + msgpack payload."""
    payload = msgpack.packb(message, use_bin_type=True)
    return len(payload).to_bytes(4, "big") + payload


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight (closed loop)."""

    def __init__(self, gen: _Gen):
        self.gen = gen
        self.transport = None
        self.buf = b""
        self.need = -1  # total bytes of the current response once its head is parsed
        self.sent = 0
        self.parked = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def send(self):
        self.sent = time.perf_counter_ns()
        self.transport.write(self.gen.request)

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(None)
        self.gen.on_lost(self)


class _HTTPConn(_Conn):
    status = 0

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        if self.need < 0:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                self.buf = buf
                return
            head = buf[:i].lower()
            j = head.find(b"\ncontent-length:")
            if j < 0 or not head.startswith(b"http/1.1 "):
                self.transport.abort()  # counted as an error by on_lost
                return
            k = head.find(b"\r", j)
            self.need = i + 4 + int(head[j + 16 : k if k > 0 else len(head)])
            self.status = int(head[9:12])
        if len(buf) < self.need:
            self.buf = buf
            return
        self.buf = buf[self.need :]
        self.need = -1
        self.gen.on_response(self, self.status == 200)


class _UnixConn(_Conn):
    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        if len(buf) < 4:
            self.buf = buf
            return
        end = 4 + int.from_bytes(buf[:4], "big")
        if len(buf) < end:
            self.buf = buf
            return
        self.buf = buf[end:]
        ok = buf.find(UNIX_OK, 4, UNIX_OK_WITHIN) > 0 or _unpack_ok(buf[4:end])
        self.gen.on_response(self, ok)


def _unpack_ok(payload: bytes) -> bool:
    """Slow path for a reply whose keys come in another order (or an error reply)."""
    try:
        return msgpack.unpackb(payload).get("ok") is True
    except Exception:  # noqa: BLE001 - anything unreadable is an error reply
        return False


class _Gen:
    def __init__(self, kind, addr, request, n_conns, t_rec, t_end):
        self.kind, self.addr, self.request = kind, addr, request
        self.n_conns, self.t_rec, self.t_end = n_conns, t_rec, t_end
        self.lat: list[int] = []
        self.responses = 0  # all responses, warm-up included (for CPU cost per request)
        self.errors = 0
        self.tasks: set[asyncio.Task] = set()  # strong refs to reconnect tasks
        self.conns: set[_Conn] = set()
        self.stopping = False
        self.idle = 0  # connections that have stopped sending (past t_end)
        self.all_idle = asyncio.get_running_loop().create_future()

    async def connect(self) -> _Conn | None:
        loop = asyncio.get_running_loop()
        try:
            if self.kind == "unix":
                _, conn = await loop.create_unix_connection(lambda: _UnixConn(self), self.addr)
            else:
                _, conn = await loop.create_connection(lambda: _HTTPConn(self), *self.addr)
        except OSError:
            self.errors += 1
            return None
        self.conns.add(conn)
        return conn

    def _park(self, conn: _Conn | None):
        if conn is not None:
            conn.parked = True
        self.idle += 1
        if self.idle >= self.n_conns and not self.all_idle.done():
            self.all_idle.set_result(None)

    def on_response(self, conn: _Conn, ok: bool):
        now = time.perf_counter_ns()
        self.responses += 1
        if self.t_rec <= now <= self.t_end:
            if ok:
                self.lat.append(now - conn.sent)
            else:
                self.errors += 1
        if now < self.t_end:
            conn.send()
        else:
            self._park(conn)

    def on_lost(self, conn: _Conn):
        self.conns.discard(conn)
        if self.stopping or conn.parked:
            return
        # The server dropped us mid-run: count it (outside warm-up) and replace the connection.
        if time.perf_counter_ns() >= self.t_rec:
            self.errors += 1
        task = asyncio.get_running_loop().create_task(self._replace())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _replace(self):
        conn = None
        if time.perf_counter_ns() < self.t_end:
            conn = await self.connect()
        if conn is not None and time.perf_counter_ns() < self.t_end:
            conn.send()
        else:
            self._park(conn)
            if conn is not None:
                conn.transport.close()


async def _run(kind, addr, request, n_conns, t_start, t_rec, t_end, drain_s):
    gen = _Gen(kind, addr, request, n_conns, t_rec, t_end)
    conns = [c for c in await asyncio.gather(*(gen.connect() for _ in range(n_conns))) if c]
    gen.idle = n_conns - len(conns)
    await asyncio.sleep(max(0.0, (t_start - time.perf_counter_ns()) / 1e9))  # start together
    cpu0 = time.process_time()
    for c in conns:
        c.send()
    if not conns:
        gen.all_idle.set_result(None)
    # Bounded: wait for the run plus a drain allowance for the last in-flight responses.
    timeout = (t_end - time.perf_counter_ns()) / 1e9 + drain_s
    try:
        await asyncio.wait_for(asyncio.shield(gen.all_idle), max(timeout, 0.1))
    except TimeoutError:
        gen.errors += gen.n_conns - gen.idle  # still waiting on a response: count as timeouts
    cpu = time.process_time() - cpu0
    gen.stopping = True
    for c in list(gen.conns):
        c.transport.abort()
    await asyncio.gather(*(c.closed for c in conns), return_exceptions=True)
    return {"lat_ns": gen.lat, "errors": gen.errors, "responses": gen.responses, "cpu_s": cpu}


# ---------------------------------------------------------------- gRPC

async def _run_grpc(addr, request, n_clients, n_channels, t_start, t_rec, t_end, drain_s):
    from grpclib.client import Channel, UnaryUnaryMethod
    from grpclib.encoding.base import CodecBase

    class RawCodec(CodecBase):
        """Pass bytes through: the request is serialized once, replies stay unparsed."""
        __content_subtype__ = "proto"

        def encode(self, message, message_type):
            return message

        def decode(self, data, message_type):
            return data

    channels = [Channel(*addr, codec=RawCodec()) for _ in range(min(n_channels, n_clients))]
    methods = [UnaryUnaryMethod(ch, GRPC_METHOD, bytes, bytes) for ch in channels]
    lat: list[int] = []
    counts = {"responses": 0, "errors": 0}

    async def client(method):
        while True:
            sent = time.perf_counter_ns()
            try:
                await method(request)
                ok = True
            except Exception:  # noqa: BLE001 - any failed call (status, reset, refused) is an error
                ok = False
            now = time.perf_counter_ns()
            counts["responses"] += 1
            if t_rec <= now <= t_end:
                if ok:
                    lat.append(now - sent)
                else:
                    counts["errors"] += 1
            if now >= t_end:
                return
            if not ok:
                await asyncio.sleep(0.01)  # don't spin against a server that refuses

    # Channels connect on their first call; open them now so that the start is shared.
    await asyncio.gather(*(ch.__connect__() for ch in channels), return_exceptions=True)
    await asyncio.sleep(max(0.0, (t_start - time.perf_counter_ns()) / 1e9))
    cpu0 = time.process_time()
    tasks = [asyncio.create_task(client(methods[i % len(methods)])) for i in range(n_clients)]
    timeout = (t_end - time.perf_counter_ns()) / 1e9 + drain_s
    done, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.1))
    for t in pending:  # still waiting on a reply: count as timeouts
        t.cancel()
    counts["errors"] += len(pending)
    cpu = time.process_time() - cpu0
    await asyncio.gather(*pending, return_exceptions=True)
    for ch in channels:
        ch.close()
    return {"lat_ns": lat, "errors": counts["errors"], "responses": counts["responses"], "cpu_s": cpu}


def run_load(kind: str, addr, request: bytes, n_conns: int, start_wall_ns: int,
             warmup_s: float, duration_s: float, drain_s: float = 10.0,
             grpc_channels: int = 1) -> dict:
    """Run n_conns closed-loop clients; record responses completing in the measured window.

    kind is "http" (addr (host, port)), "unix" (addr a socket path) or "grpc" (addr (host, port);
    the clients share grpc_channels HTTP/2 connections). request is the pre-encoded HTTP request,
    Unix-socket frame or serialized ModelInferRequest.

    The window starts warmup_s after start_wall_ns (a time.time_ns value shared by all worker
    processes) and lasts duration_s. Returns latencies (ns), error count and generator CPU time.
    """
    offset = time.time_ns() - time.perf_counter_ns()
    t_start = start_wall_ns - offset
    t_rec = t_start + int(warmup_s * 1e9)
    t_end = t_rec + int(duration_s * 1e9)
    if n_conns <= 0:
        return {"lat_ns": [], "errors": 0, "responses": 0, "cpu_s": 0.0}
    if kind == "grpc":
        return uvloop.run(_run_grpc(tuple(addr), request, n_conns, grpc_channels, t_start, t_rec,
                                    t_end, drain_s))
    return uvloop.run(_run(kind, addr, request, n_conns, t_start, t_rec, t_end, drain_s))
