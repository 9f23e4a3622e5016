"""pb_utils' requests and responses: InferenceRequest (the requests a model's execute gets,
and the ones it builds to call other models: exec / async_exec, Triton's BLS), InferenceResponse,
InferenceResponseSender (a decoupled model's responses) and the iterator of a decoupled BLS
call's responses. The calls themselves are inferd.backends.triton.bls's (imported when first
made: a model that calls nothing never loads it)."""

from __future__ import annotations

import json
import threading

from inferd.backends.triton.pb_tensors import Tensor, TritonError, TritonModelException

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2


class InferenceResponse:
    """A response: output tensors, or an error (TritonError), and parameters."""

    def __init__(self, output_tensors=None, error: TritonError | None = None, parameters: dict | None = None) -> None:
        tensors = [] if output_tensors is None else output_tensors
        if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, Tensor) for t in tensors):
            raise TritonModelException('"output_tensors" must be a list of pb_utils.Tensor')
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException('"error" must be a pb_utils.TritonError')
        self._tensors, self._error = list(tensors), error
        self._parameters = json.dumps(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return self._parameters


class InferenceResponseSender:
    """A decoupled model's way to answer one request: send(response) any number of times
    (from any thread, also after execute returned), then send(flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL)."""

    def __init__(self, deliver, cancelled: threading.Event) -> None:
        self._deliver, self._cancelled = deliver, cancelled
        self._closed = False
        self._lock = threading.Lock()

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException("send() takes a pb_utils.InferenceResponse")
        if response is None and not flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise TritonModelException("Inference Response object is needed when the response flags is not final")
        with self._lock:
            if self._closed:
                raise TritonModelException("Unable to send response. Response sender has been closed.")
            self._closed = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            self._deliver(response, flags)

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()


class InferenceRequest:
    """A request: the model's (built by the shim, one per caller) or one the model builds to
    call another model (Triton's constructor, keyword arguments)."""

    def __init__(self, request_id: str = "", correlation_id=0, inputs=None, requested_output_names=None,
                 model_name: str = "", model_version: int = -1, flags: int = 0, timeout: int = 0,
                 preferred_memory=None, trace=None, parameters: dict | None = None) -> None:
        if inputs is None or requested_output_names is None:
            raise TritonModelException("InferenceRequest needs inputs and requested_output_names")
        if not isinstance(correlation_id, (int, str)):
            raise TritonModelException("Correlation ID must be integer or string")
        self._inputs = list(inputs)
        self._request_id, self._correlation_id = str(request_id), correlation_id
        self._requested = list(requested_output_names)
        # (bytes too: a name read from a BYTES input, which Triton's C++ binding takes as a string)
        self.model_name = model_name.decode() if isinstance(model_name, bytes) else str(model_name)
        self.model_version = int(model_version)
        self._flags, self._timeout = int(flags), int(timeout)
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(parameters or {})
        self._sender: InferenceResponseSender | None = None  # the shim's requests have one
        self._sender_used = False
        self._cancelled = threading.Event()

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self):
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = int(flags)

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return self._parameters

    def requested_output_names(self) -> list[str]:
        return self._requested

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            raise TritonModelException("only the requests a model is given have a response sender")
        self._sender_used = True
        return self._sender

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def set_release_flags(self, flags: int) -> None:
        """Accepted (Triton's request rescheduling is not supported: a request is released when answered)."""

    # -- calls to other models (BLS) ---------------------------------------------------------

    def _call(self) -> dict:
        seconds = self._timeout / 1e6 if self._timeout else None  # Triton's timeout is in microseconds
        return {"model": self.model_name, "version": "" if self.model_version < 0 else str(self.model_version),
                "inputs": {t.name(): t.as_numpy() for t in self._inputs},
                "outputs": self._requested or None, "parameters": json.loads(self._parameters),
                "timeout_s": seconds}

    def exec(self, decoupled: bool = False):
        """Run the request on its model: its InferenceResponse (an error response when the call
        fails), or with decoupled=True an iterator of the responses, the last one empty."""
        from inferd.backends.triton import bls

        if decoupled:
            try:
                stream = bls.stream(**self._call())
            except bls.BlsError as e:
                return ResponseIterator(iter([_error_response(e)]))
            return ResponseIterator(_wrapped_stream(bls, stream))
        try:
            return _response(bls.infer(**self._call()))
        except bls.BlsError as e:
            return _error_response(e)

    async def async_exec(self, decoupled: bool = False):
        """exec's awaitable form (for a model whose execute is `async def`)."""
        from inferd.backends.triton import bls

        if decoupled:
            responses = []
            try:
                async for outputs in bls.async_stream(**self._call()):
                    responses.append(_response(outputs))
            except bls.BlsError as e:
                responses.append(_error_response(e))
            else:
                responses.append(InferenceResponse())
            return ResponseIterator(iter(responses))
        try:
            return _response(await bls.async_infer(**self._call()))
        except bls.BlsError as e:
            return _error_response(e)


class ResponseIterator:
    """A decoupled call's responses, in order; the last has no outputs (Triton's final flag)."""

    def __init__(self, responses) -> None:
        self._responses = responses

    def __iter__(self):
        return self

    def __next__(self) -> InferenceResponse:
        return next(self._responses)

    def cancel(self) -> None:
        close = getattr(self._responses, "close", None)
        if close is not None:
            close()


def _response(outputs: dict) -> InferenceResponse:
    return InferenceResponse([Tensor(name, array) for name, array in outputs.items()])


def _error_response(e) -> InferenceResponse:
    return InferenceResponse(error=TritonError.named(getattr(e, "message", str(e)), getattr(e, "code", "INTERNAL")))


def _wrapped_stream(bls, stream):
    try:
        for outputs in stream:
            yield _response(outputs)
    except bls.BlsError as e:
        yield _error_response(e)
        return
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    yield InferenceResponse()
