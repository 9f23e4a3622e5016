"""The model repository: what is in the models directory, and the versions loaded from it.

Layouts (DESIGN.md):
    models/<name>.<ext>                        version 1 of <name>
    models/<name>/<version>/model.<ext>        full form, with optional models/<name>/config.toml

`scan()` is pure (a snapshot of the directory); `ModelRepository.load_all()` loads what it
found. Each version is LOADING -> READY, or FAILED with a reason; a failure never stops the
other models. Until version policies exist, the newest version of each model is served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from pathlib import Path

import structlog

from inferd.backends import MODEL_EXTENSIONS, backend_path
from inferd.config.errors import ConfigError, ErrorCode, InferdError
from inferd.config.settings import ModelConfig, ModelSettings, load_model_config
from inferd.config.tensors import ModelMetadata, TensorSpec
from inferd.daemon.metrics import Metrics, VersionObserver
from inferd.scheduler.pool import WorkerPool
from inferd.scheduler.queue import ModelQueue
from inferd.scheduler.worker import LoadFailed, WorkerSpec

log = structlog.get_logger("inferd.repository")

MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def ignored(name: str) -> bool:
    """Hidden files and files still being written are never models."""
    return name.startswith(".") or name.endswith((".tmp", ".part"))


@dataclasses.dataclass(frozen=True)
class Found:
    """One model version as found on disk; `problem` set when it cannot be loaded as laid out."""

    name: str
    version: str
    path: Path | None
    config_path: Path | None = None
    problem: str = ""


def scan(root: Path) -> dict[str, Found]:
    """The newest version of every model under `root`, by model name."""
    found: dict[str, Found] = {}
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if ignored(entry.name):
            continue
        if entry.is_file():
            name, dot, ext = entry.name.rpartition(".")
            if not dot or ext not in MODEL_EXTENSIONS:
                continue
            item = Found(name, "1", entry)
        elif entry.is_dir():
            name = entry.name
            item = _scan_model_dir(entry)
        else:
            continue
        if not MODEL_NAME.fullmatch(name):
            log.warning("skipping a model with an invalid name", path=str(entry), rule="[A-Za-z0-9_.-]+")
            continue
        if name in found:
            item = Found(name, "1", None, problem=f"both {found[name].path} and {entry} define model {name!r}")
        found[name] = item
    return found


def _scan_model_dir(directory: Path) -> Found:
    config = directory / "config.toml"
    versions = sorted((int(d.name), d) for d in directory.iterdir() if d.is_dir() and d.name.isdigit())
    if not versions:
        return Found(directory.name, "1", None, problem=f"no version directories (e.g. {directory}/1/model.onnx)")
    number, vdir = versions[-1]
    files = [f for f in vdir.iterdir() if f.is_file() and not ignored(f.name) and f.stem == "model" and f.suffix[1:] in MODEL_EXTENSIONS]
    if len(files) != 1:
        problem = f"{vdir} must hold exactly one model.<{'|'.join(MODEL_EXTENSIONS)}>, found {len(files)}"
        return Found(directory.name, str(number), None, config if config.exists() else None, problem)
    return Found(directory.name, str(number), files[0], config if config.exists() else None)


def _apply_config_tensors(file_specs: tuple[TensorSpec, ...], overrides: tuple[TensorSpec, ...], kind: str) -> tuple[TensorSpec, ...]:
    """config.toml may narrow the file's tensors (e.g. fix a dynamic dim), never contradict them."""
    by_name = {t.name: t for t in overrides}
    out = []
    for spec in file_specs:
        conf = by_name.pop(spec.name, spec)
        narrows = len(conf.shape) == len(spec.shape) and all(f in (-1, c) for f, c in zip(spec.shape, conf.shape))
        if conf.datatype != spec.datatype or not narrows:
            raise LoadFailed(
                f"config.toml {kind} {conf.name!r} ({conf.datatype} {list(conf.shape)}) contradicts "
                f"the model file ({spec.datatype} {list(spec.shape)})"
            )
        out.append(conf)
    if by_name:
        raise LoadFailed(f"config.toml names {kind} the model file does not have: {', '.join(by_name)}")
    return tuple(out)


class ModelVersion:
    """One loaded (or failed) version of a model: its state, metadata, queue and workers."""

    def __init__(self, found: Found, metrics: Metrics):
        self.name = found.name
        self.version = found.version
        self.found = found
        self.state = "LOADING"
        self.reason = ""
        self.config: ModelConfig | None = None
        self.metadata: ModelMetadata | None = None
        self.max_batch_size = 0
        self.pool: WorkerPool | None = None
        self.queue: ModelQueue | None = None
        self.observer = VersionObserver(metrics, self.name, self.version)
        self.input_specs: dict[str, TensorSpec] = {}
        self.output_names: frozenset[str] = frozenset()
        self._metrics = metrics
        metrics.set_state(self.name, self.version, self.state)

    def _set_state(self, state: str, reason: str = "") -> None:
        self.state, self.reason = state, reason
        self._metrics.set_state(self.name, self.version, state)
        extra = {"reason": reason} if reason else {}
        log.info("model state", model=self.name, version=self.version, state=state, **extra)

    async def load(self, defaults: ModelSettings) -> None:
        started = time.monotonic()
        try:
            await self._load(defaults)
        except (LoadFailed, ConfigError) as e:
            self._set_state("FAILED", e.reason if isinstance(e, LoadFailed) else str(e))
            return
        self._metrics.model_load_seconds.labels(self.name, self.version).set(time.monotonic() - started)
        self._set_state("READY")

    async def _load(self, defaults: ModelSettings) -> None:
        found = self.found
        if found.problem:
            raise LoadFailed(found.problem)
        extension = found.path.suffix[1:]
        backend = backend_path(extension)
        if backend is None:
            raise LoadFailed(f"no backend for .{extension} model files in this version of inferd")
        self.config = load_model_config(found.config_path, defaults)
        settings = self.config.settings
        spec = WorkerSpec(self.name, self.version, found.path, backend, dataclasses.asdict(settings))
        self.pool = WorkerPool(spec, size=max(1, settings.min_workers), load_timeout=settings.cold_start_timeout_s)
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
        self.queue = ModelQueue(
            self.pool,
            output_names=[t.name for t in self.metadata.outputs],
            max_batch_rows=self.max_batch_size,
            max_queue_rows=settings.queue_rows_limit,
            max_delay_s=settings.max_queue_delay_ms / 1000,
            observer=self.observer,
        )
        self.queue.start()
        labels = (self.name, self.version)
        self._metrics.queue_limit_rows.labels(*labels).set(settings.queue_rows_limit)
        self._metrics.batch_limit.labels(*labels).set(self.max_batch_size)
        self._metrics.workers.labels(*labels).set(len(self.pool.pids))

    def _batch_limit(self, settings: ModelSettings) -> int:
        if self.metadata.batchable:
            return settings.max_batch_size
        if "max_batch_size" in self.config.explicit and settings.max_batch_size > 0:
            raise LoadFailed(
                f"max_batch_size is {settings.max_batch_size} but the model's first dimension is not "
                "dynamic on every input and output, so it cannot batch; set max_batch_size = 0"
            )
        return 0

    async def drain(self) -> None:
        if self.queue is not None:
            await self.queue.drain()

    def abort(self) -> None:
        if self.queue is not None:
            self.queue.abort(InferdError(ErrorCode.UNAVAILABLE, "the daemon is shutting down"))

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.stop()
            self._metrics.workers.labels(self.name, self.version).set(0)


class ModelRepository:
    def __init__(self, root: Path, defaults: ModelSettings, metrics: Metrics):
        self.root = root
        self.defaults = defaults
        self.metrics = metrics
        self.models: dict[str, dict[str, ModelVersion]] = {}

    async def load_all(self) -> None:
        found = scan(self.root)
        versions = [ModelVersion(f, self.metrics) for f in found.values()]
        for v in versions:
            self.models.setdefault(v.name, {})[v.version] = v
        await asyncio.gather(*(v.load(self.defaults) for v in versions))

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve: the named one, or the newest READY one. Raises InferdError."""
        versions = self.models.get(name)
        if versions is None:
            raise InferdError(ErrorCode.NOT_FOUND, f"unknown model {name!r}")
        if version:
            mv = versions.get(version)
            if mv is None:
                raise InferdError(ErrorCode.NOT_FOUND, f"model {name!r} has no version {version!r}")
            return mv
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

    def all_versions(self) -> list[ModelVersion]:
        return [v for versions in self.models.values() for v in versions.values()]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.all_versions():
            out[v.state] = out.get(v.state, 0) + 1
        return out

    def inflight_count(self) -> int:
        return sum(v.queue.inflight_count() for v in self.all_versions() if v.queue is not None)

    async def drain(self, timeout: float) -> bool:
        """Answer every accepted request (True), or give up after `timeout` seconds (False)."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(v.drain() for v in self.all_versions()))
            return True
        except TimeoutError:
            for v in self.all_versions():
                v.abort()
            return False

    async def stop(self) -> None:
        await asyncio.gather(*(v.stop() for v in self.all_versions()))
