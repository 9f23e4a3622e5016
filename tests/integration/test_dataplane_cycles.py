"""A request leaves no reference cycle behind: with ~10,000 requests/s, garbage that only the
cyclic collector can free turns into full collections that stall the event loop for tens of
milliseconds (it did: the data plane's call and its queue ticket referred to each other). The
real data plane, queue, pool and worker process; with the collector off, a burst of requests
(answered, failed and withdrawn) must leave nothing for it to find."""

from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferd.backends import backend_path
from inferd.common.errors import InferdError
from inferd.config.model import ModelConfig, ModelSettings
from inferd.daemon.dataplane import DataPlane
from inferd.daemon.models.scan import Found
from inferd.daemon.models.version import ModelVersion, Serving
from inferd.daemon.operations.metrics import Metrics, VersionObserver
from inferd.daemon.readiness import ServerState
from inferd.daemon.requests import InferRequest
from inferd.scheduler.pool import Scaling, WorkerPool
from inferd.scheduler.queue import ModelQueue
from inferd.scheduler.tickets import FixedLimits
from inferd.scheduler.worker import WorkerSpec


class OneModel:
    """The repository's side the data plane reads, for one loaded version."""

    def __init__(self, mv: ModelVersion):
        self.mv = mv

    def get_ready(self, name: str, version: str = "") -> ModelVersion:
        return self.mv


@pytest.fixture
async def dataplane(model_repo):
    path = model_repo / "add_sub" / "1" / "model.onnx"
    settings = ModelSettings(min_workers=1, max_queue_delay_ms=0)
    wakeup = asyncio.Event()
    pool = WorkerPool(WorkerSpec.of("m", "1", path, backend_path("onnx"), settings), Scaling.from_settings(settings),
                      on_change=wakeup.set)
    metadata = await pool.start()
    queue = ModelQueue(pool, FixedLimits(64, 1024), output_names=[t.name for t in metadata.outputs], max_delay_s=0,
                       wakeup=wakeup)
    queue.start()
    mv = ModelVersion(Found("m", "1", path), VersionObserver(Metrics(CollectorRegistry()), "m", "1"), lambda v: None)

    async def assemble(version):
        return Serving(ModelConfig(settings), metadata, 64, pool, queue)

    await mv.load(assemble)
    state = ServerState()
    state.started = True
    yield DataPlane(OneModel(mv), state)
    await queue.drain()
    await pool.stop()


def _request(rows: int = 1) -> InferRequest:
    x = np.ones((rows, 16), np.int32)
    return InferRequest({"INPUT0": x, "INPUT1": x})


async def test_answered_failed_and_withdrawn_requests_leave_no_cycles(dataplane):
    for _ in range(10):  # warm: whatever is created once is not a leak
        await dataplane.infer("m", "", _request(), "test")
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            answers = []
            await asyncio.gather(*(dataplane.infer("m", "", _request(), "test") for _ in range(8)))  # awaited
            dataplane.submit("m", "", _request(), "test", answers.append)  # called back
            withdraw = dataplane.submit("m", "", _request(), "test", answers.append)
            withdraw()  # its caller went away
            with pytest.raises(InferdError):
                await dataplane.infer("m", "", _request(rows=100), "test")  # refused at once
            while not answers:
                await asyncio.sleep(0.001)
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0
