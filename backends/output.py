"""A model's stdout and stderr, as log events of its worker.

In a worker, fds 1 and 2 are pipes: whatever writes there (print(), a C library, a process the
model started) is read by a thread and logged line by line as a "model output" event with the
model, version, pid and stream. A line is cut at MAX_LINE_BYTES (`truncated`), and a token
bucket bounds the rate (RATE lines a second, in bursts of up to BURST); the lines it drops
are counted, and the count logged ("model output dropped") at most once a second per stream.
The worker's own events go to the daemon's stderr as before, through a copy of that fd.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time

MAX_LINE_BYTES = 2048
RATE = 20.0  # lines a second, per worker, sustained
BURST = 200  # lines at once
STREAMS = ((1, "stdout"), (2, "stderr"))


class ModelOutput:
    """Reads a worker's stdout and stderr pipes in a thread of its own; `log` (set once the
    worker knows its model) logs the lines."""

    def __init__(self, log) -> None:
        self.log = log
        self._tokens = float(BURST)
        self._refilled = time.monotonic()
        self._partial = {stream: bytearray() for _, stream in STREAMS}
        self._cut = dict.fromkeys(self._partial, False)  # the rest of a cut line is discarded
        self._dropped = dict.fromkeys(self._partial, 0)
        self._reported = 0.0
        self._readers: dict[int, str] = {}
        self._thread: threading.Thread | None = None

    @classmethod
    def capture(cls, log) -> tuple[ModelOutput, int]:
        """Make fds 1 and 2 pipes that this process's thread reads; returns the reader and a
        copy of the original stderr, for the worker's own events."""
        own = os.dup(2)
        output = cls(log)
        for fd, stream in STREAMS:
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)  # inheritable: a subprocess the model starts writes here too
            os.close(write_end)
            output._readers[read_end] = stream
        # Line-buffered, so that a line is logged when it is printed (not at exit, or never).
        sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        output._thread = threading.Thread(target=output._pump, name="model-output", daemon=True)
        output._thread.start()
        return output, own

    def finish(self, timeout: float = 0.5) -> None:
        """At the worker's exit: log what was written (unless a child process still holds the
        pipes), and the count of what was dropped."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        null = os.open(os.devnull, os.O_WRONLY)
        for fd, _ in STREAMS:
            os.dup2(null, fd)  # this process's write ends closed: the pipes end if no child holds them
        os.close(null)
        if self._thread is not None:
            self._thread.join(timeout)

    def _pump(self) -> None:
        poller = select.poll()
        for fd in self._readers:
            poller.register(fd, select.POLLIN)
        while self._readers:
            for fd, _ in poller.poll(1000):
                data = os.read(fd, 1 << 16)
                stream = self._readers[fd]
                if data:
                    self._feed(stream, data)
                    continue
                poller.unregister(fd)
                os.close(fd)
                del self._readers[fd]
                if self._partial[stream]:
                    self._line(stream, bytes(self._partial[stream]), False)
            self._report_dropped(force=not self._readers)

    def _feed(self, stream: str, data: bytes) -> None:
        buf = self._partial[stream]
        buf += data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if self._cut[stream]:
                self._cut[stream] = False  # the end of a line already logged in part
            else:
                self._line(stream, bytes(buf[start:end]), False)
            start = end + 1
        del buf[:start]
        if len(buf) > MAX_LINE_BYTES:  # a line too long to wait for its end: cut now
            if not self._cut[stream]:
                self._line(stream, bytes(buf), True)
                self._cut[stream] = True
            buf.clear()

    def _line(self, stream: str, raw: bytes, truncated: bool) -> None:
        now = time.monotonic()
        self._tokens = min(BURST, self._tokens + (now - self._refilled) * RATE)
        self._refilled = now
        if self._tokens < 1:
            self._dropped[stream] += 1
            return
        self._tokens -= 1
        truncated = truncated or len(raw) > MAX_LINE_BYTES
        text = raw[:MAX_LINE_BYTES].decode("utf-8", "replace").rstrip("\r")
        if truncated:
            self.log.info("model output", stream=stream, line=text, truncated=True)
        else:
            self.log.info("model output", stream=stream, line=text)

    def _report_dropped(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._reported < 1.0:
            return
        self._reported = now
        for stream, count in self._dropped.items():
            if count:
                self.log.warning("model output dropped", stream=stream, lines=count,
                                 reason=f"more than {RATE:g} lines a second (bursts of {BURST})")
                self._dropped[stream] = 0
