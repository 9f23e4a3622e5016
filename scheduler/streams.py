"""A decoupled model's request in the daemon: its responses on their way to the caller, and the
credit that bounds them.

The data plane gives such a request a `ResponseStream` (`request.stream`); the queue runs it
alone in its batch, and the worker handle attaches the stream to the running batch: each
PARTIAL from the worker goes to `on_response` straight from the socket's callback, and the
front-end calls `ack()` once it has written that response (its transport's buffer drained), which
gives the worker one more credit. At most `window` responses are thus between the model and the
caller's socket: a caller that reads slowly slows the model, one that never reads stops it
(until execution_timeout_s ends the request), and the daemon's memory stays bounded.
`cancel()` (the caller went away) tells the worker to close the model's generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from inferd.backends import ipc
from inferd.common.errors import InferdError, unexpected

WINDOW = 4  # responses of one request sent by the worker and not yet written to its caller

Send = Callable[[dict], None]


class ResponseStream:
    __slots__ = ("on_response", "window", "sent", "_send", "_batch", "_cancelled")

    def __init__(self, on_response: Callable[[dict[str, np.ndarray]], None], window: int = WINDOW):
        self.on_response = on_response
        self.window = window
        self.sent = 0  # responses that reached on_response
        self._send: Send | None = None  # to the worker running it (set while it runs)
        self._batch = 0
        self._cancelled = False

    def running(self, send: Send, batch: int, done: Callable) -> Callable:
        """The worker handle starts it as batch `batch`; `send` writes a message to its worker.
        Returns the batch's callback: a stream that has sent responses is not run again after
        its worker died (its caller would get them twice)."""
        self._send, self._batch = send, batch
        if self._cancelled:
            self.cancel()

        def finished(outcome) -> None:
            self._send = None
            if self.sent and isinstance(outcome, InferdError) and type(outcome) is not InferdError:
                outcome = InferdError(outcome.code, outcome.message)  # (WorkerLost and OutOfMemory run again)
            done(outcome)
        return finished

    def response(self, outputs: dict[str, np.ndarray]) -> None:
        """One PARTIAL from the worker."""
        if not self._cancelled:
            self.sent += 1
            try:
                self.on_response(outputs)
            except Exception as e:  # a front-end's bug: logged; this stream stops, the worker's socket reads on
                unexpected(e, "answering a stream response failed")
                self.cancel()

    def ack(self) -> None:
        """One response was written to the caller: the worker may send one more."""
        if self._send is not None:
            self._send({"type": ipc.CREDIT, "batch": self._batch, "n": 1})

    def cancel(self) -> None:
        """The caller went away: no more responses reach it, and the model stops."""
        self._cancelled = True
        if self._send is not None:
            self._send({"type": ipc.CANCEL, "batch": self._batch})


class StreamingWorker:
    """The worker handle's (inferd.scheduler.worker.WorkerHandle) part in streams: it starts a
    stream's batch with `_start_stream`, hands it the worker's PARTIAL messages, and writes its
    CREDIT and CANCEL while that batch runs."""

    _stream: ResponseStream | None = None  # the running batch's (reads the handle's _batch, _transport)

    def _start_stream(self, stream: ResponseStream, message: dict, done: Callable) -> Callable:
        message["stream"] = stream.window
        self._stream = stream
        finished = stream.running(self._to_stream_worker, message["batch"], done)

        def ended(outcome) -> None:
            self._stream = None
            finished(outcome)
        return ended

    def _on_partial(self, msg: dict) -> None:
        stream, batch = self._stream, self._batch
        if stream is not None and batch is not None and msg.get("batch") == batch[0]:
            stream.response(ipc.unpack_tensors(msg["outputs"]))

    def _to_stream_worker(self, msg: dict) -> None:
        if self._transport is not None and self._batch is not None and self._batch[0] == msg["batch"]:
            self._transport.writelines(ipc.encode(msg))
