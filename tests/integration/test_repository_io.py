"""The repository API reads the models directory off the event loop: a large directory being
scanned for the index (or a load request) does not stop the loop that serves every request."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from inferd.config.model import ModelSettings
from inferd.config.settings import MemorySection
from inferd.daemon.models.repository import ModelRepository
from inferd.daemon.operations.metrics import Metrics
from inferd.scheduler.limits import MemoryManager
from inferd.scheduler.memory import HostProbe

MODELS = 1500


async def test_the_index_scans_a_large_directory_while_the_loop_keeps_turning(tmp_path):
    for i in range(MODELS):  # each with a config.toml to parse: a scan of a few hundred ms
        (tmp_path / f"m{i}" / "1").mkdir(parents=True)
        (tmp_path / f"m{i}" / "1" / "model.onnx").write_bytes(b"x")
        (tmp_path / f"m{i}" / "config.toml").write_text("max_batch_size = 8\n")
    repository = ModelRepository(tmp_path, ModelSettings(), Metrics(CollectorRegistry()),
                                 MemoryManager(HostProbe(), MemorySection()), explicit=True)
    ticks = 0
    scanning = True

    async def tick():
        nonlocal ticks
        while scanning:
            ticks += 1
            await asyncio.sleep(0.001)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    before = ticks
    rows = await repository.index()
    during = ticks - before
    scanning = False
    await ticker
    assert len(rows) == MODELS and {r["state"] for r in rows} == {"UNAVAILABLE"}
    assert during >= 3  # on the loop, the scan would have let it turn no time at all
