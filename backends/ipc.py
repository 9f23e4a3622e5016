"""The messages between the daemon and a worker process, and their framing.

Frames: a 4-byte big-endian length, then one msgpack map with a protocol version `v` and a
`type`. Tensors travel as [name, datatype, shape, data] where data is the raw little-endian
bytes for numeric types (no per-element encoding) and a list of bytes for BYTES. Errors travel
as data (a wire code from ERROR_CODES and a message), never as pickled exceptions.

    daemon -> worker: LOAD, EXECUTE, PROFILE, STOP
    worker -> daemon: LOADED | LOAD_FAILED (answer to LOAD), RESULT | FAILED (answer to EXECUTE),
                      PROFILED (answer to PROFILE: one run on synthetic inputs of `rows` rows)
    either way:       WAKE (an EXECUTE, RESULT or FAILED waits in the mailbox)

A decoupled model's EXECUTE carries `stream` (the credit: how many responses may be unread):
the worker sends PARTIAL per response while it has credit, the daemon gives CREDIT back as its
callers' front-ends write them (or CANCEL: the caller went away), and RESULT (no outputs) or
FAILED ends the request (inferd.backends.decoupled).

A per-request backend's EXECUTE carries `callers` (each caller's rows and parameters) and its
RESULT each caller's own outputs or failure (inferd.backends.per_request).

At light load an EXECUTE and its answer may instead be posted in a shared-memory mailbox
(inferd.backends.mailbox), the same payload without the length header.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import msgpack
import numpy as np

from inferd.backends.mailbox import Mailbox
from inferd.common.errors import ErrorCode
from inferd.common.tensors import DATATYPES, bytes_elements, object_tensor

VERSION = 1
HEADER = struct.Struct(">I")

LOAD = "load"
EXECUTE = "execute"
STOP = "stop"
PROFILE = "profile"
PROFILED = "profiled"
LOADED = "loaded"
LOAD_FAILED = "load_failed"
RESULT = "result"
FAILED = "failed"
WAKE = "wake"  # either way: a message waits in the mailbox (inferd.backends.mailbox)
PARTIAL = "partial"  # worker -> daemon: one response of a decoupled model's request
CREDIT = "credit"  # daemon -> worker: `n` more responses of batch `batch` may be sent
CANCEL = "cancel"  # daemon -> worker: the caller of batch `batch` went away; stop its model

# FAILED's `code`: what a batch's failure means to its callers. A wire format of its own, not
# the enum's values; a code this table does not know arrives as INTERNAL.
ERROR_CODES = {
    ErrorCode.INVALID_ARGUMENT: "invalid_argument",  # the batch's content (the callers' fault)
    ErrorCode.RESOURCE_EXHAUSTED: "out_of_memory",  # the runtime could not allocate memory
    ErrorCode.INTERNAL: "internal",  # the model failed
}
_CODES_BY_NAME = {name: code for code, name in ERROR_CODES.items()}


def error_code(wire: str) -> ErrorCode:
    return _CODES_BY_NAME.get(wire, ErrorCode.INTERNAL)


def pack(msg: dict) -> bytes:
    """A message's payload: what a frame carries after its header, or a mailbox holds."""
    return msgpack.packb({"v": VERSION, **msg}, use_bin_type=True)


def encode(msg: dict) -> tuple[bytes, bytes]:
    """One frame as (header, payload), written one after the other: joining them would copy
    every tensor byte once more."""
    payload = pack(msg)
    return HEADER.pack(len(payload)), payload


def decode(payload: bytes) -> dict:
    msg = msgpack.unpackb(payload, raw=False)
    if msg.get("v") != VERSION:
        raise ValueError(f"worker protocol version {msg.get('v')!r}, expected {VERSION}")
    return msg


def pack_tensors(tensors: dict[str, np.ndarray]) -> list:
    out = []
    for name, array in tensors.items():
        if array.dtype.kind in "OUS":
            out.append([name, "BYTES", list(array.shape), bytes_elements(array)])
        else:
            array = np.ascontiguousarray(array)
            dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
            out.append([name, _datatype(dtype), list(array.shape), memoryview(array.astype(dtype, copy=False)).cast("B")])
    return out


def unpack_tensors(items: list) -> dict[str, np.ndarray]:
    out = {}
    for name, datatype, shape, data in items:
        if datatype == "BYTES":
            out[name] = object_tensor(data, shape)
        else:
            out[name] = np.ndarray(shape, DATATYPES[datatype], data)  # a view of the bytes
    return out


_NUMERIC = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}


def _datatype(dtype: np.dtype) -> str:
    try:
        return _NUMERIC[dtype]
    except KeyError:
        raise ValueError(f"tensor dtype {dtype} has no V2 datatype") from None


def split_frames(buf: bytearray) -> list[dict]:
    """Remove and decode every complete frame at the start of `buf`."""
    out = []
    while len(buf) >= HEADER.size:
        (length,) = HEADER.unpack_from(buf)
        end = HEADER.size + length
        if len(buf) < end:
            break
        with memoryview(buf) as view:
            out.append(decode(view[HEADER.size:end]))  # msgpack copies what it keeps
        del buf[:end]
    return out


# Blocking side, used by the worker process.

def send(sock: socket.socket, msg: dict) -> None:
    send_payload(sock, pack(msg))


def send_payload(sock: socket.socket, payload: bytes) -> None:
    header = HEADER.pack(len(payload))
    sent = sock.sendmsg((header, payload))  # one system call (and one read on the daemon's side)
    if sent < len(header):  # only a signal cuts a blocking send short
        sock.sendall(header[sent:])
        sent = len(header)
    if sent < len(header) + len(payload):
        sock.sendall(memoryview(payload)[sent - len(header):])  # the rest, without a copy


class Receiver:
    """Reads messages from a blocking socket, taking whatever the socket has in one call, and
    from the daemon's mailbox (inferd.backends.mailbox) when there is one: a message posted
    there, or announced by a WAKE frame. Until `poll_until` (monotonic), a wait polls both
    (yielding the CPU to anything else runnable between tries) before it sleeps on the socket:
    see inferd.scheduler.busypoll. `posted` says whether the last message came by the mailbox."""

    def __init__(self, sock: socket.socket, mailbox: Mailbox | None = None):
        self.sock = sock
        self.mailbox = mailbox
        self.poll_until = 0.0
        self.posted = False
        self.buf = bytearray()
        self.ready: list[dict] = []
        self.closed = False

    def recv(self) -> dict | None:
        """The next message, or None when the daemon closed its end."""
        while True:
            while not self.ready:
                if self.closed:
                    return None
                if self.poll_until:
                    payload = self._poll()
                    if payload is not None:
                        return self._posted(payload)
                else:
                    self._read(self.sock.recv(self._wanted()))
            msg = self.ready.pop(0)
            if msg["type"] != WAKE:
                self.posted = False
                return msg
            payload = self.mailbox.take() if self.mailbox is not None else None
            if payload is not None:  # else it was taken while polling: the WAKE came after all
                return self._posted(payload)

    def recv_nowait(self) -> dict | None:
        """A message that has arrived on the socket, or None at once (a stream's CREDIT and CANCEL)."""
        if not self.ready and not self.closed:
            try:
                self._read(self.sock.recv(self._wanted(), socket.MSG_DONTWAIT))
            except BlockingIOError:
                pass
        return self.ready.pop(0) if self.ready else None

    def _posted(self, payload: bytes) -> dict:
        self.posted = True
        return decode(payload)

    def _wanted(self) -> int:
        missing = HEADER.size
        if len(self.buf) >= HEADER.size:
            missing = HEADER.size + HEADER.unpack_from(self.buf)[0] - len(self.buf)
        return max(1 << 16, missing)

    def _read(self, chunk: bytes) -> None:
        if not chunk:
            self.closed = True
            return
        self.buf += chunk
        self.ready = split_frames(self.buf)

    def _poll(self) -> bytes | None:
        """Until poll_until: a payload from the mailbox (returned), or what the socket has
        (read into `ready`); then None, and the window is over."""
        mailbox = self.mailbox
        while True:
            if mailbox is not None and (payload := mailbox.take()) is not None:
                return payload
            try:
                self._read(self.sock.recv(self._wanted(), socket.MSG_DONTWAIT))
                if self.ready or self.closed:
                    return None
            except BlockingIOError:
                pass
            if time.monotonic() >= self.poll_until:
                self.poll_until = 0.0
                # A last look after the window: what was posted before it ended is seen here,
                # and the daemon rings (WAKE) for whatever it posts later.
                return mailbox.take() if mailbox is not None else None
            os.sched_yield()
