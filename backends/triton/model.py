"""The runner of a Triton Python model (a model.py defining `TritonPythonModel`), served
unchanged in inferd's Python worker. inferd.backends.python hands such a module to it.

As Triton's Python backend does: the configuration is config.pbtxt's (settings.model_config),
else config.toml's tensors, completed by the class's static auto_complete_config(ModelConfig)
when it has one; initialize(args) gets Triton's args; execute(requests) gets one
pb_utils.InferenceRequest per caller and returns one InferenceResponse each (an error response,
or an exception, fails its callers alone; a response without a requested output or with an
output of another kind of datatype is the model's error; execute may instead return None and send each
request's one response through its response sender). A decoupled model
(model_transaction_policy.decoupled) answers through each request's response sender, from
execute or from its own threads after execute returned; the request's stream ends at
TRITONSERVER_RESPONSE_COMPLETE_FINAL. `async def execute` runs on an event loop of the
worker's. finalize() runs at unload.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import queue
import sys
import threading
from pathlib import Path

import numpy as np
import structlog

from inferd.backends import decoupled as decoupled_runs
from inferd.backends.base import BackendInputError, BatchRequests
from inferd.backends.python import ModelCodeError, ModelOutputError
from inferd.backends.settings import BackendSettings
from inferd.backends.triton import pb_utils
from inferd.backends.triton.pb_config import ModelConfig, normalized, using_decoupled_model_transaction_policy
from inferd.common.tensors import DATATYPES, ModelMetadata, TensorSpec, as_bytes, object_tensor

log = structlog.get_logger("inferd.triton")
MODULE_NAME = "triton_python_backend_utils"


def install() -> None:
    """Make `import triton_python_backend_utils` find pb_utils (before a model.py runs)."""
    sys.modules.setdefault(MODULE_NAME, pb_utils)


class TritonResponseError(ModelCodeError):
    """The model answered a request with an error response (its TritonError's message)."""


class TritonInvalidArgument(TritonResponseError, BackendInputError):
    """An error response with Triton's INVALID_ARG code: the caller's fault."""


def _response_error(error: pb_utils.TritonError) -> TritonResponseError:
    cls = TritonInvalidArgument if error.code() == pb_utils.TritonError.INVALID_ARG else TritonResponseError
    return cls(error.message())


def _datatype(triton_type: str, where: str) -> str:
    name = triton_type.removeprefix("TYPE_") if isinstance(triton_type, str) else ""
    name = "BYTES" if name == "STRING" else name
    if name not in DATATYPES:
        raise RuntimeError(f"{where} has data_type {triton_type!r}, which inferd does not serve")
    return name


def _specs(config: dict, kind: str) -> tuple[TensorSpec, ...]:
    """config's `input`/`output` as inferd's tensors: a leading -1 when the model batches."""
    batch = (-1,) if config["max_batch_size"] > 0 else ()
    specs = []
    for t in config[kind]:
        where = f"{kind} {t.get('name')!r}"
        # With a reshape the model itself sees that shape (backends/reshape.py maps it to dims for callers).
        dims = tuple(int(d) for d in (t["reshape"].get("shape", ()) if "reshape" in t else t.get("dims", ())))
        if "name" not in t or "data_type" not in t:
            raise RuntimeError(f"the model's configuration has an {kind} without a name or a data_type")
        specs.append(TensorSpec(t["name"], _datatype(t["data_type"], where), batch + dims))
    return tuple(specs)


def _from_settings(settings: BackendSettings, name: str) -> dict:
    """A Triton configuration from config.toml when there is no config.pbtxt: its tensors
    (whole shapes, so max_batch_size 0 until auto_complete_config says otherwise)."""

    def tensors(specs):
        return [{"name": t.name, "data_type": "TYPE_STRING" if t.datatype == "BYTES" else f"TYPE_{t.datatype}",
                 "dims": list(t.shape)} for t in specs]

    config = {"name": name, "backend": "python", "max_batch_size": 0,
              "input": tensors(settings.inputs), "output": tensors(settings.outputs),
              "parameters": {k: {"string_value": str(v)} for k, v in settings.parameters.items()}}
    if settings.decoupled:
        config["model_transaction_policy"] = {"decoupled": True}
    return config


def _names(path: Path) -> tuple[str, str, str]:
    """(model name, version, the model's directory) of models/<name>/<version>/model.py (or its
    default_model_filename); else of <name>.py beside the other models: version "1"."""
    if path.parent.name.isdigit():
        return path.parent.parent.name, path.parent.name, str(path.parent.parent)
    return path.stem, "1", str(path.parent)


_SEQUENCE = ("sequence_id", "sequence_start", "sequence_end")


def _request_parameters(parameters: dict) -> tuple[dict, int | str, int]:
    """A caller's parameters as Triton gives them to a request: the sequence ones as its
    correlation id and flags, the rest (bytes as text: they travel as JSON) as its parameters()."""
    own = {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v
           for k, v in parameters.items() if k not in _SEQUENCE}
    correlation_id = parameters.get("sequence_id", 0)
    if not isinstance(correlation_id, (int, str)) or isinstance(correlation_id, bool):
        correlation_id = 0
    flags = (pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if parameters.get("sequence_start") else 0) | (
        pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if parameters.get("sequence_end") else 0)
    return own, correlation_id, flags


async def _awaited(awaitable):
    return await awaitable


class TritonRunner:
    """One TritonPythonModel in one worker; PythonBackend delegates to it."""

    def __init__(self, path: Path, settings: BackendSettings, cls: type) -> None:
        self.path, self.settings, self.cls = path, settings, cls
        self.name, self.version, self.repository = _names(path)
        self.model = None
        self.config: dict = {}
        self.outputs: dict[str, TensorSpec] = {}
        self.max_batch_size = 0
        self.decoupled = False
        self._loop: asyncio.AbstractEventLoop | None = None  # an `async def execute`'s, in its own thread
        self._loop_thread: threading.Thread | None = None

    # -- load ----------------------------------------------------------------------------------

    def load(self) -> ModelMetadata:
        raw = self.settings.model_config
        config = normalized(raw) if raw is not None else _from_settings(self.settings, self.name)
        config["name"] = config.get("name") or self.name
        self.config = config = self._auto_completed(config)
        self.max_batch_size = config["max_batch_size"]
        self.decoupled = using_decoupled_model_transaction_policy(config)
        inputs, outputs = _specs(config, "input"), _specs(config, "output")
        if not outputs:
            raise RuntimeError("the model declares no outputs: give it a config.pbtxt with `output`, or add them "
                               "in TritonPythonModel.auto_complete_config")
        self.outputs = {t.name: t for t in outputs}
        if self.settings.daemon_socket:
            from inferd.backends.triton import bls

            bls.configure(self.settings.daemon_socket)
        self.model = self.cls()
        if callable(getattr(self.model, "initialize", None)):
            try:
                self.model.initialize(self._args())
            except Exception as e:
                raise ModelCodeError(f"{self.path.name}: initialize() raised {type(e).__name__}: {e}") from e
        if not callable(getattr(self.model, "execute", None)):
            raise RuntimeError(f"{self.path.name}: TritonPythonModel has no execute(self, requests) method")
        return ModelMetadata("python", inputs, outputs, self.decoupled, max_batch_size=self.max_batch_size)

    def _auto_completed(self, config: dict) -> dict:
        complete = getattr(self.cls, "auto_complete_config", None)
        if complete is None:
            return config
        try:
            result = complete(ModelConfig(json.loads(json.dumps(config))))
        except Exception as e:
            raise ModelCodeError(f"{self.path.name}: auto_complete_config() raised {type(e).__name__}: {e}") from e
        if not isinstance(result, ModelConfig):
            raise RuntimeError(f"{self.path.name}: auto_complete_config() must return the pb_utils.ModelConfig "
                               f"it was given, not {type(result).__name__}")
        return normalized(result.as_dict())

    def _args(self) -> dict[str, str]:
        """initialize()'s args, as Triton gives them (every value a string)."""
        groups = self.config.get("instance_group") or [{}]
        gpu = groups[0].get("kind") == "KIND_GPU" or (groups[0].get("kind") is None and self.settings.gpu is not None)
        return {
            "model_config": json.dumps(self.config),
            "model_instance_kind": "GPU" if gpu else "CPU",
            "model_instance_name": f"{self.name}_0",
            "model_instance_device_id": str(self.settings.gpu or 0),
            "model_repository": self.repository,
            "model_version": self.version,
            "model_name": self.name,
        }

    # -- requests ------------------------------------------------------------------------------

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str], requests: BatchRequests | None = None):
        """One entry per caller of `requests` (its outputs, or the exception that fails it);
        without `requests` the batch is one caller, answered with a dict (or raised)."""
        if self.decoupled:  # warm-up and profiling only: requests go through responses()
            return decoupled_runs.first_responses(self, inputs, outputs)
        callers = self._requests(inputs, outputs, requests)
        answers = self._answers(callers, outputs)
        if requests is None:
            if isinstance(answers[0], Exception):
                raise answers[0]
            return answers[0]
        return answers

    def _requests(self, inputs, outputs, requests: BatchRequests | None) -> list[tuple[pb_utils.InferenceRequest, int]]:
        """(the request, its rows) of each caller: its slice of the batch."""
        if requests is None:
            rows = next(iter(inputs.values())).shape[0] if inputs and self.max_batch_size > 0 else 0
            return [(self._request(inputs, outputs, {}, ""), rows)]
        ids = requests.ids or ("",) * len(requests.rows)
        callers, start = [], 0
        for rows, parameters, request_id in zip(requests.rows, requests.parameters, ids):
            part = {n: a[start:start + rows] for n, a in inputs.items()} if self.max_batch_size > 0 else inputs
            callers.append((self._request(part, outputs, parameters, request_id), rows))
            start += rows
        return callers

    def _request(self, inputs, outputs, parameters: dict, request_id: str) -> pb_utils.InferenceRequest:
        """A caller's request, with its response sender (what it sends lands in request._channel)."""
        tensors = [pb_utils.Tensor(name, array) for name, array in inputs.items()]
        own, correlation_id, flags = _request_parameters(parameters or {})
        request = pb_utils.InferenceRequest(request_id=request_id, correlation_id=correlation_id, inputs=tensors,
                                            requested_output_names=list(outputs), model_name=self.name,
                                            flags=flags, parameters=own)
        channel: queue.SimpleQueue = queue.SimpleQueue()
        request._channel = channel
        request._sender = pb_utils.InferenceResponseSender(lambda response, flags: channel.put((response, flags)),
                                                           request._cancelled)
        return request

    def _call_execute(self, requests: list[pb_utils.InferenceRequest]):
        result = self.model.execute(requests)
        if inspect.isawaitable(result):  # `async def execute`: on the runner's event loop, which
            if self._loop is None:       # runs on in its thread (tasks the model starts go on)
                self._loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(target=self._loop.run_forever, name="triton-execute-loop",
                                                     daemon=True)
                self._loop_thread.start()
            result = asyncio.run_coroutine_threadsafe(_awaited(result), self._loop).result()
        return result

    def _answers(self, callers: list, outputs: list[str]) -> list:
        requests = [request for request, _ in callers]
        try:
            responses = self._call_execute(requests)
        except Exception as e:
            error = e if isinstance(e, BackendInputError) else ModelCodeError(
                f"{self.path.name}: execute() raised {type(e).__name__}: {e}")
            error.__cause__ = e
            return [error] * len(callers)
        if responses is None and any(request._sender_used for request in requests):
            responses = [self._sent(request) for request in requests]
        if not isinstance(responses, (list, tuple)) or len(responses) != len(callers):
            got = f"{len(responses)} responses" if isinstance(responses, (list, tuple)) else type(responses).__name__
            error = ModelOutputError(f"{self.path.name}: execute() must return a list of one InferenceResponse per "
                                     f"request: got {got} for {len(callers)} requests")
            return [error] * len(callers)
        answers = []
        for response, (_, rows) in zip(responses, callers):
            try:
                answers.append(self._outputs(response, outputs, rows))
            except Exception as e:
                answers.append(e)
        return answers

    def _sent(self, request: pb_utils.InferenceRequest):
        """The one response a model that is not decoupled sent a request through its response
        sender (Triton's default mode: execute returns None), once it has sent the final flag."""
        if not request._sender_used:
            return ModelOutputError(f"{self.path.name}: execute() returned None and sent this request no response")
        sent = []
        while True:
            response, flags = request._channel.get()
            if response is not None:
                sent.append(response)
            if flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                break
        if len(sent) != 1:
            return ModelOutputError(f"{self.path.name}: sent {len(sent)} responses to a request; a model that is not "
                                    "decoupled sends one (model_transaction_policy { decoupled: true } for more)")
        return sent[0]

    def _outputs(self, response, outputs: list[str], rows: int | None) -> dict[str, np.ndarray]:
        """A response's requested outputs, checked against the configuration."""
        if isinstance(response, Exception):
            raise response
        if not isinstance(response, pb_utils.InferenceResponse):
            raise ModelOutputError(f"{self.path.name}: execute() returned a {type(response).__name__} where a "
                                   "pb_utils.InferenceResponse belongs")
        if response.has_error():
            raise _response_error(response.error())
        tensors = {t.name(): t.as_numpy() for t in response.output_tensors()}
        return {name: self._output(name, tensors, rows) for name in outputs}

    def _output(self, name: str, tensors: dict, rows: int | None) -> np.ndarray:
        spec = self.outputs[name]
        if name not in tensors:
            raise ModelOutputError(f"{self.path.name}: the response has no output {name!r}")
        array = tensors[name]
        if spec.datatype == "BYTES":
            if array.dtype != object and array.dtype.kind not in "SU":
                raise ModelOutputError(f"{self.path.name}: output {name!r} is {array.dtype}, the configuration says "
                                       "TYPE_STRING (a numpy object array of bytes)")
            array = object_tensor([as_bytes(x) for x in array.reshape(-1).tolist()], array.shape)
        elif array.dtype != DATATYPES[spec.datatype]:
            # Triton would send the model's own datatype; inferd answers in the configured one,
            # converting within a kind (int64 -> int32, as Triton's examples need), never across.
            if not np.can_cast(array.dtype, DATATYPES[spec.datatype], casting="same_kind"):
                raise ModelOutputError(f"{self.path.name}: output {name!r} is {array.dtype}, the configuration "
                                       f"says TYPE_{spec.datatype} ({DATATYPES[spec.datatype]})")
            array = array.astype(DATATYPES[spec.datatype])
        if not spec.accepts_shape(array.shape):
            raise ModelOutputError(f"{self.path.name}: output {name!r} has shape {list(array.shape)}, the "
                                   f"configuration says {list(spec.shape)}")
        if rows and self.max_batch_size > 0 and array.shape[0] != rows:
            raise ModelOutputError(f"{self.path.name}: output {name!r} has {array.shape[0]} rows for a request "
                                   f"of {rows}")
        return array

    def responses(self, inputs: dict[str, np.ndarray], outputs: list[str], parameters: dict | None = None):
        """A decoupled model's responses to one request (backends/decoupled.py pulls them),
        as its response sender delivers them, until the final flag. `parameters`: the request's."""
        request = self._request(inputs, outputs, parameters or {}, "")
        channel, cancelled = request._channel, request._cancelled
        finished = False
        try:
            try:
                result = self._call_execute([request])
            except Exception as e:
                yield from self._sent_before(channel, outputs)  # (what the model sent before it raised)
                raise ModelCodeError(f"{self.path.name}: execute() raised {type(e).__name__}: {e}") from e
            if result is not None:
                raise ModelOutputError(f"{self.path.name}: a decoupled model's execute() returns None and sends its "
                                       "responses with request.get_response_sender()")
            while True:
                response, flags = channel.get()
                if response is not None:
                    yield self._outputs(response, outputs, None)
                if flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                    finished = True
                    return
        finally:  # failed or cancelled (the caller went away): the model's is_cancelled() says so
            if not finished:
                cancelled.set()

    def _sent_before(self, channel: queue.SimpleQueue, outputs: list[str]):
        """The responses already in a request's channel (its model's execute raised after sending them)."""
        while True:
            try:
                response, _ = channel.get_nowait()
            except queue.Empty:
                return
            if response is not None:
                yield self._outputs(response, outputs, None)

    # -- unload --------------------------------------------------------------------------------

    def unload(self) -> None:
        model, self.model = self.model, None
        if model is not None and callable(getattr(model, "finalize", None)):
            try:
                model.finalize()
            except Exception as e:
                log.warning("the model's finalize() raised", error=f"{type(e).__name__}: {e}", exc_info=e)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(5)  # (a task the model left blocking its loop: the worker exits anyway)
            if not self._loop_thread.is_alive():
                self._loop.close()
            self._loop = None
