"""The HTTP listeners' connection limits (guard.py) wired into aiohttp: sites that serve through
a `GuardedListener`, a middleware that tells each connection when a request is in progress, and
one that gives a request's body `server.body_timeout_s` to arrive."""

from __future__ import annotations

import asyncio

from aiohttp import web

from inferd.daemon.frontends.guard import Guard, GuardedListener


class GuardedSockSite(web.SockSite):
    """A SockSite (TCP, or a Unix socket from systemd) whose connections `listener` guards."""

    def __init__(self, runner: web.BaseRunner, sock, listener: GuardedListener, **kwargs):
        super().__init__(runner, sock, **kwargs)
        self.listener = listener

    async def start(self) -> None:
        await web.BaseSite.start(self)
        self._server = await asyncio.get_running_loop().create_server(
            self.listener.wrap(self._runner.server), sock=self._sock, ssl=self._ssl_context, backlog=self._backlog)


class GuardedUnixSite(web.UnixSite):
    def __init__(self, runner: web.BaseRunner, path: str, listener: GuardedListener, **kwargs):
        super().__init__(runner, path, **kwargs)
        self.listener = listener

    async def start(self) -> None:
        await web.BaseSite.start(self)
        self._server = await asyncio.get_running_loop().create_unix_server(
            self.listener.wrap(self._runner.server), self._path, ssl=self._ssl_context, backlog=self._backlog)


class HttpConnections:
    """The guards of every HTTP listener, found from a request's transport."""

    def __init__(self) -> None:
        self.listeners: list[GuardedListener] = []

    def of(self, request: web.Request) -> Guard | None:
        transport = request.transport
        for listener in self.listeners:
            guard = listener.connections.get(transport)
            if guard is not None:
                return guard
        return None


def tracking(connections: HttpConnections):
    """The outermost middleware: from the head's arrival to the handler's response, the
    connection has a request in progress (neither idle nor half-sent)."""

    @web.middleware
    async def track(request: web.Request, handler):
        guard = connections.of(request)
        if guard is None:
            return await handler(request)
        guard.begin()
        try:
            return await handler(request)
        finally:
            guard.end()

    return track


def body_deadline(timeout_s: float):
    """Read the body (aiohttp keeps it for the handler's read()) within `timeout_s`; a body
    that does not arrive in time is a 408 and the connection closes."""

    @web.middleware
    async def read_body(request: web.Request, handler):
        if timeout_s and request.body_exists and request.can_read_body:
            try:
                async with asyncio.timeout(timeout_s):
                    await request.read()
            except TimeoutError:
                response = web.json_response(
                    {"error": f"the request body did not arrive within {timeout_s:g} s (server.body_timeout_s)"},
                    status=408)
                response.force_close()  # the rest of the body would be read as the next request
                return response
        return await handler(request)

    return read_body
