"""The daemon's listeners: HTTP (and HTTP on a Unix socket), gRPC and the msgpack Unix socket,
bound from the config or taken from systemd socket activation; stopped in two steps (stop
accepting, then close) so that the drain happens in between."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import grpclib.server
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from inferd.config.settings import AuthSection, ServerSection, parse_address, socket_path
from inferd.daemon.dataplane import DataPlane
from inferd.daemon.frontends.auth import Access, tls_context
from inferd.daemon.frontends.grpc import InferenceServicer, require_token
from inferd.daemon.frontends.http import build_app
from inferd.daemon.frontends.unix import UnixFrontEnd
from inferd.daemon.operations import systemd
from inferd.daemon.requests import RequestLimits

log = structlog.get_logger("inferd")

NAMES = ("http", "grpc", "socket", "http_socket")  # FileDescriptorName= of the socket units


def _bind_tcp(address: str) -> socket.socket:
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def _address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Listeners:
    def __init__(self, server: ServerSection, auth: AuthSection, dataplane: DataPlane, registry: CollectorRegistry,
                 access: Access):
        self.server, self.auth = server, auth
        self.dataplane = dataplane
        self.access = access
        self.addresses: dict[str, str] = {}  # front-end -> where it listens
        self.runner = web.AppRunner(
            build_app(dataplane, registry, RequestLimits.of(server), access),
            handle_signals=False, access_log=None, handler_cancellation=True,
            shutdown_timeout=5.0,  # after the drain, handlers only have their responses to write
        )
        self._grpc: grpclib.server.Server | None = None
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
        if server.http or "http" in activated:
            sock = activated.get("http") or _bind_tcp(server.http)
            await web.SockSite(self.runner, sock, ssl_context=tls_context(self.auth.tls_cert, self.auth.tls_key)).start()
            self._listening("http", _address_of(sock), activated)
        if server.grpc or "grpc" in activated:
            await self._start_grpc(activated.get("grpc") or _bind_tcp(server.grpc), activated)
        if server.socket or "socket" in activated:
            await self._start_unix(activated)
        if "http_socket" in activated:
            sock = activated["http_socket"]
            await web.SockSite(self.runner, sock).start()
            self._listening("http_socket", sock.getsockname(), activated)
        elif server.http_socket:
            Path(server.http_socket).unlink(missing_ok=True)
            await web.UnixSite(self.runner, server.http_socket).start()
            os.chmod(server.http_socket, 0o660)
            self._listening("http_socket", server.http_socket, activated)

    def _listening(self, frontend: str, address: str, activated: dict) -> None:
        self.addresses[frontend] = address
        log.info("listening", frontend=frontend, address=address, activated=frontend in activated)

    async def _start_grpc(self, sock: socket.socket, activated: dict) -> None:
        self._grpc = grpclib.server.Server([InferenceServicer(self.dataplane, RequestLimits.of(self.server))])
        if self.access.required:
            require_token(self._grpc, self.access)
        await self._grpc.start(sock=sock, ssl=tls_context(self.auth.tls_cert, self.auth.tls_key, alpn=["h2"]))
        self._listening("grpc", _address_of(sock), activated)

    async def _start_unix(self, activated: dict) -> None:
        self._unix = UnixFrontEnd(self.dataplane, self.server.max_request_bytes, self.server.max_value_elements)
        if "socket" in activated:  # systemd made it (SocketMode=, SocketGroup=) and keeps the file
            await self._unix.start_on(activated["socket"])
            path = activated["socket"].getsockname()
        else:
            path = socket_path(self.server.socket)
            await self._unix.start(path, self.server.socket_group)
        self._listening("socket", path, activated)

    async def stop_accepting(self) -> None:
        """New connections are refused; open ones go on. (gRPC keeps accepting and answers
        UNAVAILABLE, which its clients retry: grpclib cannot stop listening without cancelling
        running calls.)"""
        for site in list(self.runner.sites):
            await site.stop()  # the listening socket only; open connections finish their requests
        if self._unix is not None:
            self._unix.stop_accepting()

    async def close(self) -> None:
        """Close every listener and connection (after the drain: no accepted request is cut)."""
        if self._unix is not None:
            await self._unix.close()
        if self._grpc is not None:
            self._grpc.close()
            await self._grpc.wait_closed()
        await self.runner.cleanup()  # closes listeners, waits for handlers still writing responses
