"""SequenceQueue's own bookkeeping when a batch fails in a way that concerns one row (a client's
shared-memory file shrank) or the batch's size (out of memory). The worker here is a stand-in
that answers run_batch as the real one does (tests/e2e/test_sequences.py runs real workers);
what is checked is the queue's logic: who is answered with what, and what runs again."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from inferd.common.deferred import UnreadPart
from inferd.common.errors import ErrorCode, InferdError
from inferd.config.sequence import SequenceBatching
from inferd.daemon.requests import InferRequest
from inferd.scheduler.sequences import SequenceQueue
from inferd.scheduler.tickets import FixedLimits, QueueObserver
from inferd.scheduler.worker_errors import OutOfMemory


class _Worker:
    dead = False

    def __init__(self, answers, per_request=False):
        self.answers = answers  # per batch: a callable(rows, parts) -> outputs or an exception
        self.batches: list[list[str]] = []
        self.per_request = per_request  # a per-request backend's worker: batches carry their callers
        self.callers: list = []

    def run_batch(self, ids, parts, wanted, done, callers=None, **_):
        self.batches.append(list(ids))
        self.callers.append(callers)
        answer = self.answers.pop(0)(ids, parts)
        if isinstance(answer, UnreadPart):
            raise answer  # as worker.run_batch does: nothing is sent
        asyncio.get_running_loop().call_soon(done, answer)


class _Pool:
    broken_reason = unavailable = None

    def __init__(self, worker):
        self.workers = frozenset([worker])
        self.busy = False

    def take_this(self, worker):
        if self.busy:
            return False
        self.busy = True
        return True

    def give_back(self, worker):
        self.busy = False

    def grow(self, reason):
        pass


class _Observer(QueueObserver):
    def __init__(self):
        self.oom: list[int] = []

    def out_of_memory(self, rows):
        self.oom.append(rows)


def _echo(ids, parts):
    return {"OUT": np.concatenate([np.asarray(p) for p in parts["IN"]])}


def _queue(answers, limits=None, observer=None, per_request=False):
    worker = _Worker(answers, per_request)
    queue = SequenceQueue(_Pool(worker), limits or FixedLimits(8, 64), model="m", output_names=["OUT"],
                          input_names=["IN"], batching=SequenceBatching(), max_batch_size=8, max_workers=1,
                          wakeup=asyncio.Event(), observer=observer)
    return queue, worker


def _send(queue, sid, value, start=True):
    done = asyncio.get_running_loop().create_future()
    request = InferRequest({"IN": np.full((1, 1), value, np.int32)}, id=f"r{sid}",
                           parameters={"sequence_id": sid, "sequence_start": start})
    queue.enqueue(request, 1, ((1,),), lambda outcome: done.done() or done.set_result(outcome))
    return done


async def test_an_unreadable_part_fails_its_own_request_and_the_others_run_next():
    shrank = InferdError(ErrorCode.INVALID_ARGUMENT, "the file shrank")
    queue, worker = _queue([lambda ids, parts: UnreadPart(1, shrank), _echo])
    answers = [_send(queue, sid, sid * 10) for sid in (1, 2, 3)]
    first, second, third = await asyncio.wait_for(asyncio.gather(*answers), 5)
    assert second is shrank or (isinstance(second, InferdError) and "shrank" in second.message)
    assert first["OUT"].tolist() == [[10]] and third["OUT"].tolist() == [[30]]
    assert worker.batches == [["r1", "r2", "r3"], ["r1", "", "r3"]]  # slot 1 idle in the second
    assert queue.inflight_count() == 0 and queue.holds(1) and queue.holds(2) and queue.holds(3)


async def test_a_per_request_backends_rows_get_their_own_answers_and_send_their_parameters():
    refused = InferdError(ErrorCode.INVALID_ARGUMENT, "not this one")
    answers = [lambda ids, parts: [{"OUT": np.array([[1]])}, refused, {"OUT": np.array([[3, 3]])}],
               lambda ids, parts: [{"OUT": np.array([[10]])}, {}, {"OUT": np.array([[30]])}]]
    queue, worker = _queue(answers, per_request=True)
    first, second, third = await asyncio.wait_for(asyncio.gather(*(_send(queue, sid, sid) for sid in (1, 2, 3))), 5)
    assert first["OUT"].tolist() == [[1]] and second is refused and third["OUT"].tolist() == [[3, 3]]
    assert worker.callers[0] == [[1, {"sequence_id": sid, "sequence_start": True}] for sid in (1, 2, 3)]
    again = [_send(queue, 1, 5, start=False), _send(queue, 3, 6, start=False)]  # slot 1 idle in this batch
    assert [a["OUT"].tolist() for a in await asyncio.wait_for(asyncio.gather(*again), 5)] == [[[10]], [[30]]]
    assert worker.callers[1][1] == [1, {}]  # the idle slot: a caller of one row without parameters


async def test_the_queue_byte_limit_refuses_and_frees_as_requests_leave():
    queue, worker = _queue([_echo, _echo, _echo], FixedLimits(8, 64, queue_bytes=8))  # 2 requests of 4 bytes
    first, second = _send(queue, 1, 1), _send(queue, 2, 2)
    with pytest.raises(InferdError) as raised:
        _send(queue, 3, 3)
    assert raised.value.code is ErrorCode.RESOURCE_EXHAUSTED and "8 bytes queued, limit 8" in raised.value.message
    assert not queue.holds(3)
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    more = [_send(queue, 1, 5, start=False), _send(queue, 2, 6, start=False)]  # the bytes left with them
    assert [a["OUT"].tolist() for a in await asyncio.wait_for(asyncio.gather(*more), 5)] == [[[5]], [[6]]]
    assert queue._bytes == 0


async def test_a_batch_out_of_memory_is_reported_and_halves_the_batch_limit():
    observer = _Observer()
    limits = FixedLimits(8, 64)
    queue, worker = _queue([lambda ids, parts: OutOfMemory("out of memory: 4 rows"), _echo], limits, observer)
    answers = [_send(queue, sid, sid) for sid in (1, 2, 3, 4)]
    outcomes = await asyncio.wait_for(asyncio.gather(*answers), 5)
    assert all(isinstance(o, OutOfMemory) for o in outcomes)  # (their sequences' state may have changed: not run again)
    assert observer.oom == [4] and limits.batch_rows == 2


async def test_after_a_batch_out_of_memory_new_sequences_take_slots_below_the_batch_limit():
    limits = FixedLimits(8, 64)
    queue, worker = _queue([lambda ids, parts: OutOfMemory("out of memory"), _echo, _echo], limits)
    await asyncio.wait_for(asyncio.gather(*[_send(queue, sid, sid) for sid in (1, 2, 3, 4)]), 5)  # their sequences hold slots 0-3
    assert limits.batch_rows == 2
    for sid in (1, 2, 3, 4):
        queue._end(queue._sequences[sid], None)  # (as their END requests would)
    answers = [_send(queue, sid, sid) for sid in (5, 6, 7)]
    done, pending = await asyncio.wait(answers, timeout=0.5)
    assert len(done) == 2 and worker.batches[1] == ["r5", "r6"]  # the third waits for a slot below 2
    assert not queue._sequences[7].worker


async def test_the_pool_is_pinned_while_it_holds_sequences():
    queue, worker = _queue([_echo, _echo])
    assert not queue.pool.pinned()
    await asyncio.wait_for(_send(queue, 1, 1), 5)
    assert queue.pool.pinned()  # sequence 1 lives on its worker
    done = asyncio.get_running_loop().create_future()
    request = InferRequest({"IN": np.full((1, 1), 2, np.int32)}, parameters={"sequence_id": 1, "sequence_end": True})
    queue.enqueue(request, 1, ((1,),), done.set_result)
    await asyncio.wait_for(done, 5)
    assert not queue.pool.pinned()

