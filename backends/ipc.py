"""The messages between the daemon and a worker process, and their framing.

Frames: a 4-byte big-endian length, then one msgpack map with a protocol version `v` and a
`type`. Tensors travel as [name, datatype, shape, data] where data is the raw little-endian
bytes for numeric types (no per-element encoding) and a list of bytes for BYTES. Errors travel
as data (a code name and a message), never as pickled exceptions.

    daemon -> worker: LOAD, EXECUTE, PROFILE, STOP
    worker -> daemon: LOADED | LOAD_FAILED (answer to LOAD), RESULT | FAILED (answer to EXECUTE),
                      PROFILED (answer to PROFILE: one run on synthetic inputs of `rows` rows)
"""

from __future__ import annotations

import os
import socket
import struct
import time

import msgpack
import numpy as np

from inferd.config.tensors import DATATYPES

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


def encode(msg: dict) -> tuple[bytes, bytes]:
    """One frame as (header, payload), written one after the other: joining them would copy
    every tensor byte once more."""
    payload = msgpack.packb({"v": VERSION, **msg}, use_bin_type=True)
    return HEADER.pack(len(payload)), payload


def decode(payload: bytes) -> dict:
    msg = msgpack.unpackb(payload, raw=False)
    if msg.get("v") != VERSION:
        raise ValueError(f"worker protocol version {msg.get('v')!r}, expected {VERSION}")
    return msg


def pack_tensors(tensors: dict[str, np.ndarray]) -> list:
    out = []
    for name, array in tensors.items():
        if array.dtype == object or array.dtype.kind in "US":
            data = [_as_bytes(x) for x in array.reshape(-1).tolist()]
            out.append([name, "BYTES", list(array.shape), data])
        else:
            array = np.ascontiguousarray(array)
            dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
            out.append([name, _datatype(dtype), list(array.shape), memoryview(array.astype(dtype, copy=False)).cast("B")])
    return out


def unpack_tensors(items: list) -> dict[str, np.ndarray]:
    out = {}
    for name, datatype, shape, data in items:
        if datatype == "BYTES":
            array = np.empty(len(data), dtype=object)
            array[:] = data
            out[name] = array.reshape(shape)
        else:
            out[name] = np.ndarray(shape, DATATYPES[datatype], data)  # a view of the bytes
    return out


def _as_bytes(x) -> bytes:
    return x.encode() if isinstance(x, str) else bytes(x)


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
    header, payload = encode(msg)
    sent = sock.sendmsg((header, payload))  # one system call (and one read on the daemon's side)
    if sent < len(header):  # only a signal cuts a blocking send short
        sock.sendall(header[sent:])
        sent = len(header)
    if sent < len(header) + len(payload):
        sock.sendall(memoryview(payload)[sent - len(header):])  # the rest, without a copy


class Receiver:
    """Reads frames from a blocking socket, taking whatever the socket has in one call. With
    `poll_s`, each wait first polls the socket for that long (yielding the CPU to anything else
    runnable between tries) before it sleeps: see inferd.scheduler.busypoll."""

    def __init__(self, sock: socket.socket, poll_s: float = 0.0):
        self.sock = sock
        self.poll_s = poll_s
        self.buf = bytearray()
        self.ready: list[dict] = []

    def recv(self) -> dict | None:
        """The next message, or None when the daemon closed its end."""
        while not self.ready:
            missing = HEADER.size
            if len(self.buf) >= HEADER.size:
                missing = HEADER.size + HEADER.unpack_from(self.buf)[0] - len(self.buf)
            chunk = self._poll(max(1 << 16, missing)) if self.poll_s else None
            if chunk is None:
                chunk = self.sock.recv(max(1 << 16, missing))
            if not chunk:
                return None
            self.buf += chunk
            self.ready = split_frames(self.buf)
        return self.ready.pop(0)

    def _poll(self, size: int) -> bytes | None:
        """What the socket has within poll_s, or None."""
        until = time.monotonic() + self.poll_s
        while True:
            try:
                return self.sock.recv(size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            if time.monotonic() >= until:
                return None
            os.sched_yield()
