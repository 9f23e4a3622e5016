"""One generation of a model version (one load of its files): its state, and once loaded what
serves it. The repository decides when a generation loads, serves, drains and stops; the
assembler (inferd.daemon.models.assembly) builds what serves it.

    LOADING -> READY -> UNLOADING -> UNLOADED
       |         |
       v         v
     FAILED    FAILED (its workers crash-looped)    FAILED -> UNLOADING -> UNLOADED
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections.abc import Awaitable, Callable

import structlog

from inferd.common.errors import ConfigError, ErrorCode, InferdError, unexpected
from inferd.common.tensors import ModelMetadata, TensorSpec
from inferd.config.model import ModelConfig
from inferd.daemon.models.pipeline import Pipeline
from inferd.daemon.models.scan import Found
from inferd.daemon.operations.metrics import VersionObserver
from inferd.scheduler.limits import Tenant
from inferd.scheduler.pool import WorkerPool
from inferd.scheduler.queue import ModelQueue
from inferd.scheduler.worker import LoadFailed

log = structlog.get_logger("inferd.repository")


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"
    UNLOADED = "UNLOADED"  # drained and stopped: the generation is gone


@dataclasses.dataclass
class Serving:
    """What a loaded version serves with: workers, a queue and a memory claim, or a pipeline."""

    config: ModelConfig
    metadata: ModelMetadata
    max_batch_size: int
    pool: WorkerPool | None = None
    queue: ModelQueue | None = None
    tenant: Tenant | None = None
    pipeline: Pipeline | None = None
    labels: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # output -> class labels


Assemble = Callable[["ModelVersion"], Awaitable[Serving]]


class ModelVersion:
    """`on_state` hears of every state change."""

    def __init__(self, found: Found, observer: VersionObserver, on_state: Callable[[ModelVersion], None],
                 redact: Callable[[str], str] = str):
        self.name = found.name
        self.version = found.version
        self.key = found.key
        self.found = found
        self.observer = observer
        self.state = ModelState.LOADING
        self.reason = ""
        self.removed = False  # its files were removed while it served (files_gone)
        self.task: asyncio.Task | None = None  # the load
        self._on_state = on_state
        self._redact = redact  # reasons are shown to callers: no server paths
        # What serves it, set once by load() whether or not the version is still wanted then
        # (a retired one is drained and stopped all the same).
        self.serving: Serving | None = None
        self.queue: ModelQueue | None = None
        self.pipeline: Pipeline | None = None
        self.metadata: ModelMetadata | None = None
        self.max_batch_size = 0
        self.input_specs: dict[str, TensorSpec] = {}
        self.output_names: frozenset[str] = frozenset()
        self._log_state()

    def index_row(self) -> dict:
        """The repository index's row: name, version, state, the reason if any; for a Triton
        model (config.pbtxt) its platform and what its config asks that inferd does its own way."""
        row = {"name": self.name, "version": self.version, "state": self.state.value}
        if self.reason:
            row["reason"] = self.reason
        triton = self.serving.config.triton if self.serving else None
        platform = self.found.platform or (triton.platform if triton else "")
        if platform or triton:
            row["platform"] = platform or (self.metadata.platform if self.metadata else "")
        if triton and triton.notes:
            row["notes"] = list(triton.notes)
        return row

    @property
    def worker_count(self) -> int:
        pool = self.serving.pool if self.serving else None
        return len(pool.pids) if pool is not None else 0

    def _set_state(self, state: ModelState, reason: str = "") -> None:
        self.state, self.reason = state, reason
        if state is ModelState.FAILED:
            self.observer.load_failed()
        self._log_state()
        self._on_state(self)

    def _log_state(self) -> None:
        extra = {"reason": self.reason} if self.reason else {}
        path = str(self.found.path or self.found.config_path or "")
        log.info("model state", model=self.name, version=self.version, state=self.state.value, path=path, **extra)

    async def load(self, assemble: Assemble) -> None:
        """LOADING -> READY, or FAILED with the reason (a bug's reason says only that it is one)."""
        started = time.monotonic()
        try:
            serving = await assemble(self)
        except (LoadFailed, ConfigError) as e:
            return self._load_failed(e.reason if isinstance(e, LoadFailed) else str(e))
        except Exception as e:
            error = unexpected(e, "loading a model version failed", model=self.name, version=self.version)
            return self._load_failed(error.message)
        self.serving = serving
        self.queue, self.pipeline, self.metadata = serving.queue, serving.pipeline, serving.metadata
        self.max_batch_size = serving.max_batch_size
        self.input_specs = {t.name: t for t in serving.metadata.inputs}
        self.output_names = frozenset(t.name for t in serving.metadata.outputs)
        seconds = time.monotonic() - started
        if self.state is ModelState.LOADING:  # not retired meanwhile
            self.observer.loaded(seconds)
            pool = serving.pool
            log.info("model loaded", model=self.name, version=self.version, seconds=round(seconds, 3),
                     pids=pool.pids if pool is not None else [])
            self._set_state(ModelState.READY)

    def _load_failed(self, reason: str) -> None:
        if self.state is ModelState.LOADING:
            self._set_state(ModelState.FAILED, self._redact(reason) or "the load failed without a reason (see the server's log)")

    def broken(self, reason: str) -> None:
        """The workers crash-looped: FAILED until the file changes (or a load request)."""
        if self.state is ModelState.READY:
            self._set_state(ModelState.FAILED, self._redact(reason) or "its workers failed")

    def files_missing(self) -> bool:
        """Its model file (or directory) is no longer there: no worker can start from it."""
        path = self.found.path
        return path is not None and not path.exists()

    def files_gone(self, reason: str) -> None:
        """Its files were removed while it serves, its successor not READY yet: it serves on
        with the workers it has and starts none (WorkerPool.hold); FAILED with `reason` when it
        has none left. The reason shows on its index row meanwhile."""
        pool = self.serving.pool if self.serving else None
        if self.state is not ModelState.READY or pool is None or pool.held:
            return
        self.reason, self.removed = self._redact(reason), True
        log.warning("model files removed; serving on with the running workers", model=self.name,
                    version=self.version, workers=len(pool.pids), reason=self.reason)
        pool.hold(f"{self.reason}; no worker of it is left running")
        self._on_state(self)

    def retire(self) -> None:
        """No longer served: drains, then stops (the repository drives both)."""
        if self.state is not ModelState.UNLOADING:
            keep = self.state not in (ModelState.READY, ModelState.LOADING)
            self._set_state(ModelState.UNLOADING, self.reason if keep else "")

    def unloaded(self) -> None:
        self._set_state(ModelState.UNLOADED, self.reason)

    async def drain(self, timeout: float) -> bool:
        """Answer what was accepted (True), or fail what is left after `timeout` s (False)."""
        waits = [w.drain() for w in (self.queue, self.pipeline) if w is not None]
        if not waits:
            return True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*waits)
            return True
        except TimeoutError:
            self.abort()
            return False

    def abort(self) -> None:
        if self.queue is not None:
            self.queue.abort(InferdError(ErrorCode.UNAVAILABLE, "the model version is shutting down"))

    async def stop(self, release: Callable[[Tenant], None]) -> None:
        """Stop the workers; `release` gives the version's memory claim back."""
        serving = self.serving
        if serving is None:
            return
        if serving.tenant is not None:
            release(serving.tenant)
        if serving.pool is not None:
            await serving.pool.stop()
