"""The batching decision, as a pure function of the queue and the time.

Rules, in order:
- take queued requests from the head while they have the same non-batch shapes and their rows
  fit in the batch limit; the head always goes (the data plane refuses requests over the
  configured max_batch_size; one over a lower, memory-derived limit runs alone);
- if something could not join (different shapes, or no room), or the batch is full, send now:
  waiting cannot make this batch any fuller;
- otherwise send now unless a queue delay is configured and the oldest request has waited less
  than it, in which case wait for the rest of the delay. With no delay configured (the default)
  a free worker runs whatever is queued at once: one request alone is never held back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Protocol


class Queued(Protocol):
    rows: int
    shape_key: Hashable
    enqueued_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    count: int  # requests to take from the head of the queue


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    seconds: float | None  # None: until the queue changes


def next_batch(queued: Sequence[Queued], now: float, max_rows: int, max_delay_s: float) -> Send | Wait:
    if not queued:
        return Wait(None)
    if max_rows == 0:  # a model without a batch dimension runs one request at a time
        return Send(1)
    head = queued[0]
    rows = count = 0
    for item in queued:
        if count and (item.shape_key != head.shape_key or rows + item.rows > max_rows):
            return Send(count)
        rows += item.rows
        count += 1
        if rows >= max_rows:
            return Send(count)
    waited = now - head.enqueued_at
    if max_delay_s <= 0 or waited >= max_delay_s:
        return Send(count)
    return Wait(max_delay_s - waited)
