"""A shared-memory mailbox between the daemon and one worker, for batches at light load.

At light load both sides busy-poll around a batch (inferd.scheduler.busypoll). A frame through
their socketpair then still costs a send and a receive on each side: measured here, a round
trip between two polling processes takes about 10 us through a socketpair and 1.4 us through
shared memory. So while the reader is known to be polling, the writer posts the message's
msgpack payload here instead, and rings no bell. When the reader may have stopped polling, the
writer posts and also sends a WAKE frame on the socket, which tells the reader to look here.

Each direction has one slot: a number, a length, then the payload. The writer writes the
payload, then the length, then the number, each number one more than the last (per
direction); the reader takes a message only when the slot holds exactly the next number. One
batch runs at a time per worker, so a slot is never written again before it has been read.

This relies on x86-64's ordering of stores (a reader that sees the number also sees the
payload written before it); elsewhere Python has no fence to offer, so the daemon makes no
mailbox there and everything travels on the socket (`supported`). The cells are written
through a memoryview cast to 8-byte words: one store each (struct.pack_into zeroes its field
before writing it, which a reader could see).
"""

from __future__ import annotations

import mmap
import os
import platform
import time

SLOT_BYTES = 1 << 16  # per direction; a larger message travels on the socket
_HEAD = 64  # number and length, then the payload from the next cache line
CAPACITY = SLOT_BYTES - _HEAD
_RING_MARGIN_S = 20e-6


def must_ring(reader_polls_until: float) -> bool:
    """Asked just after a post: whether the reader may stop polling before it looks. Its
    last look comes after its window ends (inferd.backends.ipc.Receiver, and the daemon's
    busy-poll tick), so a post made before then, with a margin, is seen without a WAKE."""
    return time.monotonic() >= reader_polls_until - _RING_MARGIN_S


def supported() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


class Mailbox:
    """One side's view: it posts into one slot and takes from the other."""

    def __init__(self, fd: int, side: int):
        self.fd = fd
        self._map = mmap.mmap(fd, 2 * SLOT_BYTES)
        self._bytes = memoryview(self._map)
        self._words = self._bytes.cast("Q")
        self._out = side * SLOT_BYTES  # the daemon is side 0, the worker side 1
        self._in = (1 - side) * SLOT_BYTES
        self._posted = 0
        self._taken = 0

    @classmethod
    def create(cls, name: str) -> Mailbox:
        """The daemon's side, on a new memfd (handed to the worker, which opens side 1)."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, 2 * SLOT_BYTES)
        return cls(fd, 0)

    def post(self, payload: bytes) -> bool:
        """Leave one message for the other side; False (nothing written) if it does not fit."""
        if len(payload) > CAPACITY:
            return False
        start = self._out + _HEAD
        self._bytes[start:start + len(payload)] = payload
        self._words[self._out // 8 + 1] = len(payload)
        self._posted += 1
        self._words[self._out // 8] = self._posted  # last: it makes the message visible
        return True

    def take(self) -> bytes | None:
        """The other side's next message, or None if it has not been posted yet."""
        if self._words[self._in // 8] != self._taken + 1:
            return None
        length = self._words[self._in // 8 + 1]
        start = self._in + _HEAD
        payload = bytes(self._bytes[start:start + length])
        self._taken += 1
        return payload

    def close(self) -> None:
        self._words.release()
        self._bytes.release()
        self._map.close()
        os.close(self.fd)
