"""What a model's queue holds and answers to: a caller's request (read through a Protocol, so
the scheduler never imports the data plane's types), its ticket in the queue, the limits the
queue reads (owned elsewhere) and the observer it reports to."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Protocol

import numpy as np

from inferd.common.errors import InferdError
from inferd.common.tensors import payload_bytes


class Request(Protocol):
    """What the queue reads of a caller's request (the data plane's InferRequest is one)."""

    inputs: dict[str, np.ndarray]  # batch dimension first, when the model batches
    outputs: tuple[str, ...] | None  # requested output names; None = all
    id: str
    deadline: float | None  # time.monotonic() after which the request must not run
    stream: object | None  # a decoupled model's request: its ResponseStream (inferd.scheduler.streams)
    parameters: dict  # the request's parameters (a stateful model's queue reads sequence_id and its flags)


class QueueLimits(Protocol):
    """The queue's limits, owned elsewhere: read on every request and batch."""

    batch_rows: int  # the most rows a batch takes (0: the model has no batch dimension)
    queue_rows: int  # the most rows queued
    queue_bytes: int  # the most input bytes queued (0: no bound in bytes)

    def out_of_memory(self, rows: int) -> None:
        """A batch of `rows` could not allocate memory: lower batch_rows (at once)."""


class FixedLimits:
    """Limits that change only when a batch runs out of memory (then: half of it, for good)."""

    def __init__(self, batch_rows: int, queue_rows: int, queue_bytes: int = 0):
        self.batch_rows, self.queue_rows, self.queue_bytes = batch_rows, queue_rows, queue_bytes

    def out_of_memory(self, rows: int) -> None:
        self.batch_rows = max(1, min(self.batch_rows, rows // 2))


class QueueObserver:
    """Hooks for metrics and statistics; the default does nothing."""

    def queue_rows(self, rows: int) -> None: ...

    def dequeued(self, waited_s: float) -> None: ...

    def batch_done(self, requests: int, rows: int, compute_s: float, ok: bool) -> None: ...

    def out_of_memory(self, rows: int) -> None: ...  # a batch of `rows` could not allocate memory


Outcome = Callable[["dict[str, np.ndarray] | InferdError"], None]


@dataclasses.dataclass(slots=True, eq=False)
class Ticket:
    """One queued (or running) request. Its outcome, the request's own outputs or an
    InferdError, goes to `then` once, straight from the queue's callbacks (no loop turn between
    a worker's reply and the caller's answer)."""

    request: Request
    rows: int
    shape_key: Hashable
    enqueued_at: float
    then: Outcome
    nbytes: int = 0
    queued: bool = True
    retried: bool = False  # run again once after its worker died
    answered: bool = False  # settled, or withdrawn by its caller

    def settle(self, outcome: dict[str, np.ndarray] | InferdError) -> None:
        if not self.answered:
            self.answered = True
            self.then(outcome)


def request_nbytes(request: Request) -> int:
    """What a request's inputs hold (BYTES: their elements' lengths)."""
    total = 0
    for array in request.inputs.values():  # a plain loop: on every request
        total += payload_bytes(array) if array.dtype.kind == "O" else array.nbytes
    return total


def bytes_full(queued: int, nbytes: int, limit: int) -> bool:
    """Whether `nbytes` more would pass the queue's byte limit (0: none). An empty queue takes
    any one request (its size is bounded by the request limits)."""
    return bool(queued and limit and queued + nbytes > limit)
