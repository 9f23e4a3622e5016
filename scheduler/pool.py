"""The worker processes of one model version.

The queue takes an idle worker with `take()` and hands it back with `give_back()`. Here the
pool keeps a fixed number of workers and replaces one that exits, busy or idle; scaling from
zero, up under load and back down when idle belongs behind the same calls.
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
        self.exits = 0
        self._workers: set[WorkerHandle] = set()
        self._idle: list[WorkerHandle] = []
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._workers if w.pid)

    def _handle(self) -> WorkerHandle:
        return WorkerHandle(self.spec, on_exit=self._worker_exited)

    async def start(self) -> ModelMetadata:
        """Start every worker; raise LoadFailed (and leave nothing running) if any cannot load."""
        handles = [self._handle() for _ in range(self.size)]
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
        if not worker.dead:  # a dead one was already dealt with by _worker_exited
            self._idle.append(worker)

    def _worker_exited(self, worker: WorkerHandle) -> None:
        if self._stopping or worker not in self._workers:
            return
        self._workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        self.exits += 1
        self._own(self._replace(worker))

    def _own(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, dead: WorkerHandle) -> None:
        code = await dead.exit_code()
        log.warning("worker exited; starting a replacement", model=self.spec.model, version=self.spec.version,
                    pid=dead.pid, exit_code=code)
        worker = self._handle()
        try:
            await worker.start(self.load_timeout)
        except asyncio.CancelledError:  # the pool is stopping
            await worker.kill()
            raise
        except LoadFailed as e:
            log.error("replacement worker failed to load", model=self.spec.model, version=self.spec.version, reason=e.reason)
            if not self._workers and len(self._tasks) <= 1:
                self.broken_reason = f"no worker is running: {e.reason}"
        else:
            if self._stopping:
                await worker.stop(timeout=5)
                return
            self._workers.add(worker)
            self._idle.append(worker)
        self.on_change()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(w.stop(timeout) for w in self._workers))
        self._workers.clear()
        self._idle.clear()
