"""The Unix-socket front-end: length-prefixed msgpack frames, pipelined requests matched by id,
tensors as raw bytes. The protocol is specified in docs/unix-socket-protocol.md."""

from __future__ import annotations

import asyncio
import grp
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import structlog

from inferd.config.errors import ErrorCode, InferdError
from inferd.config.tensors import datatype_of, from_raw, to_raw
from inferd.daemon.dataplane import DataPlane
from inferd.scheduler.request import InferRequest, InferResponse

log = structlog.get_logger("inferd.unix")

HEADER = struct.Struct(">I")
MAX_INFLIGHT = 1024  # per connection; past it the connection stops being read until some finish


def _bad(message: str) -> InferdError:
    return InferdError(ErrorCode.INVALID_ARGUMENT, message)


def _field(msg: dict, key: str, kind: type, default=None):
    value = msg.get(key, default)
    if value is default and key not in msg:
        return default
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise _bad(f"{key!r} must be {kind.__name__}")
    return value


def decode_infer(msg: dict) -> tuple[str, str, InferRequest]:
    model = _field(msg, "model", str)
    if not model:
        raise _bad("'model' is required")
    inputs = _field(msg, "inputs", list, [])
    tensors = {}
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad(f"inputs[{i}] must be a map with a 'name'")
        name = item["name"]
        if name in tensors:
            raise _bad(f"input {name!r} appears twice")
        data = item.get("data")
        if not isinstance(data, bytes):
            raise _bad(f"input {name!r}: 'data' must be bin (raw little-endian bytes)")
        tensors[name] = from_raw(name, item.get("datatype"), item.get("shape"), data)
    outputs = _field(msg, "outputs", list)
    if outputs is not None and not all(isinstance(o, str) for o in outputs):
        raise _bad("'outputs' must be a list of names")
    timeout_ms = _field(msg, "timeout_ms", int)
    deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
    request = InferRequest(tensors, tuple(outputs) if outputs else None, _field(msg, "request_id", str, ""), {}, deadline)
    return model, _field(msg, "version", str, ""), request


def encode_infer(response: InferResponse) -> dict:
    reply = {
        "model": response.model_name,
        "version": response.model_version,
        "outputs": [
            {"name": name, "datatype": datatype_of(a), "shape": list(a.shape), "data": to_raw(a)}
            for name, a in response.outputs.items()
        ],
    }
    if response.id:
        reply["request_id"] = response.id
    return reply


def _nothing() -> None:
    pass


class _Connection(asyncio.Protocol):
    def __init__(self, front: "UnixFrontEnd"):
        self.front = front
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._tasks: set[asyncio.Task] = set()  # loads and unloads
        self._inflight: dict[int, Callable[[], None]] = {}  # inferences: serial -> withdraw
        self._serial = 0
        self._idle: asyncio.Future | None = None  # set by finish(): resolved when nothing is in flight
        self._paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.front.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.front.connections.discard(self)
        for task in self._tasks:  # the caller went away: queued requests leave their queues
            task.cancel()
        for withdraw in list(self._inflight.values()):
            withdraw()
        self._inflight.clear()
        self._maybe_idle()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(buf)
            if length > self.front.max_frame:
                log.warning("frame too large; closing the connection", bytes=length, limit=self.front.max_frame)
                self.transport.close()
                return
            end = HEADER.size + length
            if len(buf) < end:
                break
            try:
                with memoryview(buf) as view:  # msgpack copies what it keeps: no copy before it
                    msg = msgpack.unpackb(view[HEADER.size : end], raw=False)
            except Exception:
                msg = None
            del buf[:end]
            self._handle(msg)

    def _handle(self, msg) -> None:
        if msg is None:
            return self._error(0, _bad("the frame is not valid msgpack"))
        request_id = msg.get("id") if isinstance(msg, dict) else None
        if type(request_id) is not int or request_id < 0:
            return self._error(0, _bad("every request needs an unsigned integer 'id'"))
        op = msg.get("op")
        if op == "infer":
            return self._infer(request_id, msg)
        if op in ("load", "unload"):  # these wait on a load: own task
            task = asyncio.get_running_loop().create_task(self._call(request_id, op, msg))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
            self._count_inflight()
            return
        try:
            self._reply({"id": request_id, "ok": True, **self.front.answer(op, msg)})
        except InferdError as e:
            self._error(request_id, e)

    def _infer(self, request_id: int, msg: dict) -> None:
        """No task per request: the data plane calls back with the outputs (the reply goes out
        in the loop turn they arrive, and a lone request is sent to a worker in this one)."""
        self._serial += 1
        serial = self._serial
        self._inflight[serial] = _nothing  # in flight before infer_then: it may answer at once
        try:
            model, version, request = decode_infer(msg)
            withdraw = self.front.dataplane.infer_then(
                model, version, request, "unix", lambda result: self._infer_done(serial, request_id, result))
        except InferdError as e:
            del self._inflight[serial]
            return self._error(request_id, e)
        except Exception as e:  # a bug must still answer the caller
            del self._inflight[serial]
            log.exception("unix-socket request failed", request=request_id)
            return self._error(request_id, InferdError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))
        if serial in self._inflight:  # not answered yet
            self._inflight[serial] = withdraw
            self._count_inflight()

    def _infer_done(self, serial: int, request_id: int, result) -> None:
        if self._inflight.pop(serial, None) is None:
            return  # withdrawn: the connection is gone
        try:
            if isinstance(result, InferdError):
                self._error(request_id, result)
            else:
                self._reply({"id": request_id, "ok": True, **encode_infer(result)})
        except Exception as e:  # a bug must still answer this caller, and not fail its batch's others
            log.exception("unix-socket reply failed", request=request_id)
            self._error(request_id, InferdError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))
        self._uncount_inflight()

    def _count_inflight(self) -> None:
        if len(self._tasks) + len(self._inflight) >= MAX_INFLIGHT and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def _uncount_inflight(self) -> None:
        if self._paused and len(self._tasks) + len(self._inflight) < MAX_INFLIGHT // 2:
            self._paused = False
            self.transport.resume_reading()
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self._idle is not None and not self._inflight and not self._idle.done():
            self._idle.set_result(None)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._uncount_inflight()

    async def _call(self, request_id: int, op: str, msg: dict) -> None:
        dp = self.front.dataplane
        try:
            model = _field(msg, "model", str, "")  # required: the data plane says so, as for HTTP and gRPC
            await (dp.load_model(model) if op == "load" else dp.unload_model(model))
            self._reply({"id": request_id, "ok": True})
        except InferdError as e:
            self._error(request_id, e)
        except Exception as e:  # a bug must still answer the caller
            log.exception("unix-socket request failed", request=request_id)
            self._error(request_id, InferdError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))

    def _error(self, request_id: int, error: InferdError) -> None:
        self._reply({"id": request_id, "ok": False, "error": {"code": error.code.value, "message": error.message}})

    def _reply(self, reply: dict) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        payload = msgpack.packb(reply, use_bin_type=True)
        self.transport.writelines((HEADER.pack(len(payload)), payload))  # no copy to join them

    async def finish(self) -> None:
        """Wait for this connection's requests to be answered, then close it."""
        if self._inflight:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.transport is not None:
            self.transport.close()


class UnixFrontEnd:
    def __init__(self, dataplane: DataPlane, max_frame: int):
        self.dataplane = dataplane
        self.max_frame = max_frame
        self.connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._path: str | None = None

    def answer(self, op, msg: dict) -> dict:
        """The operations that need no queue."""
        dp = self.dataplane
        if op == "live":
            return {"live": True}
        if op == "ready":
            model = _field(msg, "model", str, "")
            return {"ready": dp.model_ready(model, _field(msg, "version", str, "")) if model else dp.state.ready}
        if op == "server_metadata":
            return dp.server_metadata()
        if op == "model_metadata":
            return dp.model_metadata(_field(msg, "model", str, ""), _field(msg, "version", str, ""))
        if op == "models":
            return {"models": dp.repository_index(_field(msg, "ready", bool, False))}
        raise InferdError(ErrorCode.UNIMPLEMENTED, f"unknown op {op!r}")

    async def start(self, path: str, group: str) -> None:
        _claim_path(path)
        self._path = path
        self._server = await asyncio.get_running_loop().create_unix_server(lambda: _Connection(self), path=path)
        os.chmod(path, 0o660)
        try:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        except KeyError:
            log.warning("socket group not found; the socket keeps the daemon's group", group=group, path=path)
        except PermissionError:
            log.warning("cannot give the socket to its group (not allowed)", group=group, path=path)

    async def start_on(self, sock: socket.socket) -> None:
        """Serve on a socket that is already bound and listening (socket activation). Its file
        belongs to whoever made it: close() leaves it in place."""
        self._server = await asyncio.get_running_loop().create_unix_server(lambda: _Connection(self), sock=sock)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        self.stop_accepting()
        await asyncio.gather(*(c.finish() for c in list(self.connections)))
        if self._path is not None:
            Path(self._path).unlink(missing_ok=True)


def _claim_path(path: str) -> None:
    """Remove a stale socket file; refuse to take over one that another process serves."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not target.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        target.unlink(missing_ok=True)  # nobody listens: left over from a process that died
        return
    finally:
        probe.close()
    raise OSError(f"another process is serving on {path}")
