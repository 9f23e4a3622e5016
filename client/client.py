"""Client and AsyncClient: the daemon's API as Python calls, over its Unix socket (msgpack) or
over HTTP (KServe V2). Both speak the Unix protocol's operations; the HTTP transports translate
them, so requests are built and results decoded here, once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping

import numpy as np

from inferd.client.errors import InferdClientError
from inferd.client.http import AsyncHttpTransport, HttpTransport
from inferd.client.paths import default_socket_path
from inferd.client.unix import AsyncUnixTransport, UnixTransport
from inferd.common.codec import from_raw, to_raw
from inferd.common.errors import InferdError
from inferd.common.tensors import datatype_of


def _transport(socket, url, token, cafile, timeout, unix, http):
    if socket is not None and url is not None:
        raise ValueError("give socket= or url=, not both")
    if url is not None:
        return http(url, token, cafile, timeout)
    if token is not None or cafile is not None:
        raise ValueError("token= and cafile= are for url=: on the Unix socket, the socket file's group is the access control")
    return unix(socket or default_socket_path(), timeout)


def _tensor(name: str, value) -> dict:
    array = np.asarray(value)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    try:  # (str elements travel as UTF-8; to_raw says so)
        return {"name": name, "datatype": datatype_of(array), "shape": list(array.shape), "data": to_raw(array)}
    except (ValueError, TypeError) as e:  # no V2 datatype; a BYTES element that is neither bytes nor str
        raise InferdClientError("invalid_argument", f"input {name!r}: {e}") from None


def _infer_fields(model: str, inputs: Mapping, outputs, version: str, request_id: str, timeout_ms,
                  sequence: tuple = (0, False, False), parameters: Mapping | None = None) -> dict:
    fields = {"model": model, "inputs": [_tensor(name, value) for name, value in inputs.items()]}
    if parameters:  # the request's parameters, as V2's (str, int, float or bool values)
        fields["parameters"] = dict(parameters)
    if sequence[0]:  # a stateful model's sequence (docs/sequences.md)
        fields.update(zip(("sequence_id", "sequence_start", "sequence_end"), sequence, strict=True))
    if outputs is not None:
        fields["outputs"] = [outputs] if isinstance(outputs, str) else list(outputs)
    if version:
        fields["version"] = version
    if request_id:
        fields["request_id"] = request_id
    if timeout_ms is not None:
        fields["timeout_ms"] = int(timeout_ms)
    return fields


def _outputs(reply: dict) -> dict[str, np.ndarray]:
    """Arrays over the reply's bytes, not copies."""
    try:
        return {t["name"]: from_raw(t["name"], t["datatype"], t["shape"], t["data"]) for t in reply["outputs"]}
    except InferdError as e:
        raise InferdClientError("internal", f"malformed infer reply: {e.message}") from None


def _model_fields(model: str | None, version: str) -> dict:
    if model is None:
        return {}
    return {"model": model, "version": version} if version else {"model": model}


class Client:
    """Blocking client on one connection, reused across calls. Not for several threads at once:
    give each thread its own.

    `socket`: the daemon's Unix socket (default: `default_socket_path()`); `url`: its HTTP address
    instead, e.g. "http://127.0.0.1:8000", with `token` sent as a bearer token and `cafile` the
    certificate(s) to trust for an https:// daemon beyond the system's; `timeout`: seconds
    to wait for the daemon before a call fails with "deadline_exceeded" (None: no limit).
    """

    def __init__(self, *, socket: str | None = None, url: str | None = None, token: str | None = None,
                 cafile: str | None = None, timeout: float | None = None):
        self._transport = _transport(socket, url, token, cafile, timeout, UnixTransport, HttpTransport)

    @property
    def connections_opened(self) -> int:
        """Connections this client has opened so far (one, unless the daemon dropped it)."""
        return self._transport.connections_opened

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Iterable[str] | None = None,
              version: str = "", request_id: str = "", timeout_ms: int | None = None, *,
              sequence_id: int | str = 0, sequence_start: bool = False, sequence_end: bool = False,
              parameters: Mapping | None = None) -> dict[str, np.ndarray]:
        """Run `model` on named arrays; returns the outputs by name (all of them, or `outputs`),
        as read-only arrays over the reply (copy one to change it). BYTES tensors are object
        arrays of bytes; str elements are sent as UTF-8. `timeout_ms` (Unix socket only): a
        request not answered after this long fails with "deadline_exceeded" (if it was still
        queued, it never runs). `sequence_id` (non-zero), `sequence_start`, `sequence_end`: a
        request of a stateful model's sequence. `parameters`: the request's own (str keys; str,
        int, float or bool values), as V2's request parameters."""
        fields = _infer_fields(model, inputs, outputs, version, request_id, timeout_ms,
                               (sequence_id, sequence_start, sequence_end), parameters)
        return _outputs(self._transport.call("infer", fields))

    def stream(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Iterable[str] | None = None,
               version: str = "", request_id: str = "", timeout_ms: int | None = None, *,
               parameters: Mapping | None = None) -> Iterator[dict[str, np.ndarray]]:
        """As `infer`, for a model that may answer 0..N times (a decoupled model; an ordinary
        one answers once): yields each response's outputs as the model sends it. Unix socket
        only. Leaving the loop early closes the connection, which stops the model's run."""
        if not hasattr(self._transport, "stream"):
            raise InferdClientError("unimplemented", "streams need the Unix socket (or HTTP generate_stream, gRPC ModelStreamInfer)")
        fields = _infer_fields(model, inputs, outputs, version, request_id, timeout_ms, parameters=parameters)
        for reply in self._transport.stream("infer", fields):
            if reply.get("outputs"):  # (a decoupled model's end carries none)
                yield _outputs(reply)

    def live(self) -> bool:
        return self._transport.call("live", {})["live"]

    def ready(self, model: str | None = None, version: str = "") -> bool:
        """The server's readiness, or a model's (an unknown model raises "not_found")."""
        return self._transport.call("ready", _model_fields(model, version))["ready"]

    def server_metadata(self) -> dict:
        return self._transport.call("server_metadata", {})

    def model_metadata(self, model: str, version: str = "") -> dict:
        """name, versions, platform, inputs and outputs ({name, datatype, shape}, -1 = dynamic)."""
        return self._transport.call("model_metadata", _model_fields(model, version))

    def models(self) -> list[dict]:
        """Every model version: {name, version, state, reason?}."""
        return self._transport.call("models", {})["models"]

    def load(self, model: str) -> None:
        """Load `model` (again) from the models directory; returns once it serves."""
        self._transport.call("load", {"model": model})

    def unload(self, model: str) -> None:
        """Stop serving `model`; returns once its accepted requests are answered."""
        self._transport.call("unload", {"model": model})

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """asyncio client. On the Unix socket, concurrent calls share one connection: they are
    pipelined, and each gets its own reply whatever order they finish in. A cancelled call
    leaves the connection to the others. Arguments as for `Client`."""

    def __init__(self, *, socket: str | None = None, url: str | None = None, token: str | None = None,
                 cafile: str | None = None, timeout: float | None = None):
        self._transport = _transport(socket, url, token, cafile, timeout, AsyncUnixTransport, AsyncHttpTransport)

    @property
    def connections_opened(self) -> int:
        """Connections this client has opened so far."""
        return self._transport.connections_opened

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Iterable[str] | None = None,
                    version: str = "", request_id: str = "", timeout_ms: int | None = None, *,
                    sequence_id: int | str = 0, sequence_start: bool = False,
                    sequence_end: bool = False, parameters: Mapping | None = None) -> dict[str, np.ndarray]:
        """As `Client.infer`."""
        fields = _infer_fields(model, inputs, outputs, version, request_id, timeout_ms,
                               (sequence_id, sequence_start, sequence_end), parameters)
        return _outputs(await self._transport.call("infer", fields))

    async def stream(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Iterable[str] | None = None,
                     version: str = "", request_id: str = "", timeout_ms: int | None = None, *,
                     parameters: Mapping | None = None) -> AsyncIterator[dict[str, np.ndarray]]:
        """As `Client.stream`: `async for outputs in client.stream(...)`. Leaving the loop early
        cancels the request (its model stops); the connection goes on serving the other calls."""
        if not hasattr(self._transport, "stream"):
            raise InferdClientError("unimplemented", "streams need the Unix socket (or HTTP generate_stream, gRPC ModelStreamInfer)")
        fields = _infer_fields(model, inputs, outputs, version, request_id, timeout_ms, parameters=parameters)
        replies = self._transport.stream("infer", fields)
        try:
            async for reply in replies:
                if reply.get("outputs"):
                    yield _outputs(reply)
        finally:
            await replies.aclose()

    async def live(self) -> bool:
        return (await self._transport.call("live", {}))["live"]

    async def ready(self, model: str | None = None, version: str = "") -> bool:
        return (await self._transport.call("ready", _model_fields(model, version)))["ready"]

    async def server_metadata(self) -> dict:
        return await self._transport.call("server_metadata", {})

    async def model_metadata(self, model: str, version: str = "") -> dict:
        return await self._transport.call("model_metadata", _model_fields(model, version))

    async def models(self) -> list[dict]:
        return (await self._transport.call("models", {}))["models"]

    async def load(self, model: str) -> None:
        await self._transport.call("load", {"model": model})

    async def unload(self, model: str) -> None:
        await self._transport.call("unload", {"model": model})

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
