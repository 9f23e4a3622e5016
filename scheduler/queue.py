"""The per-version queue and its dispatch.

Callers `submit()` and await their own rows, or `enqueue()` with a callback that gets them.
Batches are formed in one place, `_dispatch`, which runs at the end of the loop turn in which
requests arrived (at once, at light load: see `enqueue`) and shortly after a batch ends:
whenever a worker is idle it asks `next_batch` what to send, stacks those requests along the
batch dimension and sends them; the worker's reply splits the outputs back per request.
A small loop task only handles what has no caller to act on it (queue-delay timers, replaced
workers, the end of a drain). The queue is bounded in rows and bytes and refuses at once when
full. Its limits belong to a `QueueLimits` owner (the memory manager's Tenant in the daemon):
the queue reads them and reports an out-of-memory batch to it, never sets them itself.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable

import numpy as np
import structlog

from inferd.common.deferred import UnreadPart
from inferd.common.errors import ErrorCode, InferdError, unexpected
from inferd.scheduler.batching import Send, next_batch
from inferd.scheduler.pool import WorkerPool
from inferd.scheduler.results import split, wire_callers
from inferd.scheduler.tickets import Outcome, QueueLimits, QueueObserver, Request, Ticket, bytes_full, request_nbytes
from inferd.scheduler.worker_errors import OutOfMemory, WorkerLost

log = structlog.get_logger("inferd.queue")


class ModelQueue:
    def __init__(
        self,
        pool: WorkerPool,
        limits: QueueLimits,
        *,
        output_names: list[str],
        max_delay_s: float,
        wakeup: asyncio.Event,
        retry_crashed: bool = True,
        cold_start_timeout_s: float = 30.0,
        observer: QueueObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`wakeup` is set whenever the pool's workers change (the pool's on_change)."""
        self.pool = pool
        self.limits = limits
        self.output_names = output_names
        self.max_delay_s = max_delay_s
        self._drain_rows_per_s = 0.0  # one worker's throughput, averaged over recent batches
        self.retry_crashed = retry_crashed  # the model is idempotent: a batch whose worker died runs again
        self.cold_start_timeout_s = cold_start_timeout_s  # how long a request waits for a worker to start
        self.observer = observer or QueueObserver()
        self.clock = clock
        self._pending: deque[Ticket] = deque()
        self._rows = 0
        self._bytes = 0
        self._wakeup = wakeup
        self._running_batches = 0
        self._running_requests = 0
        self._dispatch_scheduled = False
        self._with_deadline = 0  # queued requests that carry a deadline
        self._running_deadlines: set[Ticket] = set()  # requests in a running batch that carry one
        self._loop_task: asyncio.Task | None = None
        self._closing = False
        self._light = True  # the last batch was a lone request

    # -- the caller's side -------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._dispatch_loop())

    @property
    def queued_rows(self) -> int:
        return self._rows

    def inflight_count(self) -> int:
        """Requests accepted and not yet answered (queued or running)."""
        return len(self._pending) + self._running_requests

    async def submit(self, request: Request, rows: int, shape_key: Hashable) -> dict[str, np.ndarray]:
        """`enqueue` for a caller that awaits its own outputs. Raises InferdError."""
        future = asyncio.get_running_loop().create_future()
        ticket = self.enqueue(request, rows, shape_key, lambda outcome: future.done() or future.set_result(outcome))
        try:
            outcome = await future
        except asyncio.CancelledError:
            self.withdraw(ticket)
            raise
        if isinstance(outcome, InferdError):
            raise outcome
        return outcome

    def enqueue(self, request: Request, rows: int, shape_key: Hashable, then: Outcome) -> Ticket:
        """Queue one request. Its outcome goes to `then`, which may be called before enqueue
        returns (a deadline already passed) and must not queue requests itself. Raises
        InferdError at once when the request cannot be queued."""
        if self._closing:
            raise InferdError(ErrorCode.UNAVAILABLE, "the model is shutting down")
        if self.pool.broken_reason:
            raise InferdError(ErrorCode.UNAVAILABLE, self.pool.broken_reason)
        limits = self.limits
        if self._rows + rows > limits.queue_rows:
            raise InferdError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"queue full: {self._rows} rows queued, limit {limits.queue_rows}; retry later",
                retry_after_s=self._time_to_drain(self._rows + rows - limits.queue_rows),
            )
        nbytes = request_nbytes(request)
        if bytes_full(self._bytes, nbytes, limits.queue_bytes):
            over = (self._bytes + nbytes - limits.queue_bytes) / self._bytes * self._rows
            raise InferdError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"queue full: {self._bytes} bytes queued, limit {limits.queue_bytes}; retry later",
                retry_after_s=self._time_to_drain(over),
            )
        alone = not self._pending
        ticket = Ticket(request, rows, shape_key, self.clock(), then, nbytes)
        self._pending.append(ticket)
        self._rows += rows
        self._bytes += nbytes
        if request.deadline is not None:
            self._with_deadline += 1
            self._wakeup.set()  # the timer loop re-arms for this deadline
        self.observer.queue_rows(self._rows)
        if alone and self._light and not self._running_batches and self.pool.has_idle and self.max_delay_s <= 0:
            # Light load (the last batch was a lone request, nothing runs, a worker waits): no
            # batch is forming, so this one goes now rather than at the end of the loop turn.
            self._dispatch()
        elif not self._dispatch_scheduled:
            # Dispatch at the end of this loop turn, not now: requests read from the sockets in
            # the same turn join the batch (one request alone still runs on the next turn).
            self._dispatch_scheduled = True
            asyncio.get_running_loop().call_soon(self._end_of_arrivals)
        return ticket

    def withdraw(self, ticket: Ticket) -> None:
        """The caller went away: a queued request leaves the queue; one already in a batch
        runs and its rows are dropped. Its outcome goes nowhere."""
        ticket.answered = True
        if ticket.queued:
            self._remove(ticket)

    async def drain(self) -> None:
        """Refuse new requests, answer every accepted one, then stop the loop."""
        self._closing = True
        self._wakeup.set()
        if self._loop_task is not None:
            await self._loop_task

    def abort(self, error: InferdError) -> None:
        """Stop forming batches and fail every queued request (running batches still finish)."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._fail_all_queued(error)

    # -- the dispatch loop -------------------------------------------------------------------

    def _remove(self, item: Ticket) -> None:
        self._pending.remove(item)
        self._leave(item)
        self.observer.queue_rows(self._rows)

    def _time_to_drain(self, rows: float) -> float:
        """Seconds until `rows` queued rows have run, at the measured rate (Retry-After)."""
        rate = self._drain_rows_per_s * max(1, len(self.pool.pids))
        return min(60.0, rows / rate) if rate > 0 else 1.0

    def _leave(self, item: Ticket) -> None:
        item.queued = False
        self._rows -= item.rows
        self._bytes -= item.nbytes
        if item.request.deadline is not None:
            self._with_deadline -= 1

    def _fail_expired(self, now: float) -> None:
        for item in [p for p in self._pending if p.request.deadline is not None and p.request.deadline <= now]:
            self._remove(item)
            item.settle(InferdError(ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed while it was queued"))

    def _fail_overdue_running(self, now: float) -> None:
        """A request whose deadline passes while its batch runs is answered then; the batch runs
        on for the others (its rows of the outputs go nowhere)."""
        for item in [t for t in self._running_deadlines if t.request.deadline <= now]:
            self._running_deadlines.discard(item)
            item.settle(InferdError(ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed while its batch was running"))

    def _fail_cold_waits(self, now: float) -> float | None:
        """With no worker running, a request waits at most cold_start_timeout_s (then 503 with
        Retry-After; the worker goes on starting for the next ones). Returns the seconds until
        the next one's wait is up."""
        limit = self.cold_start_timeout_s
        for item in [p for p in self._pending if now - p.enqueued_at >= limit]:
            self._remove(item)
            item.settle(InferdError(
                ErrorCode.UNAVAILABLE, f"the model is starting (cold start took longer than {limit:g} s); retry",
                retry_after_s=1,
            ))
        if not self._pending:
            return None
        return max(0.0, self._pending[0].enqueued_at + limit - now)

    def _fail_all_queued(self, error: InferdError) -> None:
        while self._pending:
            item = self._pending[0]
            self._remove(item)
            item.settle(error)

    def _dispatch(self) -> float | None:
        """Start every batch that can start now. Runs where things change (requests arrived, a
        batch ended), not in a task of its own. Returns the seconds until something queued is
        due (a held batch, or a request's deadline), or None when nothing waits on time."""
        due = None
        if self._running_deadlines:
            self._fail_overdue_running(self.clock())
        while self._pending:
            now = self.clock()
            self._fail_expired(now)
            if not self._pending:
                break
            if not self.pool.has_idle:
                self.pool.demand()  # starts a worker if there is none (a cold start)
                if self.pool.cold:
                    due = self._fail_cold_waits(now)
                break  # the batch that ends next (or the worker that starts) dispatches again
            # Draining: nothing more will arrive, so a held batch cannot get fuller.
            delay = 0.0 if self._closing else self.max_delay_s
            decision = next_batch(self._pending, now, self.limits.batch_rows, delay)
            if not isinstance(decision, Send):
                due = decision.seconds
                break
            worker = self.pool.take()
            count = decision.count
            if count > 1 and self._pending[0].request.stream is not None:
                count = 1  # a decoupled model's requests run one at a time (inferd.scheduler.streams)
            batch = [self._pending.popleft() for _ in range(count)]
            self.pool.note_wait(now - batch[0].enqueued_at, now)
            self._start_batch(worker, batch, now)
        if self._with_deadline or self._running_deadlines:  # a deadline that passes is answered then, not later
            earliest = min([p.request.deadline for p in self._pending if p.request.deadline is not None]
                           + [t.request.deadline for t in self._running_deadlines])
            due = min(d for d in (due, earliest - self.clock()) if d is not None)
        return due

    async def _dispatch_loop(self) -> None:
        """Wakes for what has no caller to act on it: a queue-delay timer coming due, a worker
        replaced, the pool broken, or the drain finishing."""
        while True:
            self._wakeup.clear()
            if self._closing and not self._pending and not self._running_batches:
                return
            if self._pending and (reason := self.pool.unavailable):
                self._fail_all_queued(InferdError(ErrorCode.UNAVAILABLE, reason, retry_after_s=1))
            timeout = self._dispatch()
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    def _start_batch(self, worker, batch: list[Ticket], now: float) -> None:
        for item in batch:
            self._leave(item)
            self.observer.dequeued(now - item.enqueued_at)
            if item.request.deadline is not None:
                self._running_deadlines.add(item)
        self.observer.queue_rows(self._rows)
        self._running_batches += 1
        self._light = len(batch) == 1
        self._running_requests += len(batch)
        try:
            worker.run_batch(
                [item.request.id for item in batch], self._parts(batch), self._wanted_outputs(batch),
                lambda result: self._finish_batch(worker, batch, now, result),
                light=len(batch) == 1 and not self._pending and self._running_batches == 1,
                stream=batch[0].request.stream,
                callers=wire_callers(batch) if worker.per_request else None,
            )
        except Exception as e:  # e.g. tensors that cannot be packed: this batch fails, not the queue
            self._finish_batch(worker, batch, now, unexpected(e, "batch dispatch failed", model=self.pool.spec.model))

    def _finish_batch(self, worker, batch: list[Ticket], started: float, result) -> None:
        """The worker's answer (outputs or an InferdError), straight from its socket."""
        ok = not isinstance(result, InferdError)
        if self._running_deadlines:
            self._running_deadlines.difference_update(batch)
        rows = sum(item.rows for item in batch)
        elapsed = self.clock() - started
        if ok and elapsed > 0:
            self._drain_rows_per_s = 0.7 * self._drain_rows_per_s + 0.3 * rows / elapsed if self._drain_rows_per_s else rows / elapsed
        if isinstance(result, OutOfMemory):
            self.limits.out_of_memory(rows)
            self.observer.out_of_memory(rows)
        if isinstance(result, WorkerLost) and self.retry_crashed and not any(item.retried for item in batch):
            self._retry(batch)
        elif isinstance(result, UnreadPart) and len(batch) > 1:  # a client shrank its file: only its request fails
            self._requeue([item for i, item in enumerate(batch) if i != result.index], retried=False)
            batch[result.index].settle(result)
        elif isinstance(result, OutOfMemory) and len(batch) > 1:
            # Split: the limit is now at most half of this batch, and its requests run again
            # in smaller batches. A lone request that runs out of memory fails (below).
            log.warning("a batch ran out of memory; running it again in smaller batches", model=self.pool.spec.model,
                        version=self.pool.spec.version, rows=rows, batch_limit=self.limits.batch_rows, error=result.message)
            self._requeue(batch, retried=False)
        else:
            if isinstance(result, OutOfMemory):
                result = OutOfMemory(f"{rows} rows did not fit ({result.message.removeprefix('out of memory: ')}); "
                                     f"the model's batch limit is now {self.limits.batch_rows} rows")
            try:
                if ok:
                    split(batch, result)
            except Exception as e:  # a bug here must not leave callers waiting forever
                ok, result = False, unexpected(e, "splitting a batch failed", model=self.pool.spec.model)
            if not ok:
                for item in batch:
                    item.settle(result)
        self._running_batches -= 1
        self._running_requests -= len(batch)
        self.pool.give_back(worker)
        self.observer.batch_done(len(batch), rows, elapsed, ok)
        # Form the next batch two loop turns from now: the callers just answered get to send
        # their responses, and one more round of socket reads gets to queue the requests that
        # arrived meanwhile, so under load they join this batch instead of waiting a whole turn.
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._dispatch_and_arm)

    def _retry(self, batch: list[Ticket]) -> None:
        """Back to the front of the queue, in order, to run once more on another worker (those
        whose callers are still waiting: at shutdown, or past their deadline, none may be)."""
        if waiting := sum(not item.answered for item in batch):
            log.warning("a worker died running a batch; running it again", model=self.pool.spec.model,
                        version=self.pool.spec.version, requests=waiting)
        self._requeue(batch, retried=True)

    def _requeue(self, batch: list[Ticket], retried: bool) -> None:
        for item in reversed(batch):
            item.retried = item.retried or retried
            if item.answered:  # its caller went away
                continue
            item.queued = True
            self._pending.appendleft(item)
            self._rows += item.rows
            self._bytes += item.nbytes
            if item.request.deadline is not None:
                self._with_deadline += 1
        self.observer.queue_rows(self._rows)

    def _end_of_arrivals(self) -> None:
        self._dispatch_scheduled = False
        self._dispatch_and_arm()

    def _dispatch_and_arm(self) -> None:
        """Dispatch; wake the loop if a held batch (or a request waiting for a cold start) now
        needs its timer, or the drain may end."""
        self._dispatch()
        if self._closing or (self._pending and (self.max_delay_s > 0 or self.pool.cold)):
            self._wakeup.set()

    @staticmethod
    def _parts(batch: list[Ticket]) -> dict[str, list[np.ndarray]]:
        """Per input, the requests' arrays in batch order; the worker handle stacks them where
        they go (straight into shared memory), so the batch is copied once."""
        return {name: [item.request.inputs[name] for item in batch] for name in batch[0].request.inputs}

    def _wanted_outputs(self, batch: list[Ticket]) -> list[str]:
        wanted: set[str] = set()
        for item in batch:
            if item.request.outputs is None:
                return self.output_names
            wanted.update(item.request.outputs)
        return [name for name in self.output_names if name in wanted]
