"""The shared-memory extensions' REST endpoints (v2/systemsharedmemory, v2/cudasharedmemory):
register, unregister and status of regions, which inference requests then name
(inferd.daemon.shared_memory)."""

from __future__ import annotations

import orjson
from aiohttp import web

from inferd.common.errors import invalid


def _json(doc) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


async def _body(request: web.Request) -> dict:
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise invalid("the register request must be a JSON object")
    return doc


def add_routes(app: web.Application, dataplane_key) -> None:
    def regions(request: web.Request, kind: str):
        dataplane = request.app[dataplane_key]
        return dataplane.system_shared_memory if kind == "system" else dataplane.cuda_shared_memory

    def status(kind: str):
        async def handler(request: web.Request) -> web.Response:
            return _json(regions(request, kind).status(request.match_info.get("name", "")))
        return handler

    def unregister(kind: str):
        async def handler(request: web.Request) -> web.Response:
            regions(request, kind).unregister(request.match_info.get("name", ""))
            return _json({})
        return handler

    async def register_system(request: web.Request) -> web.Response:
        doc = await _body(request)
        request.app[dataplane_key].system_shared_memory.register(
            request.match_info["name"], doc.get("key"), doc.get("offset", 0), doc.get("byte_size"))
        return _json({})

    async def register_cuda(request: web.Request) -> web.Response:
        doc = await _body(request)
        request.app[dataplane_key].cuda_shared_memory.register(
            request.match_info["name"], doc.get("raw_handle"), doc.get("device_id"), doc.get("byte_size"))
        return _json({})

    for kind, register in (("system", register_system), ("cuda", register_cuda)):
        base = f"/v2/{kind}sharedmemory"
        region = base + "/region/{name}"
        app.router.add_get(base + "/status", status(kind))
        app.router.add_get(region + "/status", status(kind))
        app.router.add_post(base + "/unregister", unregister(kind))
        app.router.add_post(region + "/unregister", unregister(kind))
        app.router.add_post(region + "/register", register)
