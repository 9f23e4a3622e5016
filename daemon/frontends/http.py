"""The KServe V2 / Open Inference Protocol REST front-end (aiohttp).

Handlers only decode, call the data plane, and encode; errors are `{"error": "..."}` with the
status from the one table below, and anything else a handler raises (a bug) is a 500 with a
short message (inferd.common.errors.unexpected).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence

import orjson
import structlog
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inferd.common.codec import ValueBudget
from inferd.common.errors import ErrorCode, InferdError, invalid, unexpected
from inferd.daemon.dataplane import DataPlane
from inferd.daemon.frontends import http_codec, http_generate, http_shm, json_offload, load_codec
from inferd.daemon.frontends.auth import HTTP_HEALTH, Access
from inferd.daemon.requests import RequestLimits

log = structlog.get_logger("inferd.http")

HTTP_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.FAILED_PRECONDITION: 400,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.CANCELLED: 499,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNIMPLEMENTED: 501,
    ErrorCode.INTERNAL: 500,
}

DATAPLANE = web.AppKey("dataplane", DataPlane)
REGISTRY = web.AppKey("metrics_registry", object)
MODEL_METRICS = web.AppKey("model_metrics", object)  # () -> bytes: models' own families, after the daemon's
ACCESS = web.AppKey("access", Access)
LIMITS = web.AppKey("limits", RequestLimits)
WRITE_SLICE = 1 << 20  # bytes of a big response body handed to the socket per write
ABANDONED = "inferd.body_abandoned"  # (a request's own key: its body was not read to the end)
BIG = "inferd.big_json"  # (a request's own key: a big JSON body admitted to the decoders)
DECODERS = web.AppKey("json_decoders", json_offload.JsonDecoders)


def _json(doc, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def error_response(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
    response = _json({"error": message}, status)
    if retry_after_s is None and status == 429:
        retry_after_s = 1
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return response


@web.middleware
async def _access_and_errors(request: web.Request, handler):
    """The token check, then one error shape for whatever the handler raises."""
    access = request.app[ACCESS]
    if access.required and not access.allows("http", request.headers.get("Authorization"), request.path in HTTP_HEALTH):
        response = error_response(401, "unauthenticated")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    try:
        response = await handler(request)
    except InferdError as e:
        response = error_response(HTTP_STATUS[e.code], e.message, e.retry_after_s)
    except web.HTTPException as e:  # unknown route, wrong method, body too large: same error shape
        if e.status < 400:
            raise
        response = error_response(e.status, e.reason if e.text is None or e.text.startswith(str(e.status)) else e.text)
    except Exception as e:
        error = unexpected(e, "HTTP request failed", method=request.method, path=request.path)
        response = error_response(HTTP_STATUS[error.code], error.message)
    if ABANDONED in request:
        response.force_close()  # let clients move on instead of reusing a connection that is closing
    return response


async def _close_when_leaving(request: web.Request, response: web.StreamResponse) -> None:
    """From SIGTERM on every answer says Connection: close, streams and errors too: a client's
    next request opens a new connection, which a balancer sends to a server that stays."""
    if request.app[DATAPLANE].state.closing:
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"  # (the headers were prepared before this hook)


def _model_args(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


# Health answers carry the Open Inference Protocol's bodies ({"live": bool}, {"ready": bool},
# {"name", "ready"}): the KServe SDK reads them; Triton's clients read the status only.
async def live(request: web.Request) -> web.Response:
    return _json({"live": True})


async def ready(request: web.Request) -> web.Response:
    is_ready = request.app[DATAPLANE].state.ready
    return _json({"ready": is_ready}, 200 if is_ready else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return _json(request.app[DATAPLANE].server_metadata())


async def model_metadata(request: web.Request) -> web.Response:
    return _json(request.app[DATAPLANE].model_metadata(*_model_args(request)))


async def model_ready(request: web.Request) -> web.Response:
    name, version = _model_args(request)
    is_ready = request.app[DATAPLANE].model_ready(name, version)
    return _json({"name": name, "ready": is_ready}, 200 if is_ready else 503)


def _body_limit(json_length: int | None, limits: RequestLimits, compressed: bool) -> tuple[int, str]:
    """The most bytes this body may have (-1: none, refused at once), and the 413 message past
    it. JSON is parsed on the loop only up to server.max_structured_bytes; a whole-JSON body
    past it may go to a decoder process (json_offload.py) when there are any, unless it is
    compressed: aiohttp inflates on the loop, and six 80 KiB gzip bodies inflating to 64 MiB
    each held it for 2 s."""
    json_hint = f"server.max_structured_bytes ({limits.max_structured_bytes:,} bytes); send big tensors in binary form"
    if json_length is None and compressed:
        return limits.max_structured_bytes, f"a compressed JSON body inflates past {json_hint}, uncompressed"
    if json_length is None and limits.json_decoders == 0:
        return limits.max_structured_bytes, f"a JSON body is larger than {json_hint} (server.json_decoders is 0)"
    if json_length is not None and json_length > limits.max_structured_bytes:
        return -1, f"the JSON header is larger than {json_hint}"
    return limits.max_request_bytes, f"the request body is larger than server.max_request_bytes ({limits.max_request_bytes:,} bytes)"


async def _read_body(request: web.Request, json_length: int | None, limits: RequestLimits) -> bytearray:
    """The body, refused (413) as soon as it passes its limit. aiohttp inflates a gzip or
    deflate body 64 KiB at a time as it is read; a compressed body is abandoned there (no more
    inflating), a plain one is read to its end and dropped by aiohttp, so that the client, still
    sending, sees the answer. A bytearray: orjson and the tensors' views read it without a copy.
    A whole-JSON body that grows past max_structured_bytes is admitted to the decoders first
    (request[BIG] set; 503 when they are full), so only so many big bodies are held at once."""
    compressed = "Content-Encoding" in request.headers
    limit, message = _body_limit(json_length, limits, compressed)
    too_large = web.HTTPRequestEntityTooLarge(max(limit, 0), limit + 1, text=message)
    if limit < 0 or (not compressed and (request.content_length or 0) > limit):
        raise _refused(request, too_large, compressed)
    offloaded = json_length is None and limits.json_decoders > 0 and not compressed
    if offloaded and not compressed and (request.content_length or 0) > limits.max_structured_bytes:
        _admit(request, compressed)
    body = bytearray()
    try:
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > limit:
                raise _refused(request, too_large, compressed)
            if offloaded and len(body) > limits.max_structured_bytes and BIG not in request:
                _admit(request, compressed)
    except web.RequestPayloadError as e:  # e.g. a gzip body that does not inflate
        raise _refused(request, invalid(f"the request body cannot be read: {str(e).splitlines()[-1].strip()[:100]}"), True) from None
    return body


def _admit(request: web.Request, compressed: bool) -> None:
    try:
        request.app[DECODERS].admit()
    except InferdError as e:
        raise _refused(request, e, compressed) from None
    request[BIG] = True


def _refused(request: web.Request, error: Exception, abandon: bool) -> Exception:
    """`error`, having stopped reading the body if `abandon`. Otherwise aiohttp reads (and
    inflates) the rest for up to 10 s after the answer, and logs a body that cannot be read as
    an unhandled exception; marked ended instead, the connection closes after the answer."""
    if abandon:
        request.content.feed_eof()
        request[ABANDONED] = True
    return error


async def infer(request: web.Request) -> web.Response:
    limits = request.app[LIMITS]
    budget = ValueBudget(limits.max_value_elements)
    # The regions its shared-memory inputs come from are held until the request is done.
    with request.app[DATAPLANE].system_shared_memory.input_reader(budget, limits.max_request_bytes) as read_region:
        return await _infer(request, limits, budget, read_region)


async def _infer(request: web.Request, limits, budget: ValueBudget, read_region) -> web.Response:
    json_length = http_codec.json_length(request.headers.get(http_codec.HEADER_LENGTH))
    try:
        body = await _read_body(request, json_length, limits)
        if BIG in request:
            req, fmt = await request.app[DECODERS].decode(body)
        else:
            req, fmt = http_codec.decode_request(body, json_length, budget, read_region)
    except json_offload.TooCostly as e:
        raise web.HTTPRequestEntityTooLarge(len(body), len(body), text=str(e)) from None
    finally:
        if request.pop(BIG, False):
            request.app[DECODERS].release()
    del body
    name, version = _model_args(request)
    dataplane = request.app[DATAPLANE]
    with dataplane.system_shared_memory.output_targets(req.output_parameters) as targets:
        response = await dataplane.infer(name, version, req, "http")
        written = targets.write(response.outputs) if targets else None  # (outputs put in regions)
    parts, header_length = await http_codec.encode_response(response, fmt, written)
    headers = {} if header_length is None else {http_codec.HEADER_LENGTH: str(header_length)}
    content_type = "application/json" if header_length is None else "application/octet-stream"
    if len(parts) == 1:
        return web.Response(body=parts[0], content_type=content_type, headers=headers)
    if sum(map(len, parts)) < WRITE_SLICE:
        return web.Response(body=b"".join(parts), content_type=content_type, headers=headers)
    return await _write_in_parts(request, parts, content_type, headers)


async def _write_in_parts(request: web.Request, parts: list[bytes], content_type: str, headers: dict) -> web.StreamResponse:
    """A big body written WRITE_SLICE bytes at a time, each write waiting for the socket to
    drain: no copy of the whole body, and no single step on the loop that grows with it."""
    response = web.StreamResponse(headers=headers)
    response.content_type = content_type
    response.content_length = sum(map(len, parts))
    await response.prepare(request)
    for part in parts:
        view = memoryview(part)
        for start in range(0, len(view), WRITE_SLICE):
            await response.write(view[start : start + WRITE_SLICE])
    await response.write_eof()
    return response


async def generate(request: web.Request) -> web.Response:
    return await http_generate.generate(request, request.app[DATAPLANE], ValueBudget(request.app[LIMITS].max_value_elements))


async def generate_stream(request: web.Request) -> web.StreamResponse:
    return await http_generate.generate_stream(request, request.app[DATAPLANE], ValueBudget(request.app[LIMITS].max_value_elements))


async def model_config(request: web.Request) -> web.Response:
    return _json(request.app[DATAPLANE].model_config(*_model_args(request)))


async def model_stats(request: web.Request) -> web.Response:
    name, version = _model_args(request) if "model" in request.match_info else ("", "")
    return _json(request.app[DATAPLANE].model_statistics(name, version))


async def repository_index(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        ready = bool(orjson.loads(body).get("ready", False)) if body.strip() else False
    except (orjson.JSONDecodeError, AttributeError):
        raise invalid('expected a JSON object such as {"ready": true}') from None
    return _json(await request.app[DATAPLANE].repository_index(ready))


async def repository_load(request: web.Request) -> web.Response:
    name, dataplane = request.match_info["model"], request.app[DATAPLANE]
    small = request.app[LIMITS].max_structured_bytes
    if (request.content_length or 0) > small and not dataplane.accept_model_files:
        raise invalid(f"a load request without model files takes at most {small} bytes")
    # (request.read() stops at client_max_size, max_structured_bytes: model files need more)
    limit = request.app[LIMITS].max_request_bytes if dataplane.accept_model_files else small
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(limit, len(body), text=f"a load request takes at most {limit} bytes")
    # Model files make a big body: decoded (JSON, base64) in a thread, off the loop's turn.
    parameters = await asyncio.to_thread(load_codec.http_load_parameters, body) if len(body) > small else \
        load_codec.http_load_parameters(body)
    await dataplane.load_model(name, parameters)
    return web.Response(status=200)


async def repository_unload(request: web.Request) -> web.Response:
    await request.app[DATAPLANE].unload_model(request.match_info["model"])
    return web.Response(status=200)


async def metrics(request: web.Request) -> web.Response:
    # The models' own are read from their workers' files: in a thread, off the loop.
    body = generate_latest(request.app[REGISTRY]) + await asyncio.to_thread(request.app[MODEL_METRICS])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(dataplane: DataPlane, registry, limits: RequestLimits, access: Access,
              outer: Sequence = (), model_metrics: Callable[[], bytes] = lambda: b"") -> web.Application:
    """`outer` middlewares run before the token check and error mapping (the listeners'
    connection tracking: http_limits.py); `model_metrics`: the text /metrics adds to the registry's."""
    app = web.Application(middlewares=[*outer, _access_and_errors], client_max_size=limits.max_structured_bytes)
    app[DATAPLANE] = dataplane
    app[LIMITS] = limits
    app[REGISTRY] = registry
    app[MODEL_METRICS] = model_metrics
    app[ACCESS] = access
    app[DECODERS] = json_offload.JsonDecoders(limits)
    app.on_cleanup.append(lambda app: app[DECODERS].close())
    app.on_response_prepare.append(_close_when_leaving)
    model = "/v2/models/{model}"
    versioned = model + "/versions/{version}"
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/models/stats", model_stats)
    app.router.add_post("/v2/repository/index", repository_index)
    app.router.add_post("/v2/repository/models/{model}/load", repository_load)
    app.router.add_post("/v2/repository/models/{model}/unload", repository_unload)
    for prefix in (model, versioned):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_post(prefix + "/infer", infer)
        app.router.add_post(prefix + "/generate", generate)
        app.router.add_post(prefix + "/generate_stream", generate_stream)
        app.router.add_get(prefix + "/config", model_config)
        app.router.add_get(prefix + "/stats", model_stats)
    app.router.add_get("/metrics", metrics)
    http_shm.add_routes(app, DATAPLANE)
    return app
