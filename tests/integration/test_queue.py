"""The scheduler with real worker processes, driven in-process: batching, a caller that goes
away, a worker that dies mid-batch."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from inferd.backends import backend_path, mailbox
from inferd.common.errors import ErrorCode, InferdError
from inferd.config.model import ModelSettings
from inferd.daemon.requests import InferRequest
from inferd.scheduler.pool import PoolObserver, Scaling, WorkerPool
from inferd.scheduler.queue import ModelQueue
from inferd.scheduler.tickets import FixedLimits, QueueObserver
from inferd.scheduler.worker import LoadFailed, WorkerSpec


class Recorder(QueueObserver, PoolObserver):
    def __init__(self):
        self.batches: list[int] = []
        self.started = asyncio.Event()
        self.posted = self.rung = 0  # batches sent through the mailbox, and of those, rung

    def batch_sent(self, posted: bool, rung: bool) -> None:
        self.posted += posted
        self.rung += rung

    def dequeued(self, waited_s: float) -> None:
        self.started.set()

    def batch_done(self, requests, rows, compute_s, ok):
        self.batches.append(rows)


def _pool(path, wakeup: asyncio.Event | None = None, observer=None, **settings) -> WorkerPool:
    settings = ModelSettings(**{"min_workers": 1, **settings})
    spec = WorkerSpec.of(path.stem, "1", path, backend_path("onnx"), settings)
    return WorkerPool(spec, Scaling.from_settings(settings), observer=observer,
                      on_change=wakeup.set if wakeup else lambda: None)


async def _queue(path, max_batch_rows=256, max_queue_rows=1024, delay_s=0.0, **settings):
    wakeup = asyncio.Event()
    recorder = Recorder()
    pool = _pool(path, wakeup, recorder, **settings)
    metadata = await pool.start()
    queue = ModelQueue(pool, FixedLimits(max_batch_rows, max_queue_rows), output_names=[t.name for t in metadata.outputs],
                       max_delay_s=delay_s, wakeup=wakeup, retry_crashed=settings.get("idempotent", True),
                       observer=recorder)
    queue.start()
    return queue, pool, recorder


@pytest.fixture
def slow_model(model_repo):
    return model_repo / "slow" / "1" / "model.onnx"


@pytest.fixture
def add_sub(model_repo):
    return model_repo / "add_sub" / "1" / "model.onnx"


def _add_sub_request(value: int, rows: int = 1) -> InferRequest:
    a = np.full((rows, 16), value, np.int32)
    return InferRequest({"INPUT0": a, "INPUT1": a})


async def test_requests_queued_behind_a_busy_worker_run_as_one_batch(slow_model):
    queue, pool, recorder = await _queue(slow_model)
    try:
        x = np.ones((128, 1024), np.float32)
        first = asyncio.create_task(queue.submit(InferRequest({"x": x}), 128, ((1024,),)))
        await recorder.started.wait()  # the worker is busy with the first batch
        rows = [np.full((1, 1024), i, np.float32) for i in range(10)]
        rest = await asyncio.gather(*(queue.submit(InferRequest({"x": r}), 1, ((1024,),)) for r in rows))
        await first
        assert recorder.batches == [128, 10]
        for _r, out in zip(rows, rest):
            assert out["y"].shape == (1, 1024)
        # Rows kept their identity: row i's output equals a lone run of row i.
        lone = await queue.submit(InferRequest({"x": rows[3]}), 1, ((1024,),))
        np.testing.assert_allclose(rest[3]["y"], lone["y"], rtol=1e-5)
    finally:
        await queue.drain()
        await pool.stop()


async def test_a_caller_that_goes_away_leaves_the_queue(add_sub):
    queue, pool, recorder = await _queue(add_sub, delay_s=30.0)  # held for a fuller batch
    try:
        task = asyncio.create_task(queue.submit(_add_sub_request(1), 1, ((16,),)))
        while queue.queued_rows == 0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert queue.queued_rows == 0 and queue.inflight_count() == 0
        assert recorder.batches == []  # it never ran
    finally:
        queue.abort(InferdError(ErrorCode.UNAVAILABLE, "test over"))
        await pool.stop()


async def test_queue_full_is_refused_at_once(add_sub):
    queue, pool, _ = await _queue(add_sub, max_queue_rows=3, delay_s=30.0)
    try:
        held = [asyncio.create_task(queue.submit(_add_sub_request(i), 1, ((16,),))) for i in range(3)]
        while queue.queued_rows < 3:
            await asyncio.sleep(0)
        with pytest.raises(InferdError) as e:
            await queue.submit(_add_sub_request(9), 1, ((16,),))
        assert e.value.code is ErrorCode.RESOURCE_EXHAUSTED
    finally:
        queue.abort(InferdError(ErrorCode.UNAVAILABLE, "test over"))
        for t in held:
            with pytest.raises(InferdError):
                await t
        await pool.stop()


async def test_worker_killed_mid_batch_fails_that_batch_and_is_replaced(slow_model):
    queue, pool, recorder = await _queue(slow_model, idempotent=False)
    try:
        [old_pid] = pool.pids
        x = np.ones((256, 1024), np.float32)
        task = asyncio.create_task(queue.submit(InferRequest({"x": x}), 256, ((1024,),)))
        await recorder.started.wait()
        os.kill(old_pid, signal.SIGKILL)
        with pytest.raises(InferdError) as e:
            await task
        assert e.value.code is ErrorCode.UNAVAILABLE and "exited" in e.value.message
        out = await queue.submit(InferRequest({"x": x[:1]}), 1, ((1024,),))  # served by the replacement
        assert out["y"].shape == (1, 1024)
        assert pool.pids and pool.pids != [old_pid] and pool.exits == 1
    finally:
        await queue.drain()
        await pool.stop()


async def test_an_idempotent_models_batch_runs_again_on_the_replacement(slow_model):
    queue, pool, recorder = await _queue(slow_model)  # idempotent by default
    try:
        [old_pid] = pool.pids
        x = np.ones((256, 1024), np.float32)
        tasks = [asyncio.create_task(queue.submit(InferRequest({"x": x[i:i + 64]}), 64, ((1024,),))) for i in range(0, 256, 64)]
        await recorder.started.wait()
        os.kill(old_pid, signal.SIGKILL)
        outs = await asyncio.gather(*tasks)
        assert [o["y"].shape for o in outs] == [(64, 1024)] * 4
        assert pool.pids and pool.pids != [old_pid] and pool.exits == 1
    finally:
        await queue.drain()
        await pool.stop()


async def test_drain_answers_queued_requests_before_returning(add_sub):
    queue, pool, _ = await _queue(add_sub, delay_s=0.2)
    try:
        tasks = [asyncio.create_task(queue.submit(_add_sub_request(i), 1, ((16,),))) for i in range(5)]
        while queue.queued_rows < 5:
            await asyncio.sleep(0)
        await queue.drain()
        for i, t in enumerate(tasks):
            assert t.done()
            np.testing.assert_array_equal(t.result()["OUTPUT0"], np.full((1, 16), 2 * i, np.int32))
        with pytest.raises(InferdError) as e:
            await queue.submit(_add_sub_request(1), 1, ((16,),))
        assert e.value.code is ErrorCode.UNAVAILABLE
    finally:
        await pool.stop()


async def test_unloadable_file_is_a_load_failure_with_the_reason(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    pool = _pool(bad)
    with pytest.raises(LoadFailed) as e:
        await pool.start()
    assert "Protobuf" in e.value.reason or "INVALID" in e.value.reason
    assert pool.pids == []


async def test_worker_that_dies_while_idle_is_replaced_before_anyone_needs_it(add_sub):
    queue, pool, _ = await _queue(add_sub)
    try:
        [old_pid] = pool.pids
        replaced = asyncio.Event()
        pool.on_change = replaced.set
        os.kill(old_pid, signal.SIGKILL)
        await asyncio.wait_for(replaced.wait(), 60)
        assert pool.pids and pool.pids != [old_pid] and pool.exits == 1
        out = await queue.submit(_add_sub_request(4), 1, ((16,),))
        np.testing.assert_array_equal(out["OUTPUT0"], np.full((1, 16), 8, np.int32))
    finally:
        await queue.drain()
        await pool.stop()


async def test_a_lone_request_at_light_load_is_sent_at_once_and_bursts_still_batch(add_sub):
    """At light load (the last batch was one request, nothing runs, a worker waits) `enqueue`
    sends the request before it returns. Requests that arrive behind a running batch go
    together after it; and once batches hold more than one request, a request waits for the
    end of the loop turn, so that the others arriving in the same turn join it."""
    queue, pool, recorder = await _queue(add_sub)

    def enqueue(value: int) -> asyncio.Future:
        answer = asyncio.get_running_loop().create_future()
        queue.enqueue(_add_sub_request(value), 1, ((16,),), answer.set_result)
        return answer

    try:
        first = enqueue(1)
        assert queue.queued_rows == 0 and queue.inflight_count() == 1  # on its way to the worker
        burst = [enqueue(i) for i in range(2, 6)]
        assert queue.queued_rows == 4  # the worker is busy: they wait for it
        await asyncio.gather(first, *burst)
        assert recorder.batches == [1, 4]
        later = [enqueue(i) for i in range(6, 9)]
        assert queue.queued_rows == 3  # not sent one by one as they come
        outs = await asyncio.gather(*later)
        assert recorder.batches == [1, 4, 3]
        for i, out in zip(range(6, 9), outs):
            np.testing.assert_array_equal(out["OUTPUT0"], np.full((1, 16), 2 * i, np.int32))
        np.testing.assert_array_equal(first.result()["OUTPUT1"], np.zeros((1, 16), np.int32))
    finally:
        await queue.drain()
        await pool.stop()


async def _close(queue: ModelQueue, pool: WorkerPool) -> None:
    """Drain, bounded: an answer that never comes fails the test instead of hanging it."""
    try:
        async with asyncio.timeout(30):
            await queue.drain()
    finally:
        await pool.stop()


@pytest.mark.skipif(not mailbox.supported(), reason="the mailbox is made on x86-64 only")
@pytest.mark.parametrize("busy_poll_us", [200_000, 1])
async def test_light_load_batches_and_answers_go_through_the_mailbox(add_sub, busy_poll_us):
    """At light load each batch and its answer are posted in shared memory. While the other
    side is known to poll, nothing rings its socket (a long window: only the first batch, sent
    to a worker that was not polling yet, rings); with a window too short to matter, every post
    is announced with a WAKE frame, both ways. The answers are right either way."""
    queue, pool, recorder = await _queue(add_sub, busy_poll_us=busy_poll_us)
    try:
        async with asyncio.timeout(30):  # a post nobody looks at would hang here
            for i in range(20):
                out = await queue.submit(_add_sub_request(i), 1, ((16,),))
                np.testing.assert_array_equal(out["OUTPUT0"], np.full((1, 16), 2 * i, np.int32))
                if busy_poll_us == 1:
                    await asyncio.sleep(0.002)  # the worker's window is long over
        assert recorder.posted == 20
        assert recorder.rung == (1 if busy_poll_us == 200_000 else 20)
    finally:
        await _close(queue, pool)


async def test_a_lone_batch_longer_than_the_poll_window_is_answered(slow_model):
    """The daemon stops polling 200 us after sending; the worker, still running the batch then,
    rings when it posts the answer."""
    queue, pool, _ = await _queue(slow_model)
    try:
        async with asyncio.timeout(30):
            out = await queue.submit(InferRequest({"x": np.ones((64, 1024), np.float32)}), 64, ((1024,),))
        assert out["y"].shape == (64, 1024)
    finally:
        await _close(queue, pool)


@pytest.mark.skipif(not mailbox.supported(), reason="the mailbox is made on x86-64 only")
async def test_a_light_batch_too_large_for_the_mailbox_travels_on_the_socket(model_repo):
    """BYTES tensors travel inside the message: one larger than the mailbox's slot goes on the
    socket, and so does its answer, at light load as under load."""
    from samples import EVERY_DATATYPE

    queue, pool, recorder = await _queue(model_repo / "identity_all.onnx")
    try:
        async with asyncio.timeout(30):
            for text in (b"x" * (mailbox.CAPACITY + 1), b"small"):
                inputs = {f"IN_{t}": v for t, v in EVERY_DATATYPE.items()}
                inputs["IN_BYTES"] = np.array([[text, b"a", b""]], dtype=object)
                out = await queue.submit(InferRequest(inputs), 1, tuple((3,) for _ in inputs))
                assert out["OUT_BYTES"][0, 0] == text
                np.testing.assert_array_equal(out["OUT_FP64"], EVERY_DATATYPE["FP64"])
        assert recorder.posted == 1  # only the small one went through the mailbox
    finally:
        await _close(queue, pool)


async def test_a_worker_running_a_batch_refuses_another(add_sub):
    """One batch at a time per worker: a second one is an error, not an assert that `python -O`
    would strip."""
    pool = _pool(add_sub)
    await pool.start()
    worker = pool.take()
    answers = []
    a = np.ones((1, 16), np.int32)
    try:
        worker.run_batch(["r1"], {"INPUT0": [a], "INPUT1": [a]}, ["OUTPUT0"], answers.append)
        with pytest.raises(RuntimeError, match="busy"):
            worker.run_batch(["r2"], {"INPUT0": [a], "INPUT1": [a]}, ["OUTPUT0"], answers.append)
        async with asyncio.timeout(30):
            while not answers:
                await asyncio.sleep(0.01)
        np.testing.assert_array_equal(answers[0]["OUTPUT0"], 2 * a)  # the first batch is unharmed
        assert len(answers) == 1
    finally:
        pool.give_back(worker)
        await pool.stop()
