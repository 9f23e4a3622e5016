"""The worker processes of one model version.

The queue takes an idle worker with `take()` and hands it back with `give_back()`. Here the
pool keeps a fixed number of workers and replaces one that dies; scaling from zero, up under
load and back down when idle belongs behind the same two calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from inferd.config.tensors import ModelMetadata
from inferd.scheduler.worker import LoadFailed, WorkerHandle, WorkerSpec

log = structlog.get_logger("inferd.pool")


class WorkerPool:
    def __init__(self, spec: WorkerSpec, size: int, load_timeout: float, on_change: Callable[[], None] = lambda: None):
        self.spec = spec
        self.size = size
        self.load_timeout = load_timeout
        self.on_change = on_change  # called when a worker becomes available or the pool breaks
        self.metadata: ModelMetadata | None = None
        self.broken_reason: str | None = None  # set when no worker is left and none can start
        self.load_seconds = 0.0
        self._workers: set[WorkerHandle] = set()
        self._idle: list[WorkerHandle] = []
        self._tasks: set[asyncio.Task] = set()
        self.exits = 0

    @property
    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._workers if w.pid)

    async def start(self) -> ModelMetadata:
        """Start every worker; raise LoadFailed (and leave nothing running) if any cannot load."""
        handles = [WorkerHandle(self.spec) for _ in range(self.size)]
        results = await asyncio.gather(*(h.start(self.load_timeout) for h in handles), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(h.stop(timeout=5) for h in handles))
            if isinstance(failure, LoadFailed):
                raise failure
            raise LoadFailed(f"{type(failure).__name__}: {failure}")
        self._workers = set(handles)
        self._idle = list(handles)
        self.metadata = handles[0].metadata
        self.load_seconds = max(h.load_seconds for h in handles)
        return self.metadata

    def take(self) -> WorkerHandle | None:
        return self._idle.pop() if self._idle else None

    def give_back(self, worker: WorkerHandle) -> None:
        if not worker.dead:
            self._idle.append(worker)
            return
        self._workers.discard(worker)
        self.exits += 1
        log.warning("worker died; starting a replacement", model=self.spec.model, version=self.spec.version, pid=worker.pid)
        task = asyncio.create_task(self._replace())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self) -> None:
        worker = WorkerHandle(self.spec)
        try:
            await worker.start(self.load_timeout)
        except LoadFailed as e:
            log.error("replacement worker failed to load", model=self.spec.model, version=self.spec.version, reason=e.reason)
            if not self._workers and len(self._tasks) <= 1:
                self.broken_reason = f"no worker is running: {e.reason}"
        else:
            self._workers.add(worker)
            self._idle.append(worker)
        self.on_change()

    async def stop(self, timeout: float = 10.0) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(w.stop(timeout) for w in self._workers))
        self._workers.clear()
        self._idle.clear()
