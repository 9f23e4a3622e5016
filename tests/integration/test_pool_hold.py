"""A worker pool held because its model's files are gone (a rollback removed its version
directory): real workers over a model file that is deleted under them."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal

import numpy as np
import pytest

from inferd.backends import backend_path
from inferd.common.errors import ErrorCode, InferdError
from inferd.config.model import ModelSettings
from inferd.daemon.requests import InferRequest
from inferd.scheduler.pool import Scaling, WorkerPool
from inferd.scheduler.queue import ModelQueue
from inferd.scheduler.tickets import FixedLimits
from inferd.scheduler.worker import WorkerSpec

GONE = "its files were removed"


async def _serving(path, min_workers: int) -> tuple[ModelQueue, WorkerPool, list[str]]:
    settings = ModelSettings(min_workers=min_workers, max_workers=4)
    wakeup, broken = asyncio.Event(), []
    spec = WorkerSpec.of("m", "2", path, backend_path("onnx"), settings)
    pool = WorkerPool(spec, Scaling.from_settings(settings), on_broken=broken.append, on_change=wakeup.set)
    metadata = await pool.start()
    queue = ModelQueue(pool, FixedLimits(64, 256), output_names=[t.name for t in metadata.outputs],
                       max_delay_s=0.0, wakeup=wakeup)
    queue.start()
    return queue, pool, broken


async def _ask(queue: ModelQueue, value: int) -> np.ndarray:
    a = np.full((1, 16), value, np.int32)
    return (await queue.submit(InferRequest({"INPUT0": a, "INPUT1": a}), 1, ((16,),)))["OUTPUT0"]


@pytest.fixture
def model(model_repo, tmp_path):
    return shutil.copy(model_repo / "add_sub" / "1" / "model.onnx", tmp_path / "model.onnx")


async def test_a_held_pool_serves_with_its_workers_replaces_none_then_fails_with_the_reason(model):
    queue, pool, broken = await _serving(model, min_workers=2)
    try:
        os.unlink(model)
        pool.hold(GONE)
        assert not await pool.scale_to_zero("evicted: another model needs the memory")  # its workers are all it has
        first, second = pool.pids
        os.kill(first, signal.SIGKILL)
        await asyncio.wait_for(_until(lambda: pool.pids == [second]), 30)
        np.testing.assert_array_equal(await _ask(queue, 3), np.full((1, 16), 6, np.int32))  # the other serves
        assert pool.exits == 1 and not pool.broken_reason and broken == []  # no replacement tried

        os.kill(second, signal.SIGKILL)
        await asyncio.wait_for(_until(lambda: pool.broken_reason), 30)
        assert broken and GONE in broken[0] and pool.pids == []
        with pytest.raises(InferdError) as e:
            await _ask(queue, 1)
        assert e.value.code is ErrorCode.UNAVAILABLE and GONE in e.value.message
        assert "crash loop" not in e.value.message
    finally:
        queue.abort(InferdError(ErrorCode.UNAVAILABLE, "test over"))
        await pool.stop()


async def test_a_pool_with_no_worker_is_broken_as_soon_as_it_is_held(model):
    queue, pool, broken = await _serving(model, min_workers=1)
    try:
        assert await pool.scale_to_zero("validated; min_workers = 0", cause="idle")
        os.unlink(model)
        pool.hold(GONE)
        assert broken and GONE in broken[0]
        with pytest.raises(InferdError) as e:
            await _ask(queue, 1)
        assert e.value.code is ErrorCode.UNAVAILABLE and GONE in e.value.message
        assert pool.exits == 0 and pool.start_error is None  # no start was tried
    finally:
        queue.abort(InferdError(ErrorCode.UNAVAILABLE, "test over"))
        await pool.stop()


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)
