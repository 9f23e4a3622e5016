"""The daemon's listeners: HTTP (and HTTP on a Unix socket), gRPC and the msgpack Unix socket,
bound from the config or taken from systemd socket activation, each with its connection limits
(frontends/guard.py); stopped in two steps (stop accepting, then close) so that the drain
happens in between."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import Callable
from pathlib import Path

import grpclib.server
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from inferd.config.settings import AuthSection, ServerSection, parse_address, socket_path
from inferd.daemon.dataplane import DataPlane
from inferd.daemon.frontends.auth import Access, tls_context
from inferd.daemon.frontends.grpc import InferenceServicer, answer_unknown_methods, require_token
from inferd.daemon.frontends.grpc_health import HealthServicer
from inferd.daemon.frontends.grpc_reflection import with_reflection
from inferd.daemon.frontends.guard import GuardedListener, Limits, fit_to_descriptors
from inferd.daemon.frontends.h2_limits import GrpcListener, finish_calls
from inferd.daemon.frontends.http import build_app
from inferd.daemon.frontends.http_limits import GuardedSockSite, GuardedUnixSite, HttpConnections, HttpListener, tracking
from inferd.daemon.frontends.unix import UnixFrontEnd
from inferd.daemon.operations import systemd
from inferd.daemon.requests import RequestLimits

log = structlog.get_logger("inferd")

NAMES = ("http", "grpc", "socket", "http_socket")  # FileDescriptorName= of the socket units
CLOSE_GRACE_S = 3.0  # after the drain: for answers to be written and read before connections are cut


class ListenError(OSError):
    """A listener could not be bound: says which one, where, and why."""

    def __init__(self, frontend: str, address: str, cause: OSError):
        self.frontend, self.address, self.reason = frontend, address, cause.strerror or str(cause)
        super().__init__(f"cannot listen for {frontend} on {address}: {self.reason}")
        self.errno = cause.errno


def _bind_tcp(frontend: str, address: str) -> socket.socket:
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ListenError(frontend, address, e) from None
    sock.set_inheritable(False)
    return sock


def _limits(server: ServerSection, max_connections: int, partial_timeout_s: float) -> Limits:
    return Limits(max_connections, partial_timeout_s, server.idle_timeout_s, server.write_buffer_bytes)


def _address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Listeners:
    def __init__(self, server: ServerSection, auth: AuthSection, dataplane: DataPlane, registry: CollectorRegistry,
                 access: Access, model_metrics: Callable[[], bytes] = lambda: b""):
        self.server, self.auth = server, auth
        self.dataplane = dataplane
        self.access = access
        self.addresses: dict[str, str] = {}  # front-end -> where it listens
        self._http = HttpConnections()
        app = build_app(dataplane, registry, RequestLimits.of(server), access, outer=[tracking(self._http)],
                        model_metrics=model_metrics)
        self.runner = web.AppRunner(
            app, handle_signals=False, access_log=None, handler_cancellation=True,
            shutdown_timeout=CLOSE_GRACE_S,  # after the drain, handlers only have their answers to write
            keepalive_timeout=server.idle_timeout_s or 3630,  # aiohttp's own idle close (3630: its default)
        )
        self._max_connections = server.max_connections  # per listener, fitted to RLIMIT_NOFILE by start()
        self._grpc: grpclib.server.Server | None = None
        self._guarded: list[GuardedListener] = []  # besides HTTP's
        self._unix: UnixFrontEnd | None = None

    async def start(self) -> None:
        """Bind each configured listener, or take the socket that systemd socket activation
        handed over under the listener's name: an activated socket wins over the config, which
        then only says what else to bind. Raises OSError when one cannot listen."""
        await self.runner.setup()
        activated = systemd.listen_sockets()
        for name in set(activated) - set(NAMES):
            log.warning("ignoring a socket passed by systemd with an unknown name", name=name)
            activated.pop(name).close()
        server = self.server
        wanted = [name for name in NAMES if getattr(server, name) or name in activated]
        self._max_connections = fit_to_descriptors(server.max_connections, len(wanted))
        if "http" in wanted:
            sock = activated.get("http") or _bind_tcp("http", server.http)
            await GuardedSockSite(self.runner, sock, self._http_listener("http"),
                                  ssl_context=tls_context(self.auth.tls_cert, self.auth.tls_key)).start()
            self._listening("http", _address_of(sock), activated)
        if "grpc" in wanted:
            await self._start_grpc(activated.get("grpc") or _bind_tcp("grpc", server.grpc), activated)
        if "socket" in wanted:
            await self._start_unix(activated)
        if "http_socket" in activated:
            sock = activated["http_socket"]
            await GuardedSockSite(self.runner, sock, self._http_listener("http_socket")).start()
            self._listening("http_socket", sock.getsockname(), activated)
        elif server.http_socket:
            Path(server.http_socket).unlink(missing_ok=True)
            try:
                await GuardedUnixSite(self.runner, server.http_socket, self._http_listener("http_socket")).start()
            except OSError as e:
                raise ListenError("http_socket", server.http_socket, e) from None
            os.chmod(server.http_socket, 0o660)
            self._listening("http_socket", server.http_socket, activated)

    def _http_listener(self, name: str) -> GuardedListener:
        limits = dataclasses.replace(_limits(self.server, self._max_connections, self.server.header_timeout_s),
                                     body_timeout_s=self.server.body_timeout_s)
        listener = HttpListener(name, limits)
        self._http.listeners.append(listener)
        return listener

    def _listening(self, frontend: str, address: str, activated: dict) -> None:
        self.addresses[frontend] = address
        log.info("listening", frontend=frontend, address=address, activated=frontend in activated)

    async def _start_grpc(self, sock: socket.socket, activated: dict) -> None:
        server = self.server
        limits = RequestLimits.of(server)
        services = [InferenceServicer(self.dataplane, limits), HealthServicer(self.dataplane, limits, self.access)]
        self._grpc = grpclib.server.Server(with_reflection(services, limits))
        answer_unknown_methods(self._grpc)
        if self.access.required:
            require_token(self._grpc, self.access)
        # HTTP/2 has no request head to time: a gRPC connection is timed only while idle.
        listener = GrpcListener(_limits(server, self._max_connections, 0), server.http2_max_streams,
                                server.http2_max_pings_per_s)
        self._guarded.append(listener)
        # grpclib takes no protocol factory: its own one, guarded, is what start() serves with.
        self._grpc._protocol_factory = listener.wrap(self._grpc._protocol_factory)
        await self._grpc.start(sock=sock, ssl=tls_context(self.auth.tls_cert, self.auth.tls_key, alpn=["h2"]))
        self._listening("grpc", _address_of(sock), activated)

    async def _start_unix(self, activated: dict) -> None:
        limits = _limits(self.server, self._max_connections, self.server.body_timeout_s)  # a frame is head and body
        self._unix = UnixFrontEnd(self.dataplane, self.server.max_request_bytes, self.server.max_value_elements, limits)
        if "socket" in activated:  # systemd made it (SocketMode=, SocketGroup=) and keeps the file
            await self._unix.start_on(activated["socket"])
            path = activated["socket"].getsockname()
        else:
            path = socket_path(self.server.socket)
            try:
                await self._unix.start(path, self.server.socket_group)
            except OSError as e:
                raise ListenError("socket", path, e) from None
        self._listening("socket", path, activated)

    async def stop_accepting(self, keep_grpc: bool = False) -> None:
        """New connections are refused; open ones go on, and each gRPC one gets a graceful
        GOAWAY (its client opens no new streams there). `keep_grpc`: gRPC keeps accepting, so
        that a client told GOAWAY can reconnect to go on with a running sequence."""
        for site in list(self.runner.sites):
            await site.stop()  # the listening socket only; open connections finish their requests
        if self._unix is not None:
            self._unix.stop_accepting()
        if self._grpc is not None:
            if not keep_grpc:  # the listening socket only: grpclib's close() would cancel the running calls
                self._grpc._server.close()
            told = sum(listener.go_away() for listener in self._guarded if isinstance(listener, GrpcListener))
            log.info("gRPC connections told to go away", connections=told, accepting=keep_grpc)

    async def close(self) -> None:
        """Close every listener and connection. After the drain every accepted request has its
        answer (a result, or UNAVAILABLE); each front-end gets CLOSE_GRACE_S to write them
        before what is left is cut."""
        for listener in [*self._http.listeners, *self._guarded]:
            listener.stop()
        closing = [self.runner.cleanup()]  # closes idle connections, waits for handlers writing answers
        if self._unix is not None:
            closing.append(self._unix.close(CLOSE_GRACE_S))
        if self._grpc is not None:
            closing.append(self._close_grpc())
        await asyncio.gather(*closing)

    async def _close_grpc(self) -> None:
        await finish_calls(self._grpc, CLOSE_GRACE_S)  # grpclib's close() cancels the calls still running
        for listener in self._guarded:
            for guard in list(listener.connections.values()):
                listener.close_connection(guard)  # GOAWAY: the client knows it is not a network failure
        self._grpc.close()
        await self._grpc.wait_closed()
