"""The HTTP transport: the Unix-socket protocol's operations as KServe V2 REST calls, tensors in
the binary data extension both ways. `build` and `parse` translate; the transports only move
bytes."""

from __future__ import annotations

import http.client
import json
import ssl
from urllib.parse import quote, urlsplit

from inferd.client.errors import InferdClientError

HEADER_LENGTH = "Inference-Header-Content-Length"


def _model_path(fields: dict) -> str:
    path = "/v2/models/" + quote(fields["model"], safe="")
    if fields.get("version"):
        path += "/versions/" + quote(fields["version"], safe="")
    return path


def _infer_body(fields: dict) -> tuple[bytes, dict]:
    inputs = fields["inputs"]
    doc = {
        "inputs": [
            {"name": t["name"], "datatype": t["datatype"], "shape": t["shape"],
             "parameters": {"binary_data_size": len(t["data"])}}
            for t in inputs
        ],
        "parameters": {**fields.get("parameters", {}), "binary_data_output": True},
    }
    if "outputs" in fields:
        doc["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in fields["outputs"]]
    if "request_id" in fields:
        doc["id"] = fields["request_id"]
    if "timeout_ms" in fields:  # the V2 REST convention (Triton's): microseconds
        doc["parameters"]["timeout"] = fields["timeout_ms"] * 1000
    for key in ("sequence_id", "sequence_start", "sequence_end"):  # a stateful model's sequence
        if key in fields:
            doc["parameters"][key] = fields[key]
    header = json.dumps(doc).encode()
    body = b"".join([header, *(t["data"] for t in inputs)])
    return body, {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}


def build(op: str, fields: dict) -> tuple[str, str, bytes | None, dict]:
    """method, path, body and headers of an operation."""
    if op == "live":
        return "GET", "/v2/health/live", None, {}
    if op == "ready":
        return "GET", _model_path(fields) + "/ready" if "model" in fields else "/v2/health/ready", None, {}
    if op == "server_metadata":
        return "GET", "/v2", None, {}
    if op == "model_metadata":
        return "GET", _model_path(fields), None, {}
    if op == "models":
        return "POST", "/v2/repository/index", None, {}
    if op in ("load", "unload"):
        return "POST", "/v2/repository/models/" + quote(fields["model"], safe="") + "/" + op, None, {}
    if op == "infer":
        return "POST", _model_path(fields) + "/infer", *_infer_body(fields)
    raise ValueError(f"unknown operation {op!r}")


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip()


def _infer_result(headers, body: bytes) -> dict:
    n = int(headers.get(HEADER_LENGTH, len(body)))
    doc = json.loads(body[:n])
    binary = memoryview(body)[n:]
    outputs = []
    offset = 0
    for o in doc["outputs"]:
        size = o["parameters"]["binary_data_size"]
        outputs.append({"name": o["name"], "datatype": o["datatype"], "shape": o["shape"],
                        "data": binary[offset : offset + size]})
        offset += size
    return {"model": doc["model_name"], "version": doc["model_version"], "outputs": outputs}


def parse(op: str, status: int, headers, body: bytes) -> dict:
    """The reply in the Unix protocol's form, or the error raised."""
    if op in ("live", "ready") and status in (200, 503):
        return {op: status == 200}
    if status != 200:
        raise InferdClientError.from_http_status(status, _error_message(body))
    try:
        if op == "infer":
            return _infer_result(headers, body)
        if op in ("load", "unload"):
            return {}
        doc = json.loads(body)
        return {"models": doc} if op == "models" else doc
    except (ValueError, KeyError, TypeError) as e:
        raise InferdClientError("internal", f"malformed {op} reply: {e!r}") from None


def _split_url(url: str) -> tuple[str, str]:
    """scheme://host:port, and the path prefix (the daemon behind a proxy at a sub-path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url must look like http://host:port, got {url!r}")
    return f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")


def _auth(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _unreachable(url: str, error) -> InferdClientError:
    return InferdClientError("unavailable", f"cannot reach inferd at {url}: {error}")


def _timed_out(url: str, timeout: float | None) -> InferdClientError:
    return InferdClientError("deadline_exceeded", f"no reply from inferd at {url} within {timeout} s")


class _IdleConnectionDropped(Exception):
    """A reused keep-alive connection was closed by the server before it answered."""


class HttpTransport:
    """Blocking: one keep-alive connection (http.client), reopened when the server drops it."""

    def __init__(self, url: str, token: str | None, cafile: str | None, timeout: float | None):
        self.url = url
        self.timeout = timeout
        self.connections_opened = 0
        origin, self._prefix = _split_url(url)
        netloc = urlsplit(origin).netloc
        if origin.startswith("https:"):
            self._conn = http.client.HTTPSConnection(netloc, timeout=timeout, context=ssl.create_default_context(cafile=cafile))
        else:
            self._conn = http.client.HTTPConnection(netloc, timeout=timeout)
        self._headers = _auth(token)

    def call(self, op: str, fields: dict) -> dict:
        method, path, body, headers = build(op, fields)
        request = (method, self._prefix + path, body, {**self._headers, **headers})
        try:
            status, response_headers, data = self._exchange(*request)
        except _IdleConnectionDropped:
            status, response_headers, data = self._exchange(*request)
        return parse(op, status, response_headers, data)

    def _exchange(self, method: str, path: str, body: bytes | None, headers: dict):
        reused = self._conn.sock is not None
        try:
            self._conn.request(method, path, body, headers)  # connects when it has no socket
            self.connections_opened += not reused
            response = self._conn.getresponse()
            return response.status, response.headers, response.read()
        except (BrokenPipeError, ConnectionResetError) as e:  # RemoteDisconnected included
            self._conn.close()
            if reused:
                raise _IdleConnectionDropped from None
            raise _unreachable(self.url, e) from None
        except TimeoutError:
            self._conn.close()
            raise _timed_out(self.url, self.timeout) from None
        except (OSError, http.client.HTTPException) as e:
            self._conn.close()
            raise _unreachable(self.url, e) from None
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()


class AsyncHttpTransport:
    """aiohttp, imported here only: its session pools keep-alive connections for concurrent callers."""

    def __init__(self, url: str, token: str | None, cafile: str | None, timeout: float | None):
        self.url = url
        self.timeout = timeout
        self.connections_opened = 0
        origin, prefix = _split_url(url)
        self._base = origin + prefix
        self._ssl = ssl.create_default_context(cafile=cafile) if origin.startswith("https:") else None
        self._headers = _auth(token)
        self._session = None

    def _open_session(self):
        import aiohttp

        async def opened(session, context, params) -> None:
            self.connections_opened += 1

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(opened)
        return aiohttp.ClientSession(headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout),
                                     trace_configs=[trace], connector=aiohttp.TCPConnector(ssl=self._ssl or True))

    async def call(self, op: str, fields: dict) -> dict:
        import aiohttp

        if self._session is None:
            self._session = self._open_session()  # here: aiohttp wants a running loop
        method, path, body, headers = build(op, fields)
        try:
            async with self._session.request(method, self._base + path, data=body, headers=headers) as response:
                data = await response.read()
        except TimeoutError:
            raise _timed_out(self.url, self.timeout) from None
        except aiohttp.ClientError as e:
            raise _unreachable(self.url, e) from None
        return parse(op, response.status, response.headers, data)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
