"""The Unix-socket front-end: length-prefixed msgpack frames, pipelined requests matched by id,
tensors as raw bytes. The protocol is specified in docs/unix-socket-protocol.md."""

from __future__ import annotations

import asyncio
import grp
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import msgpack
import structlog

from inferd.common.codec import ValueBudget
from inferd.common.errors import ErrorCode, InferdError, invalid, unexpected
from inferd.common.tasks import TaskSet
from inferd.config.settings import fallback_socket_dir, private_dir_problem
from inferd.daemon.dataplane import DataPlane, shutting_down
from inferd.daemon.frontends.guard import Guard, GuardedListener, Limits
from inferd.daemon.frontends.unix_codec import decode_infer, encode_infer, error_reply, field, unpack_frame
from inferd.daemon.requests import InferResponse

log = structlog.get_logger("inferd.unix")

HEADER = struct.Struct(">I")
MAX_INFLIGHT = 1024  # per connection; past it the connection stops being read until some finish
AWAITED_OPS = frozenset({"load", "unload", "models"})  # these wait (on a load, or on reading the directory)


def _nothing() -> None:
    pass


def _final(reply: dict, final: bool) -> dict:
    """A stream's last reply says so (a plain infer's carries no `final`)."""
    if final:
        reply["final"] = True
    return reply


class _Connection(asyncio.Protocol):
    """One client. Every frame read is one request (`guard.begin`) and gets one reply
    (`guard.end`). Reading stops while too many requests are in flight or while the client
    leaves the replies unread (the transport's write buffer is past its high-water mark)."""

    def __init__(self, front: UnixFrontEnd):
        self.front = front
        self.guard: Guard | None = None
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._tasks = TaskSet("unix-socket connection")  # the awaited operations
        self._awaited_ids: dict[asyncio.Task, int] = {}  # to answer them at shutdown
        self._awaited = 0
        self._inflight: dict[int, Callable[[], None]] = {}  # inferences: serial -> withdraw
        self._serial = 0
        self._idle: asyncio.Future | None = None  # set by finish(): resolved when nothing is in flight
        self._paused = False  # reading, for too many in flight
        self._write_paused = False  # reading, for unread replies
        self._held_acks: list[Callable[[], None]] = []  # streams' responses written while paused (_partial)
        self._streams: dict[int, int] = {}  # streams in flight: request id -> serial (for "cancel")

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.front.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.front.connections.discard(self)
        for withdraw in list(self._inflight.values()):  # the caller went away: out of the queues
            withdraw()
        self._inflight.clear()
        self._maybe_idle()
        self._tasks.cancel_soon()  # no one to answer (a load or unload it asked for goes on)

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
            with memoryview(buf) as view:  # msgpack copies what it keeps: no copy before it
                msg = unpack_frame(view[HEADER.size : end])
            del buf[:end]
            self.guard.begin()
            self._handle(msg)

    def _handle(self, msg) -> None:
        request_id = msg.get("id") if isinstance(msg, dict) else None
        if msg is None:
            return self._reply(error_reply(0, invalid("the frame is not valid msgpack")))
        if type(request_id) is not int or request_id < 0:
            return self._reply(error_reply(0, invalid("every request needs an unsigned integer 'id'")))
        op = msg.get("op")
        try:
            if op == "infer":
                return self._infer(request_id, msg)
            if op == "cancel":
                return self._cancel(request_id, msg)
            if op in AWAITED_OPS:
                self._awaited += 1
                task = self._tasks.spawn(self._awaited_op(request_id, op, msg))
                self._awaited_ids[task] = request_id
                task.add_done_callback(self._awaited_done)
                return self._count_inflight()
            self._reply({"id": request_id, "ok": True, **self.front.answer(op, msg)})
        except Exception as e:  # InferdError, or a bug: either way this caller gets an answer
            self._reply(error_reply(request_id, unexpected(e, "unix-socket request failed", op=str(op)[:64])))

    def _infer(self, request_id: int, msg: dict) -> None:
        """No task per request: the data plane calls back with the outputs (the reply goes out
        in the loop turn they arrive, and a lone request is sent to a worker in this one)."""
        self._serial += 1
        serial = self._serial
        self._inflight[serial] = _nothing  # in flight before submit: it may answer at once
        try:
            model, version, request = decode_infer(msg, ValueBudget(self.front.max_values))
            streaming = "stream" in msg and field(msg, "stream", bool, False)
            if streaming:  # several replies, the last marked final
                withdraw = self.front.dataplane.submit_stream(
                    model, version, request, "unix", lambda response, ack: self._partial(request_id, response, ack),
                    lambda result: self._infer_done(serial, request_id, result, final=True))
            else:
                withdraw = self.front.dataplane.submit(
                    model, version, request, "unix", lambda result: self._infer_done(serial, request_id, result))
        except BaseException:
            del self._inflight[serial]
            raise
        if serial in self._inflight:  # not answered yet
            self._inflight[serial] = withdraw
            self._count_inflight()
            if streaming:  # (until its final reply: a plain request is never entered here)
                self._streams[request_id] = serial

    def _infer_done(self, serial: int, request_id: int, result: InferResponse | InferdError, final: bool = False) -> None:
        if self._inflight.pop(serial, None) is None:
            return  # withdrawn: the connection is gone
        if final and self._streams.get(request_id) == serial:
            del self._streams[request_id]
        try:
            reply = error_reply(request_id, result) if isinstance(result, InferdError) else encode_infer(request_id, result)
            if final:
                reply["final"] = True
            self._reply(reply)
        except Exception as e:  # a bug must still answer this caller, and not fail its batch's others
            self._reply(_final(error_reply(request_id, unexpected(e, "unix-socket reply failed")), final))
        self._uncount_inflight()

    def _partial(self, request_id: int, response: InferResponse, ack: Callable[[], None]) -> None:
        """One response of a stream (not its last). The model may run one further once this is
        written: at once, unless the client leaves its replies unread (then at resume_writing)."""
        if self.transport is None or self.transport.is_closing():
            return
        reply = encode_infer(request_id, response)
        reply["final"] = False
        payload = msgpack.packb(reply, use_bin_type=True)
        self.transport.writelines((HEADER.pack(len(payload)), payload))
        if self._write_paused:
            self._held_acks.append(ack)
        else:
            ack()

    def _cancel(self, request_id: int, msg: dict) -> None:
        """Withdraw a stream of this connection (its model stops): its final reply is
        `cancelled`. Answers whether there was one to cancel."""
        target = field(msg, "request", int)
        serial = self._streams.get(target)
        withdraw = self._inflight.get(serial) if serial is not None else None
        if withdraw is not None:
            withdraw()
            self._infer_done(serial, target, InferdError(ErrorCode.CANCELLED, "cancelled by the client"), final=True)
        self._reply({"id": request_id, "ok": True, "cancelled": withdraw is not None})

    async def _awaited_op(self, request_id: int, op: str, msg: dict) -> None:
        dp = self.front.dataplane
        try:
            if op == "models":
                reply = {"models": await dp.repository_index(field(msg, "ready", bool, False))}
            else:
                model = field(msg, "model", str, "")  # required: the data plane says so, as for HTTP and gRPC
                await (dp.load_model(model) if op == "load" else dp.unload_model(model))
                reply = {}
            self._reply({"id": request_id, "ok": True, **reply})
        except Exception as e:
            self._reply(error_reply(request_id, unexpected(e, "unix-socket request failed", op=op)))

    def _awaited_done(self, task: asyncio.Task) -> None:
        self._awaited -= 1
        self._awaited_ids.pop(task, None)
        self._uncount_inflight()

    def _count_inflight(self) -> None:
        if self._awaited + len(self._inflight) >= MAX_INFLIGHT and not self._paused:
            self._paused = True
            self._update_reading()

    def _uncount_inflight(self) -> None:
        if self._paused and self._awaited + len(self._inflight) < MAX_INFLIGHT // 2:
            self._paused = False
            self._update_reading()
        self._maybe_idle()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()
        acks, self._held_acks = self._held_acks, []
        for ack in acks:  # the streams' responses held in the buffer are written: their models go on
            ack()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._paused or self._write_paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _maybe_idle(self) -> None:
        if self._idle is not None and not self._inflight and not self._awaited and not self._idle.done():
            self._idle.set_result(None)

    def _reply(self, reply: dict) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        payload = msgpack.packb(reply, use_bin_type=True)
        self.transport.writelines((HEADER.pack(len(payload)), payload))  # no copy to join them
        self.guard.end()

    async def finish(self) -> None:
        """Shutting down: the operations still awaited (a load, an unload) are answered
        `unavailable`; wait until every inference has its answer (the data plane fails what the
        drain left) and the client has read the replies, then close. close() bounds the wait."""
        for task, request_id in list(self._awaited_ids.items()):
            if not task.done():
                self._reply(error_reply(request_id, shutting_down()))
                task.cancel()
        if self._inflight or self._awaited:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle
        transport = self.transport
        while transport is not None and transport.get_write_buffer_size() and not transport.is_closing():
            await asyncio.sleep(0.02)  # the client reads its answers (no event says so below the high-water mark)
        if transport is not None:
            transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class UnixFrontEnd:
    def __init__(self, dataplane: DataPlane, max_frame: int, max_values: int, limits: Limits):
        self.dataplane = dataplane
        self.max_frame = max_frame
        self.max_values = max_values  # server.max_value_elements
        self.connections: set[_Connection] = set()
        self.listener = GuardedListener("socket", limits)
        self.listener.pause_reads = False  # _Connection pauses reading itself (unread replies, too many in flight)
        self._server: asyncio.AbstractServer | None = None
        self._path: str | None = None

    def answer(self, op, msg: dict) -> dict:
        """The operations that need no queue."""
        dp = self.dataplane
        if op == "live":
            return {"live": True}
        if op == "ready":
            model = field(msg, "model", str, "")
            return {"ready": dp.model_ready(model, field(msg, "version", str, "")) if model else dp.state.ready}
        if op == "server_metadata":
            return dp.server_metadata()
        if op == "model_metadata":
            return dp.model_metadata(field(msg, "model", str, ""), field(msg, "version", str, ""))
        raise InferdError(ErrorCode.UNIMPLEMENTED, f"unknown op {str(op)[:64]!r}")

    async def start(self, path: str, group: str) -> None:
        _claim_path(path)
        self._path = path
        self._server = await asyncio.get_running_loop().create_unix_server(self._protocol, path=path)
        try:
            set_socket_permissions(path, group)
        except OSError:
            self.stop_accepting()
            raise

    async def start_on(self, sock: socket.socket) -> None:
        """Serve on a socket that is already bound and listening (socket activation). Its file
        belongs to whoever made it: close() leaves it in place."""
        self._server = await asyncio.get_running_loop().create_unix_server(self._protocol, sock=sock)

    def _protocol(self) -> Guard:
        connection = _Connection(self)
        connection.guard = Guard(self.listener, connection)
        return connection.guard

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self, grace_s: float) -> None:
        """Answer and close every connection; those whose clients do not read their answers
        within `grace_s` are cut."""
        self.stop_accepting()
        self.listener.stop()
        finishing = {asyncio.ensure_future(c.finish()): c for c in self.connections}
        if finishing:
            _, late = await asyncio.wait(finishing, timeout=grace_s)
            for task in late:
                task.cancel()
                finishing[task].abort()
        if self._path is not None:
            Path(self._path).unlink(missing_ok=True)


def set_socket_permissions(path: str, group: str) -> None:
    """Mode 0660 and group `group` on the socket file at `path`, never on what a symlink put in
    its place leads to: the file is opened without following links, checked to be a socket,
    and changed through that descriptor. Raises OSError when it is not a socket."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(f"{path} is no longer the daemon's socket (replaced meanwhile); not changing its permissions")
        inode = f"/proc/self/fd/{fd}"  # the socket itself: an O_PATH descriptor's link is not followed further
        os.chmod(inode, 0o660)
        try:
            os.chown(inode, -1, grp.getgrnam(group).gr_gid)
        except KeyError:
            log.warning("socket group not found; the socket keeps the daemon's group", group=group, path=path)
        except PermissionError:
            log.warning("cannot give the socket to its group (not allowed)", group=group, path=path)
    finally:
        os.close(fd)


def _claim_path(path: str) -> None:
    """Remove a stale socket file; refuse to take over one that another process serves, and
    the fallback directory in /tmp unless it is the daemon user's own, with mode 0700."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if str(target.parent) == fallback_socket_dir() and (problem := private_dir_problem(str(target.parent))):
        raise OSError(f"refusing the socket directory: {problem}")
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
