"""The Unix-socket transport: length-prefixed msgpack frames, each reply matched to its request
by `id` (docs/unix-socket-protocol.md)."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct

import msgpack

from inferd.client.errors import InferdClientError
from inferd.config.settings import fallback_socket_dir, private_dir_problem

_LENGTH = struct.Struct(">I")


def _frame(message: dict) -> tuple[bytes, bytes]:
    """(header, payload), sent one after the other: joining them would copy the tensors again."""
    payload = msgpack.packb(message)
    return _LENGTH.pack(len(payload)), payload


def _check(reply) -> dict:
    """A decoded frame, which must be a map carrying an id."""
    if not isinstance(reply, dict) or "id" not in reply:
        raise ValueError(f"a reply is not a map with an id: {reply!r:.100}")
    return reply


def _result(reply: dict) -> dict:
    """The reply's result fields, or its error raised."""
    if not reply.get("ok"):
        error = reply.get("error") or {}
        raise InferdClientError(str(error.get("code", "internal")), str(error.get("message", "no message")))
    return {k: v for k, v in reply.items() if k not in ("id", "ok")}


def _refuse_untrusted(path: str) -> None:
    """Never connect through the /tmp fallback directory unless it is this user's own and
    private: whoever made it first could be serving in the daemon's place."""
    directory = os.path.dirname(os.path.abspath(path))
    if directory == fallback_socket_dir() and (problem := private_dir_problem(directory)):
        raise InferdClientError("unavailable", f"not connecting to inferd through {directory}: {problem}")


def _cannot_connect(path: str, error: OSError) -> InferdClientError:
    return InferdClientError("unavailable", f"cannot connect to inferd at {path}: {error}")


def _lost(path: str, error) -> InferdClientError:
    return InferdClientError("unavailable", f"lost the connection to inferd at {path}: {error}")


def _malformed(path: str, error: Exception) -> InferdClientError:
    return InferdClientError("internal", f"malformed reply from inferd at {path}: {error}")


def _recv_exactly(sock: socket.socket, n: int, frame_start: bool = False) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            if frame_start and got == 0:
                raise EOFError("the daemon closed the connection")
            raise ConnectionError("the daemon closed the connection in the middle of a reply")
        got += k
    return buf


class _IdleConnectionDropped(Exception):
    """A reused connection was closed by the daemon before it answered: safe to send again."""


class UnixTransport:
    """Blocking: one socket reused across calls, one request in flight at a time."""

    def __init__(self, path: str, timeout: float | None):
        self.path = path
        self.timeout = timeout
        self.connections_opened = 0
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)

    def _connect(self) -> socket.socket:
        _refuse_untrusted(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise _cannot_connect(self.path, e) from None
        self._sock = sock
        self.connections_opened += 1
        return sock

    def _read_reply(self, sock: socket.socket, request_id: int) -> dict:
        while True:
            (length,) = _LENGTH.unpack(_recv_exactly(sock, 4, frame_start=True))
            reply = _check(msgpack.unpackb(_recv_exactly(sock, length)))
            if reply["id"] in (request_id, 0):  # 0: the daemon could not read our frame
                return reply

    def call(self, op: str, fields: dict) -> dict:
        request_id = next(self._ids)
        frame = _frame({"id": request_id, "op": op, **fields})
        try:
            reply = self._exchange(frame, request_id)
        except _IdleConnectionDropped:  # say, the daemon restarted since our last call
            reply = self._exchange(frame, request_id)
        return _result(reply)

    def stream(self, op: str, fields: dict):
        """A streamed request's replies, one by one, up to the one marked final. Leaving early
        closes the connection: the daemon then stops the model's run (the next call reconnects)."""
        request_id = next(self._ids)
        frame = _frame({"id": request_id, "op": op, "stream": True, **fields})
        try:
            reply = self._exchange(frame, request_id)
        except _IdleConnectionDropped:
            reply = self._exchange(frame, request_id)
        finished = False
        try:
            while True:
                finished = reply.get("final", True) or not reply.get("ok")
                yield _result(reply)
                if finished:
                    return
                reply = self._next_reply(request_id)
        finally:
            if not finished:
                self.close()

    def _next_reply(self, request_id: int) -> dict:
        """The next reply of a stream in progress."""
        try:
            return self._read_reply(self._sock, request_id)
        except TimeoutError:
            self.close()
            raise InferdClientError("deadline_exceeded", f"no reply from inferd at {self.path} within {self.timeout} s") from None
        except (OSError, EOFError) as e:
            self.close()
            raise _lost(self.path, e) from None
        except ValueError as e:
            self.close()
            raise _malformed(self.path, e) from None

    def _exchange(self, frame: tuple[bytes, bytes], request_id: int) -> dict:
        """Send one request and read its reply; any failure closes the socket, whose stream is
        then out of step."""
        reused = self._sock is not None
        sock = self._sock or self._connect()
        try:
            for part in frame:
                sock.sendall(part)
            return self._read_reply(sock, request_id)
        except (BrokenPipeError, ConnectionResetError, EOFError) as e:
            self.close()
            if reused:
                raise _IdleConnectionDropped from None
            raise _lost(self.path, e) from None
        except TimeoutError:
            self.close()
            raise InferdClientError("deadline_exceeded", f"no reply from inferd at {self.path} within {self.timeout} s") from None
        except OSError as e:
            self.close()
            raise _lost(self.path, e) from None
        except ValueError as e:
            self.close()
            raise _malformed(self.path, e) from None
        except BaseException:  # KeyboardInterrupt: the reply would come in a later call's place
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


STREAM_BUFFER = 8  # replies of one stream read and not yet taken by its consumer


class _Replies(asyncio.Queue):
    """A stream's replies; `room` is set when its consumer takes one (or leaves)."""

    def __init__(self):
        super().__init__()  # unbounded: the connection's loss is always put; the reader bounds the rest
        self.room = asyncio.Event()


class _Connection:
    """One open socket, its reader task, and the callers waiting for replies on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str):
        self.writer = writer
        self.pending: dict[int, asyncio.Future] = {}
        self.streams: dict[int, _Replies] = {}  # streamed requests: their replies, as they come
        self.closed = False
        self.reader_task = asyncio.create_task(self._read(reader, path))

    async def _read(self, reader: asyncio.StreamReader, path: str) -> None:
        error = InferdClientError("unavailable", f"the client closed its connection to inferd at {path}")
        try:
            while True:
                (length,) = _LENGTH.unpack(await reader.readexactly(4))
                reply = _check(msgpack.unpackb(await reader.readexactly(length)))
                if reply["id"] == 0:  # cannot be matched to a caller, who would wait forever
                    raise ValueError(f"the daemon could not read a request: {reply.get('error')}")
                if self.streams and (replies := self.streams.get(reply["id"])) is not None:
                    replies.put_nowait(reply)
                    while replies.qsize() >= STREAM_BUFFER and self.streams.get(reply["id"]) is replies:
                        replies.room.clear()  # a slow consumer: stop reading, as the daemon stops its model
                        await replies.room.wait()
                    continue
                future = self.pending.pop(reply["id"], None)
                if future is not None and not future.done():  # else its caller gave up: drop it
                    future.set_result(reply)
        except asyncio.IncompleteReadError:
            error = _lost(path, "the daemon closed the connection")
        except OSError as e:
            error = _lost(path, e)
        except Exception as e:  # a reply we cannot read: the stream cannot be trusted past it
            error = _malformed(path, e)
        finally:
            self.closed = True
            self.writer.close()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(error)
            self.pending.clear()
            for replies in self.streams.values():
                replies.put_nowait(error)


class AsyncUnixTransport:
    """One connection shared by every caller: requests are pipelined, and a reader task hands
    each reply to the caller waiting on its id. A dropped connection fails the calls in flight;
    the next call opens a new one."""

    def __init__(self, path: str, timeout: float | None):
        self.path = path
        self.timeout = timeout
        self.connections_opened = 0
        self._conn: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._ids = itertools.count(1)

    async def _connection(self) -> _Connection:
        if self._conn is None or self._conn.closed:
            async with self._connecting:  # concurrent first callers share one new connection
                if self._conn is None or self._conn.closed:
                    try:
                        _refuse_untrusted(self.path)
                        reader, writer = await asyncio.open_unix_connection(self.path)
                    except OSError as e:
                        raise _cannot_connect(self.path, e) from None
                    self._conn = _Connection(reader, writer, self.path)
                    self.connections_opened += 1
        return self._conn

    async def call(self, op: str, fields: dict) -> dict:
        conn = await self._connection()
        request_id = next(self._ids)
        # Registered with no await since the open check: if the connection drops from here on,
        # the reader task fails this future.
        reply = asyncio.get_running_loop().create_future()
        conn.pending[request_id] = reply
        try:
            conn.writer.writelines(_frame({"id": request_id, "op": op, **fields}))
            async with asyncio.timeout(self.timeout):
                try:
                    await conn.writer.drain()
                except ConnectionError:
                    pass  # the reader task sees the loss too, and fails `reply` with its reason
                result = await reply
        except TimeoutError:
            raise InferdClientError("deadline_exceeded", f"no reply from inferd at {self.path} within {self.timeout} s") from None
        finally:
            conn.pending.pop(request_id, None)  # a cancelled caller's reply is dropped on arrival
        return _result(result)

    async def stream(self, op: str, fields: dict):
        """A streamed request's replies as they come, up to the one marked final. At most
        STREAM_BUFFER are read ahead of the consumer: past that the connection's reader waits,
        so the daemon's back-pressure stops the model; other requests on this connection wait
        for this consumer meanwhile. Leaving early cancels the request: the daemon stops its
        model; the connection serves on."""
        conn = await self._connection()
        request_id = next(self._ids)
        replies = _Replies()
        conn.streams[request_id] = replies
        final = False
        try:
            conn.writer.writelines(_frame({"id": request_id, "op": op, "stream": True, **fields}))
            while not final:
                try:
                    async with asyncio.timeout(self.timeout):
                        reply = await replies.get()
                        replies.room.set()
                except TimeoutError:
                    raise InferdClientError("deadline_exceeded", f"no reply from inferd at {self.path} within {self.timeout} s") from None
                if isinstance(reply, Exception):
                    raise reply
                final = reply.get("final", True) or not reply.get("ok")
                yield _result(reply)
        finally:
            conn.streams.pop(request_id, None)
            replies.room.set()  # (a reader waiting for this consumer goes on)
            if not final and not conn.closed:  # (its reply, and the stream's last, are dropped on arrival)
                conn.writer.writelines(_frame({"id": next(self._ids), "op": "cancel", "request": request_id}))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.reader_task.cancel()
            await asyncio.gather(conn.reader_task, return_exceptions=True)
            try:
                await conn.writer.wait_closed()
            except OSError:
                pass  # already lost; closed is all we wanted
