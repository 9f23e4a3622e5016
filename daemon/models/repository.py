"""The model repository: which generation of each model version serves, and how that follows
the models directory.

The watcher (or a repository API call) hands `apply()` a snapshot of what should serve. Each
added or changed version loads as a new *generation* (inferd.daemon.models.version) beside the
one serving: traffic switches when it is READY, then the old generation drains its accepted
requests and stops. A failed load leaves what serves untouched and shows FAILED with the
reason; the next change retries. A model whose files are gone stops taking requests at once
(404), drains and stops. Versions that the version policy no longer selects are retired once a
selected version is READY, never before (succession.py; also what a version whose files
were removed does meanwhile). Building a generation is the assembler's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import structlog

from inferd.common.errors import ErrorCode, InferdError, clip
from inferd.common.tasks import TaskSet
from inferd.config.model import ModelSettings
from inferd.daemon.models.assembly import Assembler
from inferd.daemon.models.handover import Handover
from inferd.daemon.models.pipeline import Pipeline, PipelineError
from inferd.daemon.models.repository_index import index_rows
from inferd.daemon.models.scan import Found, Key, Snapshot, diff, model_names, scan
from inferd.daemon.models.source import ModelSource
from inferd.daemon.models.steps import PipelineSteps
from inferd.daemon.models.succession import settle
from inferd.daemon.models.trust import redact
from inferd.daemon.models.version import ModelState, ModelVersion
from inferd.daemon.operations.metrics import Metrics, VersionObserver
from inferd.scheduler.limits import MemoryManager

log = structlog.get_logger("inferd.repository")

READY, LOADING = ModelState.READY, ModelState.LOADING


class ModelRepository:
    def __init__(self, root: Path, defaults: ModelSettings, metrics: Metrics, memory: MemoryManager,
                 drain_timeout_s: float = 30.0, explicit: bool = False, max_concurrent_loads: int = 4,
                 source: ModelSource | None = None):
        self.root = root
        self.source = source  # models.source: synced before an API load reads the directory
        self.explicit = explicit  # models.control = "explicit": only the API loads and unloads
        self.defaults = defaults
        self.metrics = metrics
        self.memory = memory
        self.drain_timeout_s = drain_timeout_s
        self.models: dict[str, dict[str, ModelVersion]] = {}  # what serves, by name and version
        self.pending: dict[Key, ModelVersion] = {}  # replacements loading (or failed) beside a serving version
        self.retiring: set[ModelVersion] = set()  # draining, then stopping
        self.applied: Snapshot = {}  # the snapshot the above follows
        self.unloaded: set[str] = set()  # unloaded on request: directory changes leave them alone
        self.steps = PipelineSteps(self.get_ready, self._coming)
        self.assembler = Assembler(memory, self.steps, max_concurrent_loads)
        self.handover = Handover(self)  # requests that wait while a removed version gives way
        self._tasks = TaskSet("model repository")
        self._loads: set[asyncio.Task] = set()
        self._api_loads: dict[str, asyncio.Task] = {}  # load_model calls in progress: others share them
        # Told what a repository API load read of a model (the server points it at the
        # watcher's adopt()), so that the watcher's view of it is never older than the load's.
        self.api_scanned: Callable[[str, Snapshot], None] = lambda name, found: None

    def reconfigure(self, root: Path, explicit: bool) -> None:
        """New [models] settings (SIGHUP): the directory to follow, and whether only the API loads."""
        self.root, self.explicit = root, explicit

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
            settle(self, name)
        self.handover.changed()

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
        estimate = self._base_estimate(found)
        mv = ModelVersion(found, VersionObserver(self.metrics, found.name, found.version, self._workers_changed),
                          self._state_changed, redact=self.public)
        if (superseded := self.pending.pop(found.key, None)) is not None:
            self._retire(superseded)
        versions = self.models.setdefault(found.name, {})
        serving = versions.get(found.version)
        if serving is not None and serving.state is READY and not found.untrusted:
            self.pending[found.key] = mv  # loads beside the serving generation
            # (code that others could have changed must not go on serving, nor start workers)
        else:
            versions[found.version] = mv
            if serving is not None:
                self._retire(serving)
        defaults = self.defaults
        mv.task = self._tasks.spawn(self._finish_load(mv, defaults, estimate), self._loads)
        return mv

    async def _finish_load(self, mv: ModelVersion, defaults: ModelSettings, estimate: int) -> None:
        await mv.load(lambda v: self.assembler.assemble(v, defaults, estimate))
        name, version = mv.key
        if self.pending.get(mv.key) is mv and mv.state is READY:
            del self.pending[mv.key]
            old = self.models[name].get(version)
            self.models[name][version] = mv  # traffic switches here
            if old is not None:
                self._retire(old)
        self._publish(mv.key)
        settle(self, name)
        if mv.state is READY and mv.pipeline is None:
            self._reload_pipelines_using(name)

    def _reload_pipelines_using(self, name: str) -> None:
        """A step model's new generation may have other tensors or limits: a pipeline that
        uses it loads again (beside what serves) when what it resolved against changed."""
        for mv in self.serving_versions():
            if mv.pipeline is None or name not in mv.pipeline.models:
                continue
            if mv.state is ModelState.FAILED:  # it failed when the step stopped serving: try again
                log.info("a pipeline's step serves again; reloading the pipeline", model=mv.name, step=name)
                self._load(mv.found)
                continue
            if mv.state is not READY:
                continue
            try:
                now = Pipeline.of(mv.name, mv.serving.config, self.steps.metadata_of)
                changed = (now.metadata, now.max_batch_size) != (mv.metadata, mv.max_batch_size)
            except PipelineError:
                changed = True
            if changed:
                log.info("a pipeline step changed; reloading the pipeline", model=mv.name, step=name)
                self._load(mv.found)

    def _coming(self, name: str) -> bool:
        """Model `name` is loading, or in the directory with its load not started yet."""
        versions = self.models.get(name, {}).values()
        if any(v.state is LOADING for v in versions) or any(k[0] == name for k in self.pending):
            return True
        return name in model_names(self.applied) and not versions

    def _remove_model(self, name: str) -> list[asyncio.Task]:
        """No new requests from now on (404); what was accepted drains, then workers stop."""
        retiring = list(self.models.pop(name, {}).values())
        retiring += [self.pending.pop(k) for k in [k for k in self.pending if k[0] == name]]
        return [self._retire(mv) for mv in retiring]

    def _retire(self, mv: ModelVersion) -> asyncio.Task:
        self.retiring.add(mv)
        mv.retire()
        self._publish(mv.key)
        return self._tasks.spawn(self._unload(mv))

    async def _unload(self, mv: ModelVersion) -> None:
        try:
            if mv.task is not None and not mv.task.done():
                await asyncio.wait([mv.task])  # a load in progress finishes first
            if not await mv.drain(self.drain_timeout_s):
                log.warning("drain budget exhausted; failed what was left", model=mv.name, version=mv.version)
            await mv.stop(self.memory.remove)
        finally:
            self.retiring.discard(mv)
            self._publish(mv.key)
        mv.unloaded()

    # -- state and metrics -------------------------------------------------------------------

    def _state_changed(self, mv: ModelVersion) -> None:
        self.steps.changed()
        self.handover.changed()
        self._publish(mv.key)
        if mv.pipeline is None and mv.state is not READY:
            self._check_pipelines_using(mv.name)

    def _check_pipelines_using(self, name: str) -> None:
        """A pipeline is READY only while every step's model serves: one whose step no longer
        does (unloaded, removed, crash-looping) is FAILED with the reason until it does again."""
        for mv in self.serving_versions():
            if mv.pipeline is None or mv.state is not READY or name not in mv.pipeline.models:
                continue
            for step in mv.pipeline.steps:
                if step.model != name:
                    continue
                try:
                    self.get_ready(step.model, step.version)
                except InferdError as e:
                    mv.broken(f"step model {name!r} is not ready: {e.message}")
                    break

    def public(self, text: str) -> str:
        """`text` as callers may see it: paths relative to the models directory, no others."""
        return redact(text, self.root)

    def _workers_changed(self, key: Key) -> None:
        self._publish(key)
        self.memory.changed()  # shares of the device change with the number of workers

    def _base_estimate(self, found: Found) -> int:
        """A worker's memory before its version is measured: the serving generation's measured
        base, else the model's size on disk."""
        serving = self.models.get(found.name, {}).get(found.version)
        tenant = serving.serving.tenant if serving is not None and serving.serving is not None else None
        if tenant is not None and tenant.fit is not None:
            return tenant.fit.base
        try:
            return found.disk_bytes()
        except OSError:
            return 0

    def _publish(self, key: Key) -> None:
        """The state and worker gauges of (model, version): the serving generation's state (or a
        retiring or pending one's), workers summed over every generation alive; gone when none is."""
        name, version = key
        current = self.models.get(name, {}).get(version)
        others = [g for g in self.retiring if g.key == key]
        if (pending := self.pending.get(key)) is not None:
            others.append(pending)
        alive = [g for g in (current, *others) if g is not None]
        shown = alive[0].state if alive else None
        self.metrics.publish_version(name, version, shown, sum(g.worker_count for g in alive))

    # -- the repository API ------------------------------------------------------------------

    async def load_model(self, name: str, override: dict | None = None) -> None:
        """Load (or load again) model `name` from the directory as it is now, beside what
        serves; return once it serves. Raises NOT_FOUND or FAILED_PRECONDITION. Calls for a
        model whose load through this API is in progress share that load and its outcome
        (when they ask for the same `override`: config.toml keys over the file's, for this load)."""
        key = (name, json.dumps(override, sort_keys=True) if override else "")
        task = self._api_loads.get(key)
        if task is None:
            task = self._tasks.spawn(self._load_from_api(name, override))
            self._api_loads[key] = task
            task.add_done_callback(lambda t: self._api_loads.pop(key, None) if self._api_loads.get(key) is t else None)
        error = await asyncio.shield(task)  # a caller that goes away leaves the load to the others
        if error is not None:
            raise error

    async def _load_from_api(self, name: str, override: dict | None = None) -> InferdError | None:
        if self.source is not None:
            await self.source.sync_now()  # what was uploaded before the call loads (a store down: the directory as it is)
        found = await asyncio.to_thread(scan, self.root, only=name)  # reads files: off the loop
        if not found:
            return InferdError(ErrorCode.NOT_FOUND, f"failed to load: no model {name!r} in the models directory")
        self.api_scanned(name, found)
        if override:
            found = {k: dataclasses.replace(f, override=override) for k, f in found.items()}
        self.unloaded.discard(name)
        self.applied = {k: f for k, f in self.applied.items() if k[0] != name} | found
        loads = [self._load(f) for f in found.values()]  # every version at once
        outcomes = [await self._outcome(mv) for mv in loads]
        failed = [mv for mv in outcomes if mv.state is not READY]
        if failed:
            reasons = "; ".join(f"version {mv.version}: {mv.reason or _no_reason(mv)}" for mv in failed)
            return InferdError(ErrorCode.FAILED_PRECONDITION, f"failed to load model {name!r}: {reasons}")
        return None

    async def _outcome(self, mv: ModelVersion) -> ModelVersion:
        """`mv` once its load ended, or the generation that superseded it (a directory change
        meanwhile) once that one's did."""
        while True:
            await asyncio.wait([mv.task])
            newer = self.pending.get(mv.key) or self.models.get(mv.name, {}).get(mv.version)
            if mv.state is READY or newer is None or newer is mv or newer.task is None:
                return mv
            mv = newer

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

    async def index(self) -> list[dict]:
        """Every version known, and models on disk that are not loaded (repository_index.py)."""
        return await index_rows(self, [self.public(note) for note in self.source.notes()] if self.source else [])

    # -- serving -----------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve: the named one, or the newest READY one. Raises InferdError."""
        versions = self.models.get(name)
        if not versions:
            raise InferdError(ErrorCode.NOT_FOUND, f"Request for unknown model {name!r}")  # Triton's words: clients look for them
        if version:
            if not version.isdigit():  # Triton's words and status, which its example clients look for
                raise InferdError(ErrorCode.INVALID_ARGUMENT, f"failed to get model version from specified version string {clip(version)}")
            mv = versions.get(version)
            if mv is None:
                raise InferdError(ErrorCode.NOT_FOUND, f"model {name!r} has no version {version!r}")
            return mv
        if len(versions) == 1:  # the common case, on every request: nothing to choose
            return next(iter(versions.values()))
        ready = [v for v in versions.values() if v.state is READY]
        return max(ready or versions.values(), key=lambda v: int(v.version))

    def get_ready(self, name: str, version: str = "") -> ModelVersion:
        mv = self.get(name, version)
        if mv.state is not READY:
            detail = f": {mv.reason}" if mv.reason else ""
            raise InferdError(ErrorCode.UNAVAILABLE, f"model {name!r} version {mv.version} is {mv.state.value}{detail}")
        return mv

    def serving_versions(self) -> list[ModelVersion]:
        return [v for versions in self.models.values() for v in versions.values()]

    def all_versions(self) -> list[ModelVersion]:
        """Serving, pending and retiring generations."""
        return self.serving_versions() + list(self.pending.values()) + list(self.retiring)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.serving_versions():
            out[v.state.value] = out.get(v.state.value, 0) + 1
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

    async def stop(self, worker_timeout_s: float = 10.0) -> None:
        """Cancel loads and unloads in progress and stop every worker (killing one that has
        not exited `worker_timeout_s` after STOP: it may be stuck in a batch)."""
        generations = self.all_versions()  # before the cancelled unloads forget theirs
        await self._tasks.cancel()
        pools = [v.serving.pool for v in generations if v.serving is not None and v.serving.pool is not None]
        await asyncio.gather(*(pool.stop(worker_timeout_s) for pool in pools))  # v.stop() below finds them stopped
        await asyncio.gather(*(v.stop(self.memory.remove) for v in generations))


def _no_reason(mv: ModelVersion) -> str:
    return f"its load ended {mv.state.value} (superseded or unloaded meanwhile)"
