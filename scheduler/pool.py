"""The worker processes of one model version, from zero to max_workers.

The queue takes an idle worker with `take()` and hands it back with `give_back()`; it calls
`demand()` when requests wait and no worker exists (the first one starts, exactly one however
many requests arrived), and `note_wait()` with how long each batch's oldest request waited, so
sustained waiting adds a worker (up to max_workers). Every start is first `admit`ted: memory
for it must be there (inferd.scheduler.limits). A worker idle for idle_timeout_s stops, down to
min_workers. A worker that exits is replaced; too many exits in a window is a crash loop: the
pool is broken and says why instead of respawning forever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from inferd.common.tasks import TaskSet
from inferd.common.tensors import ModelMetadata
from inferd.scheduler.worker import LoadFailed, WorkerHandle, WorkerObserver, WorkerSpec, describe_exit

log = structlog.get_logger("inferd.pool")


class PoolObserver(WorkerObserver):
    """Hooks for metrics; the default does nothing."""

    def workers_changed(self, count: int) -> None: ...

    def cold_start(self, spawn_s: float, load_s: float) -> None: ...

    def worker_exited(self, cause: str) -> None: ...  # crash | idle | stopped | load_failed | evicted

    def worker_refused(self, kind: str) -> None: ...  # a worker was not started: Refusal.kind


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a worker may not start now: `kind` is a short label ("memory", "budget"), `message`
    the reason a caller or the log reads."""

    kind: str
    message: str


@dataclasses.dataclass(frozen=True)
class Scaling:
    min_workers: int = 0
    max_workers: int = 2
    idle_timeout_s: float = 300.0  # 0: never scale down
    start_timeout_s: float = 30.0  # a worker that has not loaded by then failed
    scale_up_wait_s: float = 0.02  # a batch whose oldest request waited this long is pressure...
    scale_up_window_s: float = 1.0  # ...and pressure sustained this long adds a worker
    crash_loop_count: int = 5
    crash_loop_window_s: float = 60.0

    @classmethod
    def from_settings(cls, settings) -> Scaling:
        return cls(settings.min_workers, settings.max_workers, settings.idle_timeout_s,
                   settings.load_timeout_s, settings.scale_up_wait_ms / 1000, settings.scale_up_window_s,
                   settings.crash_loop_count, settings.crash_loop_window_s)


class WorkerPool:
    def __init__(self, spec: WorkerSpec, scaling: Scaling, observer: PoolObserver | None = None,
                 admit: Callable[[], Awaitable[Refusal | None]] | None = None,
                 on_broken: Callable[[str], None] = lambda reason: None,
                 on_change: Callable[[], None] = lambda: None):
        self.spec = spec
        self.scaling = scaling
        self.observer = observer or PoolObserver()
        self.admit = admit or _always  # before a worker starts: None, or why there is no memory for it
        self.on_broken = on_broken  # the crash loop's reason: no more starts
        self.on_change = on_change  # a worker became available, or none can
        self.last_used = time.monotonic()  # when a batch last started (eviction takes the least recent)
        self.pinned: Callable[[], bool] = lambda: False  # its workers hold state (sequences): never evicted
        self.metadata: ModelMetadata | None = None
        self.metadata_worker: WorkerHandle | None = None  # the worker that validated the model
        self.broken_reason: str | None = None  # crash loop: no more starts
        self.held: str | None = None  # why no worker may start any more (hold())
        self.start_error: str | None = None  # why the last start failed
        self.exits = 0
        self._workers: set[WorkerHandle] = set()
        self._idle: list[WorkerHandle] = []  # taken from the end: the others stay idle and go
        self._starting = 0
        self._crashes: deque[float] = deque()
        self._pressure_since: float | None = None
        self._tasks = TaskSet(f"worker pool of {spec.model} version {spec.version}")
        self._leaving: set[WorkerHandle] = set()  # scaled down, stopping
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._workers if w.pid)

    @property
    def workers(self) -> frozenset[WorkerHandle]:
        """The running workers (a sequence model's slots belong to one of them)."""
        return frozenset(self._workers)

    @property
    def has_idle(self) -> bool:
        return bool(self._idle)

    @property
    def all_idle(self) -> bool:
        """No worker is running a batch (or starting)."""
        return len(self._idle) == len(self._workers) and not self._starting

    @property
    def device(self) -> str | None:
        """Where the workers run ("cpu", "cuda:N"), once one has loaded."""
        return self.metadata_worker.device if self.metadata_worker else None

    @property
    def cold(self) -> bool:
        """No worker is running: whatever is queued waits for one to start."""
        return not self._workers

    @property
    def unavailable(self) -> str | None:
        """Why queued requests cannot be served now, or None."""
        if self.broken_reason:
            return self.broken_reason
        if not self._workers and not self._starting and self.start_error:
            return f"the model's worker could not start: {self.start_error}"
        return None

    async def start(self) -> ModelMetadata:
        """Validate the model: start max(1, min_workers) workers, or raise LoadFailed with the
        reason (leaving nothing running). With min_workers 0 the validating worker stays until
        it has been idle for idle_timeout_s, like any other."""
        if refusal := await self.admit():
            self.observer.worker_refused(refusal.kind)
            raise LoadFailed(refusal.message)
        handles = [self._handle() for _ in range(max(1, self.scaling.min_workers))]
        results = await asyncio.gather(*(h.start(self.scaling.start_timeout_s) for h in handles), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(h.stop(timeout=5) for h in handles))
            if isinstance(failure, LoadFailed):
                raise failure
            raise LoadFailed(f"{type(failure).__name__}: {failure}")
        for h in handles:
            self._add_ready(h)
        self.metadata = handles[0].metadata
        self.metadata_worker = handles[0]
        self._own(self._watch())
        return self.metadata

    def _handle(self) -> WorkerHandle:
        return WorkerHandle(self.spec, on_exit=self._worker_exited, observer=self.observer)

    def _add_ready(self, worker: WorkerHandle) -> None:
        self._workers.add(worker)
        self._idle.append(worker)
        self.observer.workers_changed(len(self._workers))

    # -- the queue's side --------------------------------------------------------------------

    def take(self) -> WorkerHandle | None:
        if not self._idle:
            return None
        self.last_used = time.monotonic()
        return self._idle.pop()

    def give_back(self, worker: WorkerHandle) -> None:
        if not worker.dead and worker in self._workers:  # a dead one was dealt with by _worker_exited
            self._idle.append(worker)

    def take_this(self, worker: WorkerHandle) -> bool:
        """Take this worker if it is idle (a sequence's requests run where its state is)."""
        if worker not in self._idle:
            return False
        self.last_used = time.monotonic()
        self._idle.remove(worker)
        return True

    def grow(self, reason: str) -> None:
        """Start one more worker (up to max_workers), unless one is starting already: new
        sequences wait for a slot."""
        if (not self._starting and len(self._workers) < self.scaling.max_workers and not self.broken_reason
                and not self._stopping and not self.held):
            self._own(self._grow(reason, cold=not self._workers))

    def demand(self) -> None:
        """Requests are waiting and no worker is idle: with none running or starting, start
        one (a cold start; concurrent first requests start exactly one)."""
        if not self._workers and not self._starting and not self.broken_reason and not self._stopping and not self.held:
            self._own(self._grow("cold start: a request arrived and no worker was running", cold=True))

    def note_wait(self, waited_s: float, now: float) -> None:
        """A batch started whose oldest request waited `waited_s` for a worker."""
        if waited_s < self.scaling.scale_up_wait_s:
            self._pressure_since = None
            return
        if self._pressure_since is None:
            self._pressure_since = now
            return
        if now - self._pressure_since < self.scaling.scale_up_window_s:
            return
        self._pressure_since = None  # the next worker needs a window of its own
        if len(self._workers) + self._starting >= self.scaling.max_workers or self.broken_reason or self.held:
            return
        reason = (f"requests waited {waited_s * 1000:.0f} ms or more for a worker for "
                  f"{self.scaling.scale_up_window_s:g} s")
        self._own(self._grow(reason))

    # -- growing and shrinking ---------------------------------------------------------------

    async def _grow(self, reason: str, cold: bool = False, reserved: bool = False) -> None:
        """Start one worker. `reserved`: the caller already counted it as starting."""
        if not reserved:
            self._starting += 1
        self.start_error = None
        worker = self._handle()
        try:
            if refusal := await self.admit():
                self.observer.worker_refused(refusal.kind)
                if self._workers:
                    log.warning("not scaling up", model=self.spec.model, version=self.spec.version,
                                workers=len(self._workers), reason=refusal.message)
                else:  # what waits for this worker is answered with the reason
                    self.start_error = refusal.message
                    log.warning("worker not started", model=self.spec.model, version=self.spec.version,
                                reason=refusal.message)
                return
            await worker.start(self.scaling.start_timeout_s)
        except asyncio.CancelledError:  # the pool is stopping
            await worker.kill()
            raise
        except LoadFailed as e:
            self.start_error = e.reason
            self.observer.worker_exited("load_failed")
            log.error("worker failed to start", model=self.spec.model, version=self.spec.version, reason=e.reason)
            self._count_crash(f"a worker failed to start: {e.reason}")
        else:
            if self._stopping:
                await worker.stop(timeout=5)
                return
            if cold:
                self.observer.cold_start(worker.spawn_seconds, worker.load_seconds)
            self._add_ready(worker)
            log.info("scaled up", model=self.spec.model, version=self.spec.version, workers=len(self._workers),
                     pid=worker.pid, reason=reason, spawn_s=round(worker.spawn_seconds, 4),
                     load_s=round(worker.load_seconds, 4))
        finally:
            self._starting -= 1
            if self.held and not self._workers and not self._starting and not self.broken_reason:
                self._break(self.held)  # a start under way when the files went: it was the last hope
            self.on_change()

    async def _watch(self) -> None:
        """Every tick: kill the workers whose batch has run for execution_timeout_s (they are
        then replaced), and stop those idle for idle_timeout_s (down to min_workers)."""
        idle_s, limit = self.scaling.idle_timeout_s, self.spec.execution_timeout_s
        tick = max(0.02, min(1.0, limit / 4, idle_s / 4 if idle_s > 0 else 1.0))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for worker in [w for w in self._workers if w.busy and now - w.batch_started >= limit]:
                worker.expire()
            if idle_s > 0 and not self.held:  # held: its running workers are all it has
                self._reap_idle(now)

    def _reap_idle(self, now: float) -> None:
        timeout = self.scaling.idle_timeout_s
        for worker in sorted(self._idle, key=lambda w: w.idle_since):
            if len(self._workers) <= self.scaling.min_workers:
                break
            if now - worker.idle_since < timeout:
                break
            self._idle.remove(worker)
            self._workers.discard(worker)
            self.observer.workers_changed(len(self._workers))
            self.observer.worker_exited("idle")
            log.info("scaled down", model=self.spec.model, version=self.spec.version, workers=len(self._workers),
                     pid=worker.pid, reason=f"idle for {timeout:g} s")
            self._leaving.add(worker)
            self._own(self._retire(worker))

    async def scale_to_zero(self, reason: str, cause: str = "evicted") -> bool:
        """Stop every worker now, if none is busy (to free memory for another model, or after
        validating a scale-to-zero model: `cause` "idle"); True once they are gone. The next
        request starts one again."""
        if not self.all_idle or not self._workers or self.held:
            return False
        leaving = list(self._workers)
        self._workers.clear()
        self._idle.clear()
        self.observer.workers_changed(0)
        for worker in leaving:
            self.observer.worker_exited(cause)
            log.info("scaled down", model=self.spec.model, version=self.spec.version, workers=0,
                     pid=worker.pid, reason=reason)
        await asyncio.gather(*(w.stop(timeout=10) for w in leaving))
        return True

    async def _retire(self, worker: WorkerHandle) -> None:
        await worker.stop(timeout=10)
        self._leaving.discard(worker)

    # -- crashes -----------------------------------------------------------------------------

    def _worker_exited(self, worker: WorkerHandle) -> None:
        if self._stopping or worker not in self._workers:
            return
        self._workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        self.exits += 1
        self.observer.workers_changed(len(self._workers))
        if self.held:
            log.warning("worker exited", model=self.spec.model, version=self.spec.version, pid=worker.pid,
                        workers=len(self._workers), reason="not replaced: " + self.held)
            if not self._workers:
                self._break(self.held)
            return
        self._starting += 1  # counted now, so that a request arriving meanwhile starts no other
        self._own(self._replace(worker))

    async def _replace(self, dead: WorkerHandle) -> None:
        try:
            code = await dead.exit_code()
        except BaseException:
            self._starting -= 1
            raise
        how = describe_exit(code)
        if dead.expired:
            self.observer.worker_exited("timeout")
            what = f"a worker was killed: a batch ran longer than execution_timeout_s ({self.spec.execution_timeout_s:g} s)"
        else:
            self.observer.worker_exited("crash")
            log.warning("worker exited", model=self.spec.model, version=self.spec.version, pid=dead.pid, exit=how)
            what = f"a worker exited with {how}"
        if self._count_crash(what):
            self._starting -= 1
            self.on_change()
            return
        await self._grow(f"replacing worker {dead.pid}: {what.removeprefix('a worker ')}", reserved=True)

    def _count_crash(self, what: str) -> bool:
        """Record a crash; True (and the pool broken) if that makes a crash loop."""
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > self.scaling.crash_loop_window_s:
            self._crashes.popleft()
        if len(self._crashes) < self.scaling.crash_loop_count or self.broken_reason:
            return bool(self.broken_reason)
        self._break(f"crash loop: {len(self._crashes)} worker failures within "
                    f"{self.scaling.crash_loop_window_s:g} s; the last: {what}")
        return True

    def _break(self, reason: str) -> None:
        """No more starts: queued and new requests are answered `reason`."""
        self.broken_reason = reason
        log.error("model failed", model=self.spec.model, version=self.spec.version, reason=reason)
        self.on_broken(reason)
        self.on_change()

    def hold(self, reason: str) -> None:
        """The model's files are gone (`reason`): no worker starts from now on (it could not
        load them, and each try would count towards a crash loop) and none stops for being idle
        or evicted; those running serve on. With none left (now, or once the last one exits)
        the pool is broken for `reason`."""
        if self.held or self.broken_reason:
            return
        self.held = reason
        if not self._workers and not self._starting:
            self._break(reason)

    # -- the end -----------------------------------------------------------------------------

    def _own(self, coro) -> None:
        self._tasks.spawn(coro)

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        await self._tasks.cancel()
        await asyncio.gather(*(w.stop(timeout) for w in self._workers | self._leaving))
        for _ in self._workers:
            self.observer.worker_exited("stopped")
        self._workers.clear()
        self._leaving.clear()
        self._idle.clear()
        self.observer.workers_changed(0)


async def _always() -> None:
    return None
