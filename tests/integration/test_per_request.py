"""A per-request backend (inferd.backends.base.BatchRequests) behind the real scheduler and real
worker processes: each caller of a batch gets its own answer, its own error, its own parameters."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from inferd.common.errors import ErrorCode, InferdError
from inferd.config.model import ModelSettings
from inferd.daemon.requests import InferRequest
from inferd.scheduler.pool import PoolObserver, Scaling, WorkerPool
from inferd.scheduler.queue import ModelQueue
from inferd.scheduler.streams import ResponseStream
from inferd.scheduler.tickets import FixedLimits, QueueObserver
from inferd.scheduler.worker import WorkerSpec

BACKEND = "per_request_backend:PerCaller"  # tests/per_request_backend.py


class Batches(QueueObserver, PoolObserver):
    def __init__(self):
        self.sizes: list[int] = []  # requests per batch

    def batch_done(self, requests, rows, compute_s, ok):
        self.sizes.append(requests)


async def _queue(tmp_path, batch_rows: int, shared_memory: bool = True, backend: str = BACKEND):
    wakeup, batches = asyncio.Event(), Batches()
    settings = ModelSettings(min_workers=1, shared_memory=shared_memory)
    spec = WorkerSpec.of("per_request", "1", tmp_path / "model", backend, settings)
    pool = WorkerPool(spec, Scaling.from_settings(settings), observer=batches, on_change=wakeup.set)
    metadata = await pool.start()
    # Held for 30 s unless full: the requests of a test's gather form one batch of `batch_rows`.
    queue = ModelQueue(pool, FixedLimits(batch_rows, 64), output_names=[t.name for t in metadata.outputs],
                       max_delay_s=30.0, wakeup=wakeup, observer=batches)
    queue.start()
    return queue, pool, batches


def _request(first: int, rows: int, outputs=None, **parameters) -> InferRequest:
    x = np.arange(first, first + 2 * rows, dtype=np.int64).reshape(rows, 2)
    return InferRequest({"x": x}, outputs=outputs, parameters=parameters)


async def _outcomes(queue, requests: list[InferRequest]) -> list:
    async def one(request):
        try:
            return await queue.submit(request, len(request.inputs["x"]), ((2,),))
        except InferdError as e:
            return e
    return await asyncio.gather(*(one(r) for r in requests))


@pytest.fixture
async def served(tmp_path, request):
    queue, pool, batches = await _queue(tmp_path, batch_rows=6, shared_memory=request.param)
    yield queue, batches
    await queue.drain()
    await pool.stop()


@pytest.mark.parametrize("served", [True, False], ids=["shared-memory", "socket"], indirect=True)
async def test_a_failing_caller_fails_alone_and_the_others_get_their_own_rows(served):
    queue, batches = served
    requests = [_request(0, 2, tag=7, width=3), _request(100, 1, fail="input", why="no"), _request(200, 3, tag=9)]
    first, middle, last = await _outcomes(queue, requests)
    assert batches.sizes == [3]  # one batch
    np.testing.assert_array_equal(first["y"], requests[0].inputs["x"] * 10)
    np.testing.assert_array_equal(first["tag"], [[7], [7]])
    assert first["wide"].shape == (2, 3)  # callers of one batch differ in a non-batch dimension
    assert isinstance(middle, InferdError) and middle.code is ErrorCode.INVALID_ARGUMENT
    assert middle.message == "refused: no"
    np.testing.assert_array_equal(last["y"], requests[2].inputs["x"] * 10)
    np.testing.assert_array_equal(last["tag"], [[9], [9], [9]])
    assert last["wide"].shape == (3, 1)


@pytest.mark.parametrize("served", [True], indirect=True)
async def test_a_model_error_and_a_malformed_entry_fail_their_callers_as_internal(served):
    queue, batches = served
    requests = [_request(0, 2, fail="model"), _request(10, 1, tag=1, width=2), _request(20, 2, answer="none"),
                _request(30, 1, answer="list")]
    broken, fine, malformed, listed = await _outcomes(queue, requests)
    assert batches.sizes == [4]
    assert broken.code is ErrorCode.INTERNAL and "the model broke on this request" in broken.message
    assert malformed.code is ErrorCode.INTERNAL and "NoneType" in malformed.message
    assert listed.code is ErrorCode.INTERNAL and "output 'y' for this request is a list" in listed.message
    np.testing.assert_array_equal(fine["tag"], [[1]])
    # Every caller failing is still an answer each; the worker serves on.
    failed = await _outcomes(queue, [_request(0, 3, fail="model"), _request(0, 3, fail="input", why="x")])
    assert [e.code for e in failed] == [ErrorCode.INTERNAL, ErrorCode.INVALID_ARGUMENT]
    [alone] = await _outcomes(queue, [_request(5, 6, tag=4)])
    np.testing.assert_array_equal(alone["y"][0], [50, 60])


@pytest.mark.parametrize("served", [True, False], ids=["shared-memory", "socket"], indirect=True)
@pytest.mark.parametrize("answer", ["short", "dict"])
async def test_an_answer_that_is_not_one_entry_per_caller_fails_the_batch_cleanly(served, answer):
    queue, batches = served
    outcomes = await _outcomes(queue, [_request(0, 3), _request(0, 3, answer=answer)])
    assert batches.sizes == [2]
    for e in outcomes:
        assert isinstance(e, InferdError) and e.code is ErrorCode.INTERNAL
        assert "a batch of 2 requests" in e.message and "one entry per request" in e.message
    [after] = await _outcomes(queue, [_request(1, 6, tag=2)])  # the worker serves on
    np.testing.assert_array_equal(after["tag"], [[2]] * 6)


@pytest.mark.parametrize("served", [True], indirect=True)
async def test_each_caller_gets_the_outputs_it_asked_for_and_its_parameters(served):
    queue, _ = served
    requests = [_request(0, 1, outputs=("tag",), tag=-3), _request(0, 2, outputs=("y", "tag"), tag=1 << 40),
                _request(0, 2, tag=5, stray=[1, 2], big=1 << 70),  # parameters a worker cannot be sent stay behind
                _request(0, 1, outputs=("tag",), answer="y")]  # its answer lacks the output it asked for
    only_tag, two, everything, lacking = await _outcomes(queue, requests)
    assert set(only_tag) == {"tag"} and only_tag["tag"].tolist() == [[-3]]
    assert set(two) == {"y", "tag"} and two["tag"].tolist() == [[1 << 40]] * 2
    assert set(everything) == {"y", "tag", "wide"} and everything["tag"].tolist() == [[5]] * 2
    assert lacking.code is ErrorCode.INTERNAL and "has no output 'tag'" in lacking.message


async def test_a_decoupled_per_request_backend_gets_its_request_parameters(tmp_path):
    queue, pool, _ = await _queue(tmp_path, batch_rows=6, backend="per_request_backend:PerCallerStream")
    try:
        responses: list[dict] = []
        stream = ResponseStream(lambda outputs: (responses.append(outputs), stream.ack()))
        request = _request(1, 6, count=3, tag=8)
        request.stream = stream
        end = await queue.submit(request, 6, ((2,),))
        assert end == {}  # (the end of a stream: its responses went to on_response)
        assert len(responses) == 3
        for i, response in enumerate(responses):
            np.testing.assert_array_equal(response["y"], request.inputs["x"] * 10 + i)
            assert response["tag"].tolist() == [[8]] * 6
    finally:
        await queue.drain()
        await pool.stop()
