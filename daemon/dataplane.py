"""The one in-process API every front-end calls. All request validation happens here, once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

import inferd
from inferd.config.errors import ErrorCode, InferdError
from inferd.config.tensors import datatype_of
from inferd.daemon.repository import ModelRepository, ModelVersion
from inferd.scheduler.request import InferRequest, InferResponse

log = structlog.get_logger("inferd.dataplane")

EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]


def _bad(message: str) -> InferdError:
    return InferdError(ErrorCode.INVALID_ARGUMENT, message)


def _as_inferd_error(error: BaseException) -> InferdError:
    """A failure as every front-end reports it: a bug is INTERNAL, with its type and message."""
    return error if isinstance(error, InferdError) else InferdError(ErrorCode.INTERNAL, f"{type(error).__name__}: {error}")


class ServerState:
    """The single source of truth for liveness and readiness."""

    def __init__(self) -> None:
        self.started = False
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.started and not self.draining


class DataPlane:
    def __init__(self, repository: ModelRepository, state: ServerState):
        self.repository = repository
        self.state = state

    # -- health and metadata -----------------------------------------------------------------

    def server_metadata(self) -> dict:
        return {"name": "inferd", "version": inferd.__version__, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: str = "") -> bool:
        """Raises NOT_FOUND for an unknown model or version."""
        return self.state.ready and self.repository.get(name, version).state == "READY"

    def model_metadata(self, name: str, version: str = "") -> dict:
        mv = self.repository.get_ready(name, version)
        versions = sorted(v.version for v in self.repository.models[name].values() if v.state == "READY")
        return {
            "name": name,
            "versions": versions,
            "platform": mv.metadata.platform,
            "inputs": [t.to_dict() for t in mv.metadata.inputs],
            "outputs": [t.to_dict() for t in mv.metadata.outputs],
        }

    def model_config(self, name: str, version: str = "") -> dict:
        """The model's configuration in the shape Triton's clients (and perf_analyzer) read."""
        mv = self.repository.get_ready(name, version)
        batching = mv.max_batch_size > 0
        settings = mv.config.settings

        def dims(spec):
            return list(spec.shape[1:] if batching else spec.shape)

        config = {
            "name": mv.name,
            "platform": mv.metadata.platform,
            "backend": mv.metadata.platform.split("_")[0],
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": mv.max_batch_size,
            "input": [
                {"name": t.name, "data_type": f"TYPE_{'STRING' if t.datatype == 'BYTES' else t.datatype}",
                 "format": "FORMAT_NONE", "dims": dims(t), "is_shape_tensor": False,
                 "allow_ragged_batch": False, "optional": False}
                for t in mv.metadata.inputs
            ],
            "output": [
                {"name": t.name, "data_type": f"TYPE_{'STRING' if t.datatype == 'BYTES' else t.datatype}",
                 "dims": dims(t), "label_filename": "", "is_shape_tensor": False}
                for t in mv.metadata.outputs
            ],
            "dynamic_batching": {
                "preferred_batch_size": [],
                "max_queue_delay_microseconds": int(settings.max_queue_delay_ms * 1000),
                "preserve_ordering": False,
            } if batching else None,
            "instance_group": [{"name": mv.name, "kind": "KIND_CPU", "count": settings.max_workers}],
            "parameters": {},
            "model_transaction_policy": {"decoupled": False},
        }
        return {k: v for k, v in config.items() if v is not None}

    def model_statistics(self, name: str = "", version: str = "") -> dict:
        """Triton-shaped statistics of one model version, or of every READY one."""
        if name:
            versions = [self.repository.get_ready(name, version)]
        else:
            versions = [v for v in self.repository.serving_versions() if v.state == "READY"]
        return {"model_stats": [v.observer.triton_stats() for v in versions]}

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        index = self.repository.index()
        return [row for row in index if row["state"] == "READY"] if ready_only else index

    def _repository_call(self, name: str) -> None:
        if not self.state.ready:
            raise InferdError(ErrorCode.UNAVAILABLE, "the server is not ready (starting or shutting down)")
        if not name:
            raise _bad("a model name is required")

    async def load_model(self, name: str) -> None:
        self._repository_call(name)
        await self.repository.load_model(name)

    async def unload_model(self, name: str) -> None:
        self._repository_call(name)
        await self.repository.unload_model(name)

    # -- inference ---------------------------------------------------------------------------

    async def infer(self, name: str, version: str, request: InferRequest, protocol: str) -> InferResponse:
        mv = self._serving(name, version)
        outputs = await self._run(mv, request, protocol)
        return InferResponse(mv.name, mv.version, outputs, request.id)

    def infer_then(self, name: str, version: str, request: InferRequest, protocol: str,
                   done: Callable[[InferResponse | InferdError], None]) -> Callable[[], None]:
        """`infer` for a caller without a task of its own (the Unix socket): `done` gets the
        response or the InferdError (any other failure arrives as INTERNAL), straight from the
        queue's callbacks, possibly before this returns (a deadline already passed). A request
        refused at once raises InferdError here instead. Returns the function that withdraws
        the request (its caller went away); `done` is then not called."""
        mv = self._serving(name, version)
        if mv.pipeline is not None:  # steps await one another: that takes a task
            task = asyncio.ensure_future(self._run(mv, request, protocol))

            def step_done(task: asyncio.Task) -> None:
                if not task.cancelled():
                    error = task.exception()
                    done(_as_inferd_error(error) if error else InferResponse(mv.name, mv.version, task.result(), request.id))

            task.add_done_callback(step_done)
            return task.cancel
        started = time.perf_counter()

        def finished(outcome) -> None:
            # Counted after the reply is written: the metrics are off the caller's critical path.
            error = outcome if isinstance(outcome, InferdError) else None
            try:
                done(error or InferResponse(mv.name, mv.version, outcome, request.id))
            finally:
                self._count(mv, request, error, protocol, started)

        try:
            ticket = self._enqueue(mv, request, finished)
        except InferdError as e:
            self._count(mv, request, e, protocol, started)
            raise

        def withdraw() -> None:
            if not ticket.answered:
                mv.queue.withdraw(ticket)
                mv.observer.request_done(protocol, "CANCELLED", time.perf_counter() - started)

        return withdraw

    def _serving(self, name: str, version: str) -> ModelVersion:
        if not self.state.ready:
            raise InferdError(ErrorCode.UNAVAILABLE, "the server is not ready (starting or shutting down)")
        return self.repository.get_ready(name, version)

    def _enqueue(self, mv: ModelVersion, request: InferRequest, then=None):
        rows, shape_key = self._validate(mv, request)
        return mv.queue.enqueue(request, rows, shape_key, then)

    async def _run(self, mv: ModelVersion, request: InferRequest, protocol: str) -> dict:
        """Validate and run one request on a version (through its queue, or its pipeline's steps)."""
        started = time.perf_counter()
        try:
            if mv.pipeline is not None:
                self._validate(mv, request)
                outputs = await mv.pipeline.run(request, self._run_step)
            else:
                ticket = self._enqueue(mv, request)
                try:
                    outputs = await ticket.future
                except asyncio.CancelledError:
                    mv.queue.withdraw(ticket)  # the caller went away
                    raise
        except InferdError as e:
            self._count(mv, request, e, protocol, started)
            raise
        except BaseException:  # cancelled (client went away) or a bug: still counted
            mv.observer.request_done(protocol, "CANCELLED", time.perf_counter() - started)
            raise
        self._count(mv, request, None, protocol, started)
        return outputs

    def _count(self, mv: ModelVersion, request: InferRequest, error: InferdError | None, protocol: str,
               started: float) -> None:
        """A finished request in the metrics (and an internal failure in the log)."""
        if error is None:
            return mv.observer.request_done(protocol, "OK", time.perf_counter() - started)
        if error.code is ErrorCode.RESOURCE_EXHAUSTED:
            self.repository.metrics.rejected.labels(mv.name, mv.version, "queue_full").inc()
        elif error.code is ErrorCode.INTERNAL:
            log.error("inference failed", model=mv.name, version=mv.version, request_id=request.id, error=error.message)
        mv.observer.request_done(protocol, error.code.name, time.perf_counter() - started)

    async def _run_step(self, step, request: InferRequest) -> dict:
        """A pipeline's step: a request to the step's model, counted under protocol "pipeline"."""
        return await self._run(self.repository.get_ready(step.model, step.version), request, "pipeline")

    @staticmethod
    def _validate(mv: ModelVersion, request: InferRequest) -> tuple[int, tuple]:
        """Check names, datatypes and shapes against the model; return (rows, batching key)."""
        specs = mv.input_specs
        inputs = request.inputs
        if inputs.keys() != specs.keys():
            unknown = sorted(inputs.keys() - specs.keys())
            if unknown:
                raise _bad(f"unknown input {unknown[0]!r} for model {mv.name!r}; inputs are {', '.join(specs)}")
            raise _bad(f"missing input {sorted(specs.keys() - inputs.keys())[0]!r} for model {mv.name!r}")
        rows = 1
        batching = mv.max_batch_size > 0
        shape_key = []
        for spec in specs.values():
            array = inputs[spec.name]
            datatype = datatype_of(array)
            if datatype != spec.datatype:
                raise _bad(f"input {spec.name!r} has datatype {datatype}, the model expects {spec.datatype}")
            if not spec.accepts_shape(array.shape):
                raise _bad(f"input {spec.name!r} has shape {list(array.shape)}, the model expects {list(spec.shape)} (-1: any)")
            if batching:
                if not shape_key:
                    rows = array.shape[0]
                elif array.shape[0] != rows:
                    raise _bad(f"inputs disagree on the batch size: {rows} rows and {array.shape[0]} rows in {spec.name!r}")
                shape_key.append(array.shape[1:])
        if batching:
            if rows < 1:
                raise _bad("the batch dimension must be at least 1")
            if rows > mv.max_batch_size:
                raise _bad(f"batch of {rows} rows exceeds the model's max_batch_size {mv.max_batch_size}")
        if request.outputs is not None:
            for out in request.outputs:
                if out not in mv.output_names:
                    raise _bad(f"unknown output {out!r} for model {mv.name!r}; outputs are {', '.join(sorted(mv.output_names))}")
            if len(set(request.outputs)) != len(request.outputs):
                raise _bad("an output is requested twice")
        return rows, tuple(shape_key)
