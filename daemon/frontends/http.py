"""The KServe V2 / Open Inference Protocol REST front-end (aiohttp).

Handlers only decode, call the data plane, and encode; errors are `{"error": "..."}` with the
status from the one table below, and anything else a handler raises (a bug) is a 500 with a
short message (inferd.common.errors.unexpected).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inferd.common.errors import ErrorCode, InferdError, invalid, unexpected
from inferd.daemon.dataplane import DataPlane
from inferd.daemon.frontends import http_codec
from inferd.daemon.frontends.auth import HTTP_HEALTH, Access

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
ACCESS = web.AppKey("access", Access)


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
    if request.app[DATAPLANE].state.draining:
        response.force_close()  # let clients move on instead of reusing a connection that is closing
    return response


def _model_args(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200 if request.app[DATAPLANE].state.ready else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return _json(request.app[DATAPLANE].server_metadata())


async def model_metadata(request: web.Request) -> web.Response:
    return _json(request.app[DATAPLANE].model_metadata(*_model_args(request)))


async def model_ready(request: web.Request) -> web.Response:
    return web.Response(status=200 if request.app[DATAPLANE].model_ready(*_model_args(request)) else 503)


async def infer(request: web.Request) -> web.Response:
    body = await request.read()
    req, fmt = http_codec.decode_request(body, request.headers.get(http_codec.HEADER_LENGTH))
    name, version = _model_args(request)
    response = await request.app[DATAPLANE].infer(name, version, req, "http")
    payload, header_length = http_codec.encode_response(response, fmt)
    if header_length is None:
        return web.Response(body=payload, content_type="application/json")
    return web.Response(
        body=payload,
        content_type="application/octet-stream",
        headers={http_codec.HEADER_LENGTH: str(header_length)},
    )


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
    await request.app[DATAPLANE].load_model(request.match_info["model"])
    return web.Response(status=200)


async def repository_unload(request: web.Request) -> web.Response:
    await request.app[DATAPLANE].unload_model(request.match_info["model"])
    return web.Response(status=200)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(dataplane: DataPlane, registry, max_request_bytes: int, access: Access,
              outer: Sequence = ()) -> web.Application:
    """`outer` middlewares run before the token check and error mapping (the listeners'
    connection tracking: http_limits.py)."""
    app = web.Application(middlewares=[*outer, _access_and_errors], client_max_size=max_request_bytes)
    app[DATAPLANE] = dataplane
    app[REGISTRY] = registry
    app[ACCESS] = access
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
        app.router.add_get(prefix + "/config", model_config)
        app.router.add_get(prefix + "/stats", model_stats)
    app.router.add_get("/metrics", metrics)
    return app
