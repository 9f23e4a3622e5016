"""The model repository: the versions that serve, and how they follow the models directory.

The watcher (or a repository API call) hands `apply()` a snapshot of what should serve. Each
added or changed version loads as a new *generation* beside the one serving: traffic switches
when it is READY, then the old generation drains its accepted requests and stops. A failed load
leaves what serves untouched and shows FAILED with the reason; the next change retries. A model
whose files are gone stops taking requests at once (404), drains and stops. Versions that the
version policy no longer selects are retired once a selected version is READY, never before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import structlog

from inferd.backends import backend_path
from inferd.config.errors import ConfigError, ErrorCode, InferdError
from inferd.config.settings import ModelConfig, ModelSettings, load_model_config
from inferd.config.tensors import DATATYPES, ModelMetadata, TensorSpec
from inferd.daemon.metrics import MODEL_STATES, Metrics, VersionObserver
from inferd.daemon.pipeline import Pipeline, PipelineError
from inferd.daemon.scan import Found, Key, Snapshot, diff, model_names, scan
from inferd.scheduler.limits import MemoryManager, Tenant, measure
from inferd.scheduler.memory import CPU
from inferd.scheduler.pool import Scaling, WorkerPool
from inferd.scheduler.queue import ModelQueue
from inferd.scheduler.worker import LoadFailed, WorkerSpec

log = structlog.get_logger("inferd.repository")


def _apply_config_tensors(file_specs: tuple[TensorSpec, ...], overrides: tuple[TensorSpec, ...], kind: str) -> tuple[TensorSpec, ...]:
    """config.toml may narrow the file's tensors (e.g. fix a dynamic dim), never contradict them."""
    by_name = {t.name: t for t in overrides}
    out = []
    for spec in file_specs:
        conf = by_name.pop(spec.name, spec)
        if not spec.narrowed_by(conf):
            raise LoadFailed(
                f"config.toml {kind} {conf.name!r} ({conf.datatype} {list(conf.shape)}) contradicts "
                f"the model file ({spec.datatype} {list(spec.shape)})"
            )
        out.append(conf)
    if by_name:
        raise LoadFailed(f"config.toml names {kind} the model file does not have: {', '.join(by_name)}")
    return tuple(out)


class ModelVersion:
    """One generation of a model version (one load of its files): its state, metadata, queue
    and workers. `on_state` hears of every state change."""

    def __init__(self, found: Found, metrics: Metrics, memory: MemoryManager, on_state=lambda mv: None,
                 on_workers=lambda mv: None, steps=None, base_estimate: int = 0):
        self.name = found.name
        self.version = found.version
        self.key = found.key
        self.found = found
        self.state = "LOADING"
        self.task: asyncio.Task | None = None  # the load
        self.reason = ""
        self.config: ModelConfig | None = None
        self.metadata: ModelMetadata | None = None
        self.max_batch_size = 0
        self.pool: WorkerPool | None = None
        self.queue: ModelQueue | None = None
        self.pipeline: Pipeline | None = None  # a pipeline has steps instead of a queue and workers
        self.tenant: Tenant | None = None  # its claim on memory (limits, placement)
        self._steps = steps  # the repository, for a pipeline's steps
        self.observer = VersionObserver(metrics, self.name, self.version, on_workers=lambda: on_workers(self))
        self._memory = memory
        self._base_estimate = base_estimate  # a worker's memory before it is measured
        self._device = CPU  # where its workers are expected to run, until one has loaded
        self.input_specs: dict[str, TensorSpec] = {}
        self.output_names: frozenset[str] = frozenset()
        self._metrics = metrics
        self._on_state = on_state
        self._log_state()

    @property
    def worker_count(self) -> int:
        return len(self.pool.pids) if self.pool is not None else 0

    def _set_state(self, state: str, reason: str = "") -> None:
        self.state, self.reason = state, reason
        self._log_state()
        self._on_state(self)

    def _log_state(self) -> None:
        extra = {"reason": self.reason} if self.reason else {}
        path = str(self.found.path or self.found.config_path or "")
        log.info("model state", model=self.name, version=self.version, state=self.state, path=path, **extra)

    async def load(self, defaults: ModelSettings) -> None:
        started = time.monotonic()
        try:
            await self._load(defaults)
        except (LoadFailed, ConfigError) as e:
            if self.state == "LOADING":
                self._set_state("FAILED", e.reason if isinstance(e, LoadFailed) else str(e))
            return
        seconds = time.monotonic() - started
        if self.state == "LOADING":  # not retired meanwhile
            self._metrics.model_load_seconds.labels(self.name, self.version).set(seconds)
            log.info("model loaded", model=self.name, version=self.version, seconds=round(seconds, 3),
                     pids=self.pool.pids if self.pool is not None else [])
            self._set_state("READY")

    async def _load(self, defaults: ModelSettings) -> None:
        found = self.found
        if found.problem:
            raise LoadFailed(found.problem)
        if found.pipeline:
            return await self._load_pipeline(defaults)
        extension = found.path.suffix[1:]
        backend = backend_path(extension)
        if backend is None:
            raise LoadFailed(f"no backend for .{extension} model files in this version of inferd")
        self.config = load_model_config(found.config_path, defaults)
        settings = self.config.settings
        # What the backend gets besides its file: the settings, the tensors config.toml declares
        # (for files that do not carry them), the model's directory and its [parameters].
        # With device "auto", the daemon places the model on the GPU with the most free memory.
        gpu = self._memory.choose_gpu() if settings.device == "auto" else None
        self._device = f"cuda:{gpu}" if gpu is not None else settings.device.replace("auto", CPU)
        worker_settings = dataclasses.asdict(settings) | {
            "inputs": [t.to_dict() for t in self.config.inputs],
            "outputs": [t.to_dict() for t in self.config.outputs],
            "model_dir": str(found.config_path.parent if found.config_path else found.path.parent),
            "parameters": self.config.parameters,
            "gpu": gpu,
        }
        spec = WorkerSpec(self.name, self.version, found.path, backend, worker_settings)
        self.pool = WorkerPool(spec, Scaling.from_settings(settings), observer=self.observer, on_broken=self._broken,
                               admit=self._admit)
        file_meta = await self.pool.start()
        try:
            self.metadata = ModelMetadata(
                file_meta.platform,
                _apply_config_tensors(file_meta.inputs, self.config.inputs, "inputs"),
                _apply_config_tensors(file_meta.outputs, self.config.outputs, "outputs"),
            )
            self.max_batch_size = self._batch_limit(settings)
        except LoadFailed:
            await self.pool.stop()
            raise
        self.input_specs = {t.name: t for t in self.metadata.inputs}
        self.output_names = frozenset(t.name for t in self.metadata.outputs)
        self._device = self.pool.device
        fit = await measure(self.pool, self._memory.probe, self.max_batch_size, settings.typical_dim_size)
        if fit is not None:
            log.info("memory fit", model=self.name, version=self.version, device=fit.device, base_bytes=fit.base,
                     bytes_per_row=fit.per_row, points=[list(p) for p in fit.points],
                     typical_dim_size=settings.typical_dim_size)
        self.queue = ModelQueue(
            self.pool,
            output_names=[t.name for t in self.metadata.outputs],
            max_batch_rows=self.max_batch_size,
            max_queue_rows=0,  # the memory manager sets the queue's limits (self._memory.add below)
            max_delay_s=settings.max_queue_delay_ms / 1000,
            retry_crashed=settings.idempotent,
            cold_start_timeout_s=settings.cold_start_timeout_s,
            observer=self.observer,
        )
        self.tenant = Tenant(
            self.name, self.version, self.pool, self.queue, max_batch_size=self.max_batch_size,
            max_queue_rows=settings.max_queue_rows, max_queue_bytes=settings.max_queue_bytes,
            row_bytes=_row_bytes(self.metadata, settings.typical_dim_size), min_workers=settings.min_workers,
            device=self._device, fit=fit, observer=self.observer,
        )
        self.queue.on_out_of_memory = self.tenant.out_of_memory
        self._memory.add(self.tenant)  # sets the queue's limits
        self.queue.start()

    async def _admit(self) -> str | None:
        """Before a worker of this version starts: None, or why memory does not allow it."""
        fit = self.tenant.fit if self.tenant else None
        needed = fit.base if fit else self._base_estimate
        return await self._memory.admit(self._device, needed, f"{self.name} version {self.version}", exclude=self.pool)

    async def _load_pipeline(self, defaults: ModelSettings) -> None:
        self.config = load_model_config(self.found.config_path, defaults)
        if not self.config.pipeline:
            raise LoadFailed(f"{self.found.config_path} declares no [[pipeline]] steps and there are no version directories")
        await self._steps.wait_for_steps(self.config.pipeline, self.config.settings.load_timeout_s)
        try:
            self.pipeline = Pipeline(self.name, self.config.pipeline, self._steps.step_metadata)
        except PipelineError as e:
            raise LoadFailed(str(e)) from None
        self.metadata = self.pipeline.metadata
        self.max_batch_size = self.pipeline.max_batch_size
        self.input_specs = {t.name: t for t in self.metadata.inputs}
        self.output_names = frozenset(t.name for t in self.metadata.outputs)
        self._metrics.batch_limit.labels(self.name, self.version).set(self.max_batch_size)

    def _batch_limit(self, settings: ModelSettings) -> int:
        if self.metadata.batchable:
            return settings.max_batch_size
        if "max_batch_size" in self.config.explicit and settings.max_batch_size > 0:
            raise LoadFailed(
                f"max_batch_size is {settings.max_batch_size} but the model's first dimension is not "
                "dynamic on every input and output, so it cannot batch; set max_batch_size = 0"
            )
        return 0

    def _broken(self, reason: str) -> None:
        """The workers crash-looped: FAILED until the file changes (or a load request)."""
        if self.state == "READY":
            self._set_state("FAILED", reason)

    def retire(self) -> None:
        """No longer served: drains, then stops (the repository drives both)."""
        if self.state != "UNLOADING":
            self._set_state("UNLOADING", "" if self.state in ("READY", "LOADING") else self.reason)

    def unloaded(self) -> None:
        log.info("model state", model=self.name, version=self.version, state="UNLOADED")

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

    async def stop(self) -> None:
        if self.tenant is not None:
            self._memory.remove(self.tenant)
        if self.pool is not None:
            await self.pool.stop()


def _row_bytes(metadata: ModelMetadata, dim: int) -> int:
    """Input bytes of one row, with `dim` for dynamic non-batch dimensions (BYTES: `dim` bytes
    an element)."""
    total = 0
    for t in metadata.inputs:
        elements = 1
        for d in t.shape[1:] if metadata.batchable else t.shape:
            elements *= d if d >= 0 else dim
        total += elements * (dim if t.datatype == "BYTES" else DATATYPES[t.datatype].itemsize)
    return total


class ModelRepository:
    def __init__(self, root: Path, defaults: ModelSettings, metrics: Metrics, memory: MemoryManager,
                 drain_timeout_s: float = 30.0, explicit: bool = False):
        self.root = root
        self.memory = memory
        self.defaults = defaults
        self.metrics = metrics
        self.drain_timeout_s = drain_timeout_s
        self.explicit = explicit  # models.control = "explicit": only the API loads and unloads
        self.models: dict[str, dict[str, ModelVersion]] = {}  # what serves, by name and version
        self.pending: dict[Key, ModelVersion] = {}  # replacements loading (or failed) beside a serving version
        self.retiring: set[ModelVersion] = set()  # draining, then stopping
        self.applied: Snapshot = {}  # the snapshot the above follows
        self.unloaded: set[str] = set()  # unloaded on request: directory changes leave them alone
        self._tasks: set[asyncio.Task] = set()
        self._loads: set[asyncio.Task] = set()
        self._changed = asyncio.Event()  # set (and replaced) at every state change

    # -- following snapshots -----------------------------------------------------------------

    def apply(self, snapshot: Snapshot) -> None:
        """Make what serves follow `snapshot` (loads and unloads run in the background)."""
        snapshot = {k: f for k, f in snapshot.items() if k[0] not in self.unloaded}
        before, self.applied = self.applied, snapshot
        changes = diff(before, snapshot)
        gone = model_names(before) - model_names(snapshot)
        for name in gone:
            log.info("model removed from the directory", model=name)
            self._remove_model(name)
        for change in changes:
            found = change.found
            if change.kind == "removed":
                if found.name not in gone and (stale := self.pending.pop(found.key, None)):
                    self._retire(stale)
                continue
            log.info("model file change", model=found.name, version=found.version, change=change.kind,
                     path=str(found.path or found.config_path or ""))
            self._load(found)
        for name in {c.found.name for c in changes} - gone:
            self._settle(name)

    def reload_all(self, defaults: ModelSettings) -> None:
        """New [defaults] (SIGHUP): every version loads again with them, beside what serves."""
        self.defaults = defaults
        for found in self.applied.values():
            self._load(found)

    async def wait_loaded(self) -> None:
        """Until every load started so far has finished (READY or FAILED)."""
        while self._loads:
            await asyncio.wait(set(self._loads))

    def _load(self, found: Found) -> ModelVersion:
        mv = ModelVersion(found, self.metrics, self.memory, self._state_changed, self._workers_changed, self,
                          base_estimate=self._base_estimate(found))
        if (superseded := self.pending.pop(found.key, None)) is not None:
            self._retire(superseded)
        versions = self.models.setdefault(found.name, {})
        serving = versions.get(found.version)
        if serving is not None and serving.state == "READY":
            self.pending[found.key] = mv  # loads beside the serving generation
        else:
            versions[found.version] = mv
            if serving is not None:
                self._retire(serving)
        mv.task = self._spawn(self._finish_load(mv), self._loads)
        return mv

    async def _finish_load(self, mv: ModelVersion) -> None:
        await mv.load(self.defaults)
        name, version = mv.key
        if self.pending.get(mv.key) is mv and mv.state == "READY":
            del self.pending[mv.key]
            old = self.models[name].get(version)
            self.models[name][version] = mv  # traffic switches here
            if old is not None:
                self._retire(old)
        self._publish(mv.key)
        self._settle(name)
        if mv.state == "READY" and mv.pipeline is None:
            self._reload_pipelines_using(name)

    def _reload_pipelines_using(self, name: str) -> None:
        """A step model's new generation may have other tensors or limits: a pipeline that
        uses it loads again (beside what serves) when what it resolved against changed."""
        for mv in self.serving_versions():
            if mv.pipeline is None or mv.state != "READY" or name not in mv.pipeline.models:
                continue
            try:
                now = Pipeline(mv.name, mv.config.pipeline, self.step_metadata)
                changed = (now.metadata, now.max_batch_size) != (mv.metadata, mv.max_batch_size)
            except PipelineError:
                changed = True
            if changed:
                log.info("a pipeline step changed; reloading the pipeline", model=mv.name, step=name)
                self._load(mv.found)

    # -- pipelines' steps --------------------------------------------------------------------

    async def wait_for_steps(self, steps, timeout: float) -> None:
        """Until every step's model serves; raises LoadFailed at once for a step that is not
        in the directory or failed, and after `timeout` s for one still loading."""
        try:
            async with asyncio.timeout(timeout):
                while waiting := [s for s in steps if not self._step_ready(s)]:
                    await self._changed.wait()
        except TimeoutError:
            raise LoadFailed(f"step model {waiting[0].model!r} did not become READY within {timeout:g} s") from None

    def _step_ready(self, step) -> bool:
        try:
            self.get_ready(step.model, step.version)
            return True
        except InferdError as e:
            versions = self.models.get(step.model, {}).values()
            if any(v.state == "LOADING" for v in versions) or any(k[0] == step.model for k in self.pending):
                return False
            if step.model in model_names(self.applied) and not versions:
                return False  # in the directory, its load not started yet
            raise LoadFailed(f"step model {step.model!r}: {e.message}") from None

    def step_metadata(self, step):
        """A step model's metadata and batch limit, for Pipeline (raises PipelineError)."""
        try:
            mv = self.get_ready(step.model, step.version)
        except InferdError as e:
            raise PipelineError(f"step model {step.model!r}: {e.message}") from None
        if mv.pipeline is not None:
            raise PipelineError(f"step model {step.model!r} is a pipeline; a step must be a model")
        return mv.metadata, mv.max_batch_size

    def _settle(self, name: str) -> None:
        """Retire versions the policy no longer selects, once a selected one is READY."""
        versions = self.models.get(name)
        if not versions:
            return
        wanted = {v for n, v in self.applied if n == name}
        if not any(versions[v].state == "READY" for v in wanted if v in versions):
            return  # keep serving what serves until a wanted version can take over
        for version in [v for v in versions if v not in wanted]:
            self._retire(versions.pop(version))
            if (stale := self.pending.pop((name, version), None)) is not None:
                self._retire(stale)

    def _remove_model(self, name: str) -> list[asyncio.Task]:
        """No new requests from now on (404); what was accepted drains, then workers stop."""
        retiring = list(self.models.pop(name, {}).values())
        retiring += [self.pending.pop(k) for k in [k for k in self.pending if k[0] == name]]
        return [self._retire(mv) for mv in retiring]

    def _retire(self, mv: ModelVersion) -> asyncio.Task:
        self.retiring.add(mv)
        mv.retire()
        self._publish(mv.key)
        return self._spawn(self._unload(mv))

    async def _unload(self, mv: ModelVersion) -> None:
        try:
            if mv.task is not None and not mv.task.done():
                await asyncio.wait([mv.task])  # a load in progress finishes first
            if not await mv.drain(self.drain_timeout_s):
                log.warning("drain budget exhausted; failed what was left", model=mv.name, version=mv.version)
            await mv.stop()
            mv.unloaded()
        finally:
            self.retiring.discard(mv)
            self._publish(mv.key)

    def _spawn(self, coro, group: set[asyncio.Task] | None = None) -> asyncio.Task:
        task = asyncio.create_task(coro)
        for tasks in (self._tasks, group):
            if tasks is not None:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    # -- metrics -----------------------------------------------------------------------------

    def _state_changed(self, mv: ModelVersion) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        if mv.state == "FAILED":
            self.metrics.load_failures.labels(mv.name, mv.version).inc()
        self._publish(mv.key)

    def _workers_changed(self, mv: ModelVersion) -> None:
        self._publish(mv.key)
        self.memory.changed()  # shares of the device change with the number of workers

    def _base_estimate(self, found: Found) -> int:
        """A worker's memory before its version is measured: the serving generation's measured
        base, else the model file's size."""
        serving = self.models.get(found.name, {}).get(found.version)
        if serving is not None and serving.tenant is not None and serving.tenant.fit is not None:
            return serving.tenant.fit.base
        try:
            return found.path.stat().st_size if found.path else 0
        except OSError:
            return 0

    def _publish(self, key: Key) -> None:
        """The state and worker gauges of (model, version): the serving generation's state (or a
        retiring one's), workers summed over every generation alive; gone when none is."""
        name, version = key
        current = self.models.get(name, {}).get(version)
        others = [g for g in self.retiring if g.key == key]
        if (pending := self.pending.get(key)) is not None:
            others.append(pending)
        shown = current or next(iter(others), None)
        if shown is None:
            for state in MODEL_STATES:
                _remove(self.metrics.model_state, name, version, state)
            _remove(self.metrics.workers, name, version)
            return
        self.metrics.set_state(name, version, shown.state)
        alive = [g for g in (current, *others) if g is not None]
        self.metrics.workers.labels(name, version).set(sum(g.worker_count for g in alive))

    # -- the repository API ------------------------------------------------------------------

    async def load_model(self, name: str) -> None:
        """Load (or load again) model `name` from the directory as it is now, beside what
        serves; return once it serves. Raises NOT_FOUND or FAILED_PRECONDITION."""
        found = scan(self.root, only=name)
        if not found:
            raise InferdError(ErrorCode.NOT_FOUND, f"no model {name!r} in {self.root}")
        self.unloaded.discard(name)
        self.applied = {k: f for k, f in self.applied.items() if k[0] != name} | found
        loads = [self._load(f) for f in found.values()]
        await asyncio.wait([mv.task for mv in loads])
        failed = [mv for mv in loads if mv.state != "READY"]
        if failed:
            reasons = "; ".join(f"version {mv.version}: {mv.reason}" for mv in failed)
            raise InferdError(ErrorCode.FAILED_PRECONDITION, f"failed to load model {name!r}: {reasons}")

    async def unload_model(self, name: str) -> None:
        """Stop serving `name` (404 from now on), drain it, stop its workers; it stays unloaded
        until loaded again through the API. Raises NOT_FOUND."""
        if name not in self.models and not any(k[0] == name for k in self.pending):
            raise InferdError(ErrorCode.NOT_FOUND, f"model {name!r} is not loaded")
        self.unloaded.add(name)
        self.applied = {k: f for k, f in self.applied.items() if k[0] != name}
        log.info("model unloaded on request", model=name)
        tasks = self._remove_model(name)
        if tasks:
            await asyncio.wait(tasks)

    def index(self) -> list[dict]:
        """Every version known: serving, loading beside, unloading; and models on disk that are
        not loaded, as UNAVAILABLE with the reason."""
        rows = []
        for mv in self.all_versions():
            row = {"name": mv.name, "version": mv.version, "state": mv.state}
            if mv.reason:
                row["reason"] = mv.reason
            if self.pending.get(mv.key) is mv:
                row["reason"] = f"new file for the serving version: {mv.reason or mv.state.lower()}"
            rows.append(row)
        known = {mv.name for mv in self.all_versions()}
        on_disk = model_names(scan(self.root))
        for name in sorted(on_disk - known):
            if name in self.unloaded:
                reason = "unloaded on request"
            elif self.explicit:
                reason = "not loaded (models.control = explicit: load it through the repository API)"
            else:
                reason = "not loaded yet: waiting for its files to be complete"
            rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
        return sorted(rows, key=lambda r: (r["name"], int(r["version"] or 0)))

    # -- serving -----------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve: the named one, or the newest READY one. Raises InferdError."""
        versions = self.models.get(name)
        if not versions:
            raise InferdError(ErrorCode.NOT_FOUND, f"unknown model {name!r}")
        if version:
            mv = versions.get(version)
            if mv is None:
                raise InferdError(ErrorCode.NOT_FOUND, f"model {name!r} has no version {version!r}")
            return mv
        if len(versions) == 1:  # the common case, on every request: nothing to choose
            return next(iter(versions.values()))
        ready = [v for v in versions.values() if v.state == "READY"]
        if ready:
            return max(ready, key=lambda v: int(v.version))
        return max(versions.values(), key=lambda v: int(v.version))

    def get_ready(self, name: str, version: str = "") -> ModelVersion:
        mv = self.get(name, version)
        if mv.state != "READY":
            detail = f": {mv.reason}" if mv.reason else ""
            raise InferdError(ErrorCode.UNAVAILABLE, f"model {name!r} version {mv.version} is {mv.state}{detail}")
        return mv

    def serving_versions(self) -> list[ModelVersion]:
        return [v for versions in self.models.values() for v in versions.values()]

    def all_versions(self) -> list[ModelVersion]:
        """Serving, pending and retiring generations."""
        return self.serving_versions() + list(self.pending.values()) + list(self.retiring)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.serving_versions():
            out[v.state] = out.get(v.state, 0) + 1
        return out

    def inflight_count(self) -> int:
        return sum(v.queue.inflight_count() for v in self.all_versions() if v.queue is not None)

    async def drain(self, timeout: float) -> bool:
        """Answer every accepted request (True), or give up after `timeout` seconds (False)."""
        try:
            async with asyncio.timeout(timeout):
                # Pipelines first: their requests still have steps to run on the models' queues.
                await asyncio.gather(*(v.pipeline.drain() for v in self.all_versions() if v.pipeline is not None))
                await asyncio.gather(*(v.queue.drain() for v in self.all_versions() if v.queue is not None))
            return True
        except TimeoutError:
            for v in self.all_versions():
                v.abort()
            return False

    async def stop(self) -> None:
        """Cancel loads and unloads in progress and stop every worker."""
        generations = self.all_versions()  # before the cancelled unloads forget theirs
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(v.stop() for v in generations))


def _remove(gauge, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("repository task failed", error=repr(task.exception()), exc_info=task.exception())
