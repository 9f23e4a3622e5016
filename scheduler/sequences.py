"""The queue of a stateful model ([sequence_batching]): Triton's sequence batcher.

Each sequence (a correlation id, from a START request to an END request) holds a slot on one
worker from its start to its end, so the model's state for it stays in one process. Its
requests run there in order, one at a time: the next waits for the previous one's answer.
A new sequence with no free slot waits in a backlog for one (bounded with the other queued
requests by the queue's row limit). A sequence that gets no request for max_sequence_idle_us
(counted from its last request's arrival, as Triton's reaper does) ends and frees its slot; so
does one whose worker exits. Its next request is then refused, saying why. The daemon fills the
model's control inputs (START, END, READY, CORRID) in every row.

Draining (a new generation replaced this one, or the daemon stops), the queue refuses new
sequences but serves the requests of those it holds until they end or go idle (Triton's
sequence batcher does the same when it stops); the data plane routes them here.

- direct: a worker's batch has a row for each of its slots up to the highest one with a
  request ready; slots without one carry a READY=0 row of zeros (when the model batches).
- oldest: a worker's batch holds the ready requests of up to max_batch_size of its sequences,
  oldest first; no idle rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

import structlog

from inferd.common.deferred import UnreadPart
from inferd.common.errors import ErrorCode, InferdError, clip, invalid, unexpected
from inferd.config.sequence import SequenceBatching
from inferd.scheduler.pool import WorkerPool
from inferd.scheduler.sequence_flags import Flags, control_parts, read_flags
from inferd.scheduler.sequence_rows import idle_row, row_callers, row_outcome, slot_rows, sooner, wanted_outputs
from inferd.scheduler.tickets import Outcome, QueueLimits, QueueObserver, Request, Ticket, bytes_full, request_nbytes
from inferd.scheduler.worker_errors import OutOfMemory, WorkerLost

log = structlog.get_logger("inferd.sequences")
ENDED_KEPT = 4096  # ended sequences remembered, to say why their next request is refused


@dataclasses.dataclass(eq=False)
class _Sequence:
    key: int | str
    idle_since: float  # when its last request arrived
    worker: object | None = None  # the WorkerHandle whose slot it holds (None: in the backlog)
    slot: int = -1
    waiting: deque = dataclasses.field(default_factory=deque)  # (Ticket, Flags), in arrival order
    running: tuple[Ticket, Flags] | None = None
    ending: bool = False  # its END request is queued or running (or it moved)
    moved: bool = False  # it started again on the generation replacing this one


class SequenceQueue:
    """ModelQueue's interface (enqueue, withdraw, drain, abort, inflight_count) for a stateful model."""

    def __init__(self, pool: WorkerPool, limits: QueueLimits, *, model: str, output_names: list[str],
                 input_names: list[str], batching: SequenceBatching, max_batch_size: int, max_workers: int,
                 wakeup: asyncio.Event, observer: QueueObserver | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.pool, self.limits, self.model = pool, limits, model
        self.output_names, self.input_names = output_names, input_names
        self.batching = batching
        self.batch_dim = max_batch_size > 0
        per_worker = batching.max_candidate_sequences if batching.strategy == "oldest" else 0
        self.slots_per_worker = per_worker or max(1, max_batch_size)
        self.max_workers = max_workers
        self.idle_s = batching.max_sequence_idle_us / 1e6
        self.observer = observer or QueueObserver()
        self.clock = clock
        self._wakeup = wakeup
        self._sequences: dict[int | str, _Sequence] = {}  # holding a slot, or in the backlog
        self._backlog: deque[_Sequence] = deque()
        self._slots: dict[object, list[_Sequence | None]] = {}  # worker -> its slots
        self._where: dict[Ticket, _Sequence] = {}  # each waiting request's sequence
        self._bytes = 0  # what the waiting requests' inputs hold
        self._ended: OrderedDict[int | str, str] = OrderedDict()  # recently ended: why
        self._running_batches = self._running_requests = 0
        self._closing = False  # draining: only the sequences held go on
        self._aborted = False
        self._dispatch_scheduled = False
        self._loop_task: asyncio.Task | None = None
        pool.pinned = lambda: bool(self._sequences)  # (memory eviction must not end them)

    # -- the caller's side -------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._dispatch_loop())

    @property
    def queued_rows(self) -> int:
        return len(self._where)

    def inflight_count(self) -> int:
        return len(self._where) + self._running_requests

    def holds(self, key) -> bool:
        """Whether a request without START for sequence `key` continues a sequence here."""
        seq = self._sequences.get(key)
        return seq is not None and not seq.ending and not self._aborted

    def forget(self, key) -> None:
        """The sequence started again elsewhere (on the generation replacing this one): it ends
        here, at once or once its requests queued here have run."""
        seq = self._sequences.get(key)
        if seq is not None:
            seq.ending = seq.moved = True
            if not seq.waiting and seq.running is None:
                self._end(seq, "it started again on the model's new version")

    def enqueue(self, request: Request, rows: int, shape_key: Hashable, then: Outcome) -> Ticket:
        """Queue one request of a sequence; raises InferdError when it cannot be queued."""
        if self._aborted:
            raise InferdError(ErrorCode.UNAVAILABLE, "the model is shutting down")
        if self.pool.broken_reason:
            raise InferdError(ErrorCode.UNAVAILABLE, self.pool.broken_reason)
        flags = read_flags(request.parameters, self.model, self.batching)
        if self.batch_dim and rows != 1:
            raise invalid(f"inference request to model {clip(self.model)} must specify batch-size 1 due to requirements "
                          f"of sequence batcher (it has {rows} rows)")
        seq = self._sequences.get(flags.id)
        if self._closing and (flags.start or seq is None):  # (Triton's words when its scheduler stops)
            raise InferdError(ErrorCode.UNAVAILABLE, "the model version is stopping: it has stopped accepting new "
                              "sequences (it finishes those it holds)", retry_after_s=1.0)
        if not flags.start and (seq is None or seq.ending):
            raise self._not_started(flags.id, seq)
        if len(self._where) + 1 > self.limits.queue_rows:
            raise InferdError(ErrorCode.RESOURCE_EXHAUSTED, f"queue full: {len(self._where)} sequence requests "
                              f"queued, limit {self.limits.queue_rows}; retry later", retry_after_s=1.0)
        nbytes = request_nbytes(request)
        if bytes_full(self._bytes, nbytes, self.limits.queue_bytes):
            raise InferdError(ErrorCode.RESOURCE_EXHAUSTED, f"queue full: {self._bytes} bytes queued, limit "
                              f"{self.limits.queue_bytes}; retry later", retry_after_s=1.0)
        if seq is None:
            seq = _Sequence(flags.id, self.clock())
            self._sequences[flags.id] = seq
            self._ended.pop(flags.id, None)
            self._backlog.append(seq)
        ticket = Ticket(request, rows, shape_key, self.clock(), then, nbytes)
        seq.idle_since = ticket.enqueued_at
        seq.waiting.append((ticket, flags))
        seq.ending = flags.end
        self._queue(ticket, seq)
        if not self._dispatch_scheduled:  # the end of this loop turn: arrivals of this turn batch together
            self._dispatch_scheduled = True
            asyncio.get_running_loop().call_soon(self._end_of_arrivals)
        return ticket

    def _not_started(self, key, seq: _Sequence | None) -> InferdError:
        why = "its END request was already sent" if seq is not None else self._ended.get(key)
        name = key if isinstance(key, int) else clip(key)
        return invalid(f"inference request for sequence {name} to model {clip(self.model)} must specify the START flag "
                       "on the first request of the sequence" + (f" (the sequence ended: {why})" if why else ""))

    def withdraw(self, ticket: Ticket) -> None:
        """The caller went away: a queued request leaves the queue (its sequence goes on); one
        running runs and its answer goes nowhere."""
        ticket.answered = True
        self._unqueue(ticket)

    def _unqueue(self, ticket: Ticket) -> None:
        seq = self._take(ticket)
        if seq is not None:
            seq.waiting = deque(w for w in seq.waiting if w[0] is not ticket)
            self.observer.queue_rows(len(self._where))

    def _queue(self, ticket: Ticket, seq: _Sequence) -> None:
        self._where[ticket] = seq
        self._bytes += ticket.nbytes
        self.observer.queue_rows(len(self._where))

    def _take(self, ticket: Ticket) -> _Sequence | None:  # (the caller takes it out of seq.waiting)
        seq = self._where.pop(ticket, None)
        self._bytes -= ticket.nbytes if seq is not None else 0
        return seq

    async def drain(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._loop_task is not None:
            await self._loop_task

    def abort(self, error: InferdError) -> None:
        """The drain's budget is spent: what waits fails, and every sequence ends."""
        self._closing = self._aborted = True
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._fail_waiting(lambda seq: True, error)
        for seq in list(self._sequences.values()):
            self._end(seq, "its model version stopped (the drain's budget, drain_timeout_s, was spent)")

    # -- sequences and slots -----------------------------------------------------------------

    def _end(self, seq: _Sequence, why: str | None) -> None:
        """The sequence gives its slot back; `why`: what its next request is told (None: END)."""
        if self._sequences.get(seq.key) is seq:
            del self._sequences[seq.key]
        if seq.worker is not None and (table := self._slots.get(seq.worker)) and table[seq.slot] is seq:
            table[seq.slot] = None
        elif seq in self._backlog:
            self._backlog.remove(seq)
        if why is not None:
            self._ended[seq.key] = why
            while len(self._ended) > ENDED_KEPT:
                self._ended.popitem(last=False)

    def _fail_waiting(self, which: Callable[[_Sequence], bool], error: InferdError) -> None:
        for seq in [s for s in self._sequences.values() if which(s)]:
            while seq.waiting:
                ticket, _ = seq.waiting.popleft()
                self._take(ticket)
                ticket.settle(error)
        self.observer.queue_rows(len(self._where))

    def _drop_lost_workers(self) -> None:
        live = self.pool.workers
        for worker in [w for w in self._slots if w not in live or w.dead]:
            self._lose(worker)

    def _lose(self, worker) -> None:
        """The sequences of a worker that exited (or was stopped) end: their state went with it."""
        lost = [s for s in self._slots.pop(worker, ()) if s is not None]
        why = "the worker holding its state exited; start the sequence again"
        self._fail_waiting(lambda s: s in lost, InferdError(ErrorCode.UNAVAILABLE, f"sequence ended: {why}"))
        for seq in lost:
            self._end(seq, why)
        if lost:
            log.warning("sequences ended: their worker exited", model=self.model, sequences=len(lost))

    def _expire(self, now: float) -> float | None:
        """End the sequences idle for max_sequence_idle_us; answer requests past their deadline
        (one running: its batch runs on, and its sequence's state includes it, as with any
        answer the caller did not wait for). Returns the seconds until the next is due."""
        due = None
        for seq in list(self._sequences.values()):
            for ticket, _ in [w for w in seq.waiting if w[0].request.deadline is not None]:
                if ticket.request.deadline <= now:
                    self._unqueue(ticket)
                    ticket.settle(InferdError(ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed while it was queued"))
                else:
                    due = sooner(due, ticket.request.deadline - now)
            running = seq.running[0] if seq.running else None
            if running is not None and running.request.deadline is not None and not running.answered:
                if running.request.deadline <= now:
                    running.settle(InferdError(ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed while its "
                                               "batch was running (the model ran it: its sequence's state includes it)"))
                else:
                    due = sooner(due, running.request.deadline - now)
            if seq.waiting or seq.running:
                continue
            if now - seq.idle_since >= self.idle_s:
                self._end(seq, f"no request for max_sequence_idle_us ({self.idle_s:g} s)")
            else:
                due = sooner(due, seq.idle_since + self.idle_s - now)
        return due

    def _bind_backlog(self) -> None:
        """Give waiting new sequences free slots, on the worker with the fewest sequences."""
        live = self.pool.workers
        for worker in live:
            self._slots.setdefault(worker, [None] * self.slots_per_worker)
        for seq in [s for s in self._backlog if not s.waiting]:  # its requests timed out or were withdrawn
            self._end(seq, "its requests left the queue before it got a slot")
        # direct: new sequences take slots below the batch limit (it halves when a batch runs out of memory)
        top = max(1, self.limits.batch_rows) if self.batching.strategy == "direct" else self.slots_per_worker
        while self._backlog:
            free = [(sum(s is not None for s in t), w) for w, t in self._slots.items() if None in t[:top]]
            if not free:
                if len(live) < self.max_workers:
                    self.pool.grow(f"{len(self._backlog)} new sequences wait for a slot")
                return
            worker = min(free, key=lambda f: f[0])[1]
            seq = self._backlog.popleft()
            seq.worker, seq.slot = worker, self._slots[worker][:top].index(None)
            self._slots[worker][seq.slot] = seq

    # -- batches -----------------------------------------------------------------------------

    def _ready(self, worker) -> list[_Sequence]:
        """The worker's sequences whose next request can run now, in the batch's row order."""
        ready = [s for s in self._slots[worker] if s is not None and s.waiting and s.running is None]
        if not ready:
            return []
        head = min(ready, key=lambda s: s.waiting[0][0].enqueued_at)
        ready = [s for s in ready if s.waiting[0][0].shape_key == head.waiting[0][0].shape_key]
        if not self.batch_dim:
            return [head]
        if self.batching.strategy == "oldest":
            return sorted(ready, key=lambda s: s.waiting[0][0].enqueued_at)[: max(1, self.limits.batch_rows)]
        return ready  # direct: in slot order

    def _dispatch(self) -> float | None:
        """Start a batch on every idle worker that has a sequence request ready. Returns the
        seconds until an idle sequence or a queued request's deadline is due."""
        if self._running_batches == 0 and self.pool.unavailable and self._where:
            self._fail_waiting(lambda s: True, InferdError(ErrorCode.UNAVAILABLE, self.pool.unavailable, retry_after_s=1))
        self._drop_lost_workers()
        due = self._expire(self.clock())
        self._bind_backlog()
        for worker in list(self._slots):
            chosen = self._ready(worker)
            if chosen and self.pool.take_this(worker):
                self._start_batch(worker, chosen)
        return due

    def _start_batch(self, worker, chosen: list[_Sequence]) -> None:
        now = self.clock()
        for seq in chosen:
            ticket, flags = seq.waiting.popleft()
            self._take(ticket)
            ticket.queued = False
            seq.running = (ticket, flags)
            self.observer.dequeued(now - ticket.enqueued_at)
        self.observer.queue_rows(len(self._where))
        rows = chosen if self.batching.strategy == "oldest" or not self.batch_dim else slot_rows(chosen)
        self._running_batches += 1
        self._running_requests += len(chosen)
        try:
            template = chosen[0].running[0].request.inputs
            parts = {name: [s.running[0].request.inputs[name] if s else idle_row(template[name]) for s in rows]
                     for name in self.input_names}
            parts |= control_parts(self.batching.controls, [s.running[1] if s else None for s in rows], self.batch_dim)
            wanted = wanted_outputs([s.running[0].request for s in chosen], self.output_names)
            worker.run_batch([s.running[0].request.id if s else "" for s in rows], parts, wanted,
                             lambda result: self._finish_batch(worker, rows, now, result),
                             callers=row_callers(rows) if worker.per_request else None)
        except Exception as e:  # tensors that cannot be packed: this batch fails, not the queue
            self._finish_batch(worker, rows, now, unexpected(e, "sequence batch dispatch failed", model=self.model))

    def _finish_batch(self, worker, rows: list[_Sequence | None], started: float, result) -> None:
        """The worker's answer: each row's outputs go to its request; a sequence whose END
        request ran gives its slot back."""
        ok = not isinstance(result, InferdError)
        if isinstance(result, WorkerLost):  # the state of every sequence on that worker is gone
            result = InferdError(ErrorCode.UNAVAILABLE, f"sequence ended: {result.message}; start the sequence again")
        now = self.clock()
        chosen = sum(s is not None for s in rows)
        if isinstance(result, OutOfMemory):  # as ModelQueue: the batch limit halves
            self.limits.out_of_memory(len(rows))
            self.observer.out_of_memory(len(rows))
        settled = rows
        if isinstance(result, UnreadPart):  # a client shrank its file: only its request fails
            settled = [s if i == result.index else None if self._put_back(s) else s for i, s in enumerate(rows)]
        for i, seq in enumerate(settled):
            if seq is None:
                continue
            ticket, flags = seq.running
            seq.running = None
            try:
                outcome = row_outcome(result, i, ticket.request.outputs, self.batch_dim) if ok else result
            except Exception as e:  # a bug here must not leave the caller waiting
                outcome = unexpected(e, "splitting a sequence batch failed", model=self.model)
            ticket.settle(outcome)
            if (flags.end or seq.moved) and not seq.waiting:
                self._end(seq, None if flags.end else "it started again on the model's new version")
        if worker.dead:
            self._lose(worker)
        self._running_batches -= 1
        self._running_requests -= chosen
        self.pool.give_back(worker)
        self.observer.batch_done(chosen, len(rows), now - started, ok)
        asyncio.get_running_loop().call_soon(self._dispatch_and_arm)

    def _put_back(self, seq: _Sequence | None) -> bool:
        """A row that did not run goes back to the front of its sequence (False: idle, or withdrawn)."""
        if seq is None or seq.running[0].answered:
            return False
        ticket, flags = seq.running
        seq.running = None
        ticket.queued = True
        seq.waiting.appendleft((ticket, flags))
        self._queue(ticket, seq)
        return True

    # -- the loop ----------------------------------------------------------------------------

    def _end_of_arrivals(self) -> None:
        self._dispatch_scheduled = False
        self._dispatch_and_arm()

    def _dispatch_and_arm(self) -> None:
        self._dispatch()
        self._wakeup.set()  # the loop re-arms its timer for idle sequences and deadlines

    async def _dispatch_loop(self) -> None:
        """Wakes for what has no caller to act on it: an idle sequence's end, a deadline, a
        worker started or lost, the drain finishing."""
        while True:
            self._wakeup.clear()
            if self._closing and not self._where and not self._running_batches and not self._sequences:
                return
            timeout = self._dispatch()
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
