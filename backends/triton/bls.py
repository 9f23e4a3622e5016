"""Business logic scripting (BLS): a model running in a worker calls other models of the same
daemon, through the daemon's Unix socket, so that its requests are queued and batched with the
callee's other traffic, exactly as a client's would be.

    from inferd.backends.triton import bls
    outputs = bls.infer("other_model", "", {"INPUT0": x}, None, {}, None)

The worker is told the daemon's socket at load (`configure`, from BackendSettings.daemon_socket);
a daemon without a Unix socket leaves it "" and every call fails UNAVAILABLE. Blocking calls
share a connection per worker process (one per call in progress: a caller that runs a stream
and calls another model meanwhile takes a second); asyncio calls share one per event loop.
Errors are BlsError with Triton's code names (pb_utils.TritonError's) and the daemon's message.
The client package is imported at the first call: workers that never call pay nothing.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping

import numpy as np

# The daemon's error codes (docs/unix-socket-protocol.md) as Triton's (TRITONSERVER_Error_Code):
# Triton answers a full queue and an expired request timeout with UNAVAILABLE too.
TRITON_CODES = {
    "invalid_argument": "INVALID_ARG",
    "not_found": "NOT_FOUND",
    "failed_precondition": "INVALID_ARG",
    "resource_exhausted": "UNAVAILABLE",
    "unavailable": "UNAVAILABLE",
    "deadline_exceeded": "UNAVAILABLE",
    "cancelled": "CANCELLED",
    "unimplemented": "UNSUPPORTED",
    "unauthenticated": "UNAVAILABLE",
    "internal": "INTERNAL",
}
NO_SOCKET = ("this model cannot call other models: the daemon serves no Unix socket "
             "(server.socket is \"\"), which is how a worker reaches it")


class BlsError(Exception):
    """A failed call to another model: `code` is Triton's name for it ("NOT_FOUND",
    "INVALID_ARG", "UNAVAILABLE", "INTERNAL", "CANCELLED", "UNSUPPORTED", "UNKNOWN"), `message`
    the daemon's."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)  # both in args: the error pickles
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


_socket = ""
_idle: list = []  # this process's blocking clients between calls
_idle_lock = threading.Lock()
_owner = os.getpid()  # a forked child must not share its parent's sockets
_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> AsyncClient


def configure(daemon_socket: str) -> None:
    """The daemon's Unix socket ("" = none), told to the worker at load. Connections to a
    previous socket are dropped."""
    global _socket
    path = os.path.abspath(daemon_socket) if daemon_socket else ""
    if path != _socket:
        _drop_idle()
        _async_clients.clear()
    _socket = path


def _drop_idle() -> None:
    with _idle_lock:
        clients, _idle[:] = list(_idle), []
    for client in clients:
        client.close()


def _error(e: Exception) -> BlsError:
    """The client's error (or a bad argument caught before sending) as Triton's."""
    code = getattr(e, "code", None)
    if code is None:
        return BlsError("INVALID_ARG", str(e))
    return BlsError(TRITON_CODES.get(code, "UNKNOWN"), e.message)


def _request(model: str, version: str, inputs: Mapping, outputs, parameters, timeout_s) -> dict:
    """Client.infer's keyword arguments, checked here so that a bad call says what is wrong."""
    if not _socket:
        raise BlsError("UNAVAILABLE", NO_SOCKET)
    if not isinstance(model, str) or not model:
        raise BlsError("INVALID_ARG", "the model to call must be named (a non-empty str)")
    if not isinstance(inputs, Mapping):
        raise BlsError("INVALID_ARG", f"inputs must map names to arrays, got {type(inputs).__name__}")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise BlsError("INVALID_ARG", f"parameters must be a dict, got {type(parameters).__name__}")
    if timeout_s is not None and (not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool)
                                  or not timeout_s > 0):
        raise BlsError("INVALID_ARG", f"timeout_s must be positive seconds or None, got {timeout_s!r}")
    if outputs is not None:
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    # Triton's model_version -1 (and "") is the serving one
    request = {"model": model, "inputs": inputs, "outputs": outputs,
               "version": "" if version in (None, "", -1) else str(version)}
    if timeout_s is not None:
        request["timeout_ms"] = max(1, round(timeout_s * 1000))  # the daemon answers at the deadline
    if parameters:
        request["parameters"] = dict(parameters)
    return request


def _writable(outputs: dict) -> dict[str, np.ndarray]:
    """The reply's arrays are read-only views of its bytes; a model may change what it gets."""
    return {name: np.array(a) for name, a in outputs.items()}


class _Lease:
    """A blocking client for one call: an idle one of this process, else a new one."""

    def __enter__(self):
        global _owner
        from inferd.client import Client

        with _idle_lock:
            if _owner != os.getpid():  # forked: the parent's sockets are the parent's
                _idle.clear()
                _owner = os.getpid()
            self.client = _idle.pop() if _idle else Client(socket=_socket)
        return self.client

    def __exit__(self, *exc) -> None:
        # Given back whatever happened: a transport that lost its connection, or found it out
        # of step, closed it and connects again on its next call.
        with _idle_lock:
            _idle.append(self.client)


def infer(model: str, version: str = "", inputs: Mapping[str, np.ndarray] | None = None, outputs=None,
          parameters: Mapping | None = None, timeout_s: float | None = None) -> dict[str, np.ndarray]:
    """Run `model` (`version`: "" = the one serving) on `inputs`; its outputs by name (all, or
    `outputs`). Raises BlsError."""
    from inferd.client import InferdClientError

    request = _request(model, version, inputs or {}, outputs, parameters, timeout_s)
    try:
        with _Lease() as client:
            return _writable(client.infer(**request))
    except (InferdClientError, TypeError, ValueError) as e:
        raise _error(e) from None


def stream(model: str, version: str = "", inputs: Mapping[str, np.ndarray] | None = None, outputs=None,
           parameters: Mapping | None = None, timeout_s: float | None = None) -> Iterator[dict[str, np.ndarray]]:
    """A decoupled model's responses, each as it comes (an ordinary model's one response).
    Leaving early stops the callee's run. Raises BlsError: a bad argument at once, the rest
    while iterating."""
    return _streamed(_request(model, version, inputs or {}, outputs, parameters, timeout_s))


def _streamed(request: dict) -> Iterator[dict[str, np.ndarray]]:
    from inferd.client import InferdClientError

    try:
        with _Lease() as client:
            responses = client.stream(**request)
            try:
                for response in responses:
                    yield _writable(response)
            finally:  # (left early: the connection closes before the client is given back)
                responses.close()
    except (InferdClientError, TypeError, ValueError) as e:
        raise _error(e) from None


def _async_client():
    """This event loop's client (one connection, pipelined)."""
    from inferd.client import AsyncClient

    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = AsyncClient(socket=_socket)
    return client


async def async_infer(model: str, version: str = "", inputs: Mapping[str, np.ndarray] | None = None, outputs=None,
                      parameters: Mapping | None = None, timeout_s: float | None = None) -> dict[str, np.ndarray]:
    """As `infer`, awaited: concurrent calls of one event loop share its connection."""
    from inferd.client import InferdClientError

    request = _request(model, version, inputs or {}, outputs, parameters, timeout_s)
    try:
        return _writable(await _async_client().infer(**request))
    except (InferdClientError, TypeError, ValueError) as e:
        raise _error(e) from None


def async_stream(model: str, version: str = "", inputs: Mapping[str, np.ndarray] | None = None, outputs=None,
                 parameters: Mapping | None = None, timeout_s: float | None = None) -> AsyncIterator[dict[str, np.ndarray]]:
    """As `stream`: `async for outputs in bls.async_stream(...)`."""
    return _async_streamed(_request(model, version, inputs or {}, outputs, parameters, timeout_s))


async def _async_streamed(request: dict) -> AsyncIterator[dict[str, np.ndarray]]:
    from inferd.client import InferdClientError

    try:
        responses = _async_client().stream(**request)
        try:
            async for response in responses:
                yield _writable(response)
        finally:  # (left early: the daemon is told to stop the callee)
            await responses.aclose()
    except (InferdClientError, TypeError, ValueError) as e:
        raise _error(e) from None
