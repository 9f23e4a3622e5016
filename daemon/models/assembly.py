"""Building what serves a model version: the backend its file needs, where it runs, its
workers (validated by starting the first), the memory a batch costs there, its memory claim
and its queue; or, for a pipeline, its steps. Whatever fails on the way is stopped before the
failure goes up, so a failed load leaves nothing running."""

from __future__ import annotations

import asyncio
import dataclasses

import structlog

from inferd.backends import BACKENDS, backend_path
from inferd.backends.formats import FormatError, backend_names, detect
from inferd.common.errors import ConfigError
from inferd.common.tensors import DATATYPES, ModelMetadata, TensorSpec
from inferd.config.model import ModelConfig, ModelSettings, load_model_config
from inferd.config.reshape import model_shapes
from inferd.config.triton_config import MODEL_FILES
from inferd.daemon.models.handover import cannot_start
from inferd.daemon.models.labels import read_labels
from inferd.daemon.models.pipeline import Pipeline, PipelineError
from inferd.daemon.models.scan import Found
from inferd.daemon.models.steps import PipelineSteps
from inferd.daemon.models.version import ModelVersion, Serving
from inferd.scheduler.limits import MemoryManager, Tenant, measure
from inferd.scheduler.memory import CPU, MemoryFit
from inferd.scheduler.pool import Refusal, Scaling, WorkerPool
from inferd.scheduler.queue import ModelQueue
from inferd.scheduler.sequence_flags import client_inputs
from inferd.scheduler.sequences import SequenceQueue
from inferd.scheduler.worker import LoadFailed, WorkerSpec

log = structlog.get_logger("inferd.repository")


class _Admission:
    """Whether memory admits another worker of one version: what a worker is expected to take
    (the serving generation's measured base, or the file's size, until this one is measured)
    on the device it runs on (where it was placed, until a worker reports where it runs)."""

    def __init__(self, memory: MemoryManager, key: tuple[str, str], device: str, estimate: int):
        self._memory, self._key = memory, key
        self.device, self.needed = device, estimate

    def measured(self, device: str, fit: MemoryFit | None) -> None:
        self.device = device
        if fit is not None:
            self.needed = fit.base

    async def __call__(self) -> Refusal | None:
        name, version = self._key
        return await self._memory.admit(self.device, self.needed, f"{name} version {version}", exclude=self._key)


class Assembler:
    def __init__(self, memory: MemoryManager, steps: PipelineSteps, max_concurrent_loads: int = 4):
        self.memory = memory
        self.steps = steps
        # Loads that start workers wait their turn: each admits its worker against the memory
        # the ones before it took (all at once, every admission sees the same free memory).
        self.loads = asyncio.Semaphore(max_concurrent_loads)
        self.daemon_socket = ""  # the daemon's Unix socket, for models that call others (BLS); set by the server

    async def assemble(self, mv: ModelVersion, defaults: ModelSettings, estimate: int) -> Serving:
        """What serves `mv`; raises LoadFailed or ConfigError with the reason. `estimate`: the
        memory a worker is expected to take before one is measured."""
        found = mv.found
        if found.problem:
            raise LoadFailed(found.problem)
        config = load_model_config(found.config_path, defaults, found.override)
        if found.pipeline:
            return await self._pipeline(mv, config)
        backend = await _backend(found, config)
        settings = config.settings
        # With device "auto" the daemon places the model on the GPU with the most free memory.
        gpu = self.memory.choose_gpu() if settings.device == "auto" else None
        admission = _Admission(self.memory, mv.key, f"cuda:{gpu}" if gpu is not None else settings.device.replace("auto", CPU),
                               estimate)
        wakeup = asyncio.Event()  # the queue's: the pool's workers changed
        spec = _worker_spec(found, backend, config, gpu, daemon_socket=self.daemon_socket,
                            metrics_dir=mv.observer.custom_metrics_dir())
        async def admit() -> Refusal | None:
            if cannot_start(mv):  # its files were removed: not a crash of the model (handover.py)
                return Refusal("files", mv.reason)
            return await admission()

        pool = WorkerPool(spec, Scaling.from_settings(settings),
                          observer=mv.observer, admit=admit, on_broken=mv.broken, on_change=wakeup.set)
        async with self.loads:
            file_metadata = await pool.start()
            try:
                return await self._serve(mv, config, pool, file_metadata, admission, wakeup)
            except BaseException:
                await pool.stop()
                raise

    async def _serve(self, mv: ModelVersion, config: ModelConfig, pool: WorkerPool, file_metadata: ModelMetadata,
                     admission: _Admission, wakeup: asyncio.Event) -> Serving:
        settings = config.settings
        metadata = ModelMetadata(
            file_metadata.platform,
            _narrowed(file_metadata.inputs, config.inputs, "inputs"),
            _narrowed(file_metadata.outputs, config.outputs, "outputs"),
            file_metadata.decoupled,
            file_metadata.max_batch_size,
        )
        _check_decoupled(config, metadata)
        if config.sequence_batching is not None:
            metadata = dataclasses.replace(metadata, inputs=_client_inputs(metadata, config.sequence_batching))
        max_batch_size = _batch_limit(metadata, config)
        labels = await asyncio.to_thread(read_labels, _model_dir(mv.found), config.label_files) if config.label_files else {}
        fit = await measure(pool, self.memory.probe, max_batch_size, settings.typical_dim_size)
        if fit is not None:
            log.info("memory fit", model=mv.name, version=mv.version, device=fit.device, base_bytes=fit.base,
                     bytes_per_row=fit.per_row, points=[list(p) for p in fit.points],
                     typical_dim_size=settings.typical_dim_size)
        admission.measured(pool.device, fit)
        tenant = Tenant(
            mv.name, mv.version, pool, max_batch_size=max_batch_size, max_queue_rows=settings.max_queue_rows,
            max_queue_bytes=settings.max_queue_bytes, row_bytes=_row_bytes(metadata, settings.typical_dim_size),
            min_workers=settings.min_workers, device=pool.device, fit=fit, recompute=self.memory.recompute,
            observer=mv.observer,
        )
        if config.sequence_batching is not None:
            queue = SequenceQueue(
                pool, tenant, model=mv.name, output_names=[t.name for t in metadata.outputs],
                input_names=[t.name for t in metadata.inputs], batching=config.sequence_batching,
                max_batch_size=max_batch_size, max_workers=settings.max_workers, wakeup=wakeup, observer=mv.observer,
            )
        else:
            queue = ModelQueue(
                pool, tenant, output_names=[t.name for t in metadata.outputs],
                max_delay_s=settings.max_queue_delay_ms / 1000, wakeup=wakeup, retry_crashed=settings.idempotent,
                cold_start_timeout_s=settings.cold_start_timeout_s, observer=mv.observer,
            )
        self.memory.add(tenant)  # sets the queue's limits
        if settings.min_workers == 0 and settings.idle_timeout_s > 0:
            # Scale-to-zero: the worker that validated and measured the model goes now, not
            # after idle_timeout_s (a directory of many models would otherwise hold one each).
            await pool.scale_to_zero("validated; min_workers = 0", cause="idle")
        queue.start()
        return Serving(config, metadata, max_batch_size, pool, queue, tenant, labels=labels)

    async def _pipeline(self, mv: ModelVersion, config: ModelConfig) -> Serving:
        if not config.pipeline:
            raise LoadFailed(f"{mv.name}/config.toml declares no [[pipeline]] steps and there are no version directories")
        await self.steps.wait_for(config.pipeline, config.settings.load_timeout_s)
        try:
            pipeline = Pipeline.of(mv.name, config, self.steps.metadata_of)
        except PipelineError as e:
            raise LoadFailed(str(e)) from None
        mv.observer.batch_limit(pipeline.max_batch_size)
        metadata = pipeline.metadata
        if config.triton is not None:  # a Triton ensemble: its clients read the platform they configured
            metadata = dataclasses.replace(metadata, platform=config.triton.platform)
        return Serving(config, metadata, pipeline.max_batch_size, pipeline=pipeline)


def _worker_spec(found: Found, backend: str, config: ModelConfig, gpu: int | None, **more) -> WorkerSpec:
    """What the version's workers are told: the settings, the tensors config.toml declares (for
    files that do not carry them), the model's directory and its [parameters]; `more`: other
    BackendSettings (metrics_dir: where its custom metrics go)."""
    return WorkerSpec.of(found.name, found.version, found.path, backend, config.settings,
                         model_dir=_model_dir(found), gpu=gpu,
                         inputs=config.inputs, outputs=config.outputs, parameters=config.parameters,
                         decoupled=config.decoupled, **more,
                         optional_inputs=tuple(sorted(config.optional_inputs)),
                         reshape=model_shapes(config.reshape, config.inputs + config.outputs, config.settings.max_batch_size),
                         model_config=config.triton.config if config.triton else None)


async def _backend(found: Found, config: ModelConfig) -> str:
    """The "module:Class" that runs the version: a config.pbtxt's platform decides (its file
    may be any default_model_filename), else config.toml's `backend`, the file's extension or
    its content (backends/formats.py)."""
    platform = config.triton.platform if config.triton else ""
    if platform in MODEL_FILES:
        name = MODEL_FILES[platform].rpartition(".")[2]
    else:
        if config.backend and config.backend not in (names := backend_names(BACKENDS)):
            raise ConfigError(str(found.config_path or "the load request's config"), "backend",
                              f"unknown backend {config.backend!r}; one of {', '.join(names)}")
        try:
            name = await asyncio.to_thread(detect, found.path, config.backend)
        except FormatError as e:
            raise LoadFailed(str(e)) from None
        except OSError as e:
            raise LoadFailed(f"cannot read {found.path.name}: {e.strerror or e}") from None
    backend = backend_path(name)
    if backend is None:
        raise LoadFailed(f"{found.path.name} needs the {name} backend, which this version of inferd does not have")
    return backend


def _model_dir(found: Found):
    """The model's own directory (models/<name>/: an MLflow model's too), or the directory that
    holds a model file (or model.savedmodel/) without a config.toml."""
    if found.config_path:
        return found.config_path.parent
    return found.path if found.path.is_dir() and found.path.name == found.name else found.path.parent


def _narrowed(file_specs: tuple[TensorSpec, ...], overrides: tuple[TensorSpec, ...], kind: str) -> tuple[TensorSpec, ...]:
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


def _check_decoupled(config: ModelConfig, metadata: ModelMetadata) -> None:
    """config.toml's `decoupled = true` needs a backend that streams (a Python model); a
    decoupled model's requests run alone, each a stream, which sequence batching does not do."""
    if config.decoupled and not metadata.decoupled:
        raise LoadFailed(f"config.toml says decoupled = true, but a {metadata.platform} model answers once per request: "
                         "only a Python model whose infer yields its responses can be decoupled")
    if metadata.decoupled and config.sequence_batching is not None:
        raise LoadFailed("a decoupled model cannot have [sequence_batching]: inferd runs a sequence's requests as rows "
                         "of batches answered once each; remove decoupled or [sequence_batching]")


def _client_inputs(metadata: ModelMetadata, batching) -> tuple[TensorSpec, ...]:
    try:
        return client_inputs(metadata.inputs, batching)
    except ValueError as e:
        raise LoadFailed(str(e)) from None


def _batch_limit(metadata: ModelMetadata, config: ModelConfig) -> int:
    settings = config.settings
    if metadata.max_batch_size is not None:  # the model's own limit (a Triton model's): config.toml may lower it
        if "max_batch_size" in config.explicit:
            return min(settings.max_batch_size, metadata.max_batch_size)
        return metadata.max_batch_size
    if metadata.batchable:
        return settings.max_batch_size
    if "max_batch_size" in config.explicit and settings.max_batch_size > 0:
        raise LoadFailed(
            f"max_batch_size is {settings.max_batch_size} but the model's first dimension is not "
            "dynamic on every input and output, so it cannot batch; set max_batch_size = 0"
        )
    return 0


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
