"""The HTTP listeners' connection limits (guard.py) wired into aiohttp: sites that serve through
a `GuardedListener`, and a middleware that tells each connection when a request is in progress
and hands it the request's body stream (a body that does not arrive within
`server.body_timeout_s` fails the handler's read: 408)."""

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


class HttpListener(GuardedListener):
    def body_timed_out(self) -> Exception:
        """What the handler's read of a body that is too slow raises: 408 (the error middleware
        maps HTTP exceptions to its error shape), and the connection closes."""
        return web.HTTPRequestTimeout(
            text=f"the request body did not arrive within {self.limits.body_timeout_s:g} s (server.body_timeout_s)")


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
        guard.begin(request.content if request.body_exists else None)
        try:
            response = await handler(request)
            if guard.body_expired:  # 408: close, rather than read the rest of the body as a request
                request.content.feed_eof()
                response.force_close()
            return response
        finally:
            guard.end()

    return track
