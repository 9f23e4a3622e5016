"""The composition root: builds every part from the config and runs start -> serve -> drain -> stop.

    start:  bind the listeners (live, not ready), load the models directory, READY=1
    serve:  until SIGTERM/SIGINT (or `stop` is set)
    drain:  STOPPING=1, not ready, refuse new requests (503), stop accepting connections,
            answer every accepted request within server.drain_timeout_s
    stop:   close the listeners and connections, stop the workers, exit 0
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import grpclib.server
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from inferd.config.settings import DaemonConfig, parse_address, socket_path
from inferd.daemon import systemd
from inferd.daemon.dataplane import DataPlane, ServerState
from inferd.daemon.auth import Access, tls_context
from inferd.daemon.grpc import InferenceServicer, require_token
from inferd.daemon.http import build_app
from inferd.daemon.metrics import Metrics
from inferd.daemon.unix import UnixFrontEnd
from inferd.daemon.repository import ModelRepository

log = structlog.get_logger("inferd")


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


class Daemon:
    def __init__(self, config: DaemonConfig, token: str | None = None):
        self.config = config
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.state = ServerState()
        self.repository = ModelRepository(Path(config.models.dir), config.defaults, self.metrics)
        self.dataplane = DataPlane(self.repository, self.state)
        self.access = Access(token, config.auth.open_health, self.metrics.unauthenticated)
        self.addresses: dict[str, str] = {}
        self._grpc: grpclib.server.Server | None = None
        self._unix: UnixFrontEnd | None = None

    async def run(self, stop: asyncio.Event | None = None) -> int:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        started = time.monotonic()
        server = self.config.server
        runner = web.AppRunner(
            build_app(self.dataplane, self.registry, server.max_request_bytes, self.access),
            handle_signals=False, access_log=None, handler_cancellation=True,
            shutdown_timeout=5.0,  # after the drain, handlers only have their responses to write
        )
        drained = False
        watchdog = None
        try:
            # Listen first: liveness answers while models load, readiness (and inference) says
            # 503 until the initial load is done.
            await runner.setup()
            try:
                await self._start_sites(runner)
            except OSError as e:
                log.error("cannot listen", error=str(e))
                return 1
            await self.repository.load_all()
            self.state.started = True
            counts = self.repository.counts()
            log.info("ready", seconds=round(time.monotonic() - started, 3), models=counts, pid=os.getpid())
            status = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())) or "no models"
            systemd.notify("READY=1", f"STATUS=models: {status}")
            interval = systemd.watchdog_interval()
            if interval:
                watchdog = asyncio.create_task(systemd.keep_watchdog_fed(interval))
            await stop.wait()
            drained = await self._drain(runner)
            return 0
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if self._unix is not None:
                await self._unix.close()
            if self._grpc is not None:  # drained above: closing cancels no accepted request
                self._grpc.close()
                await self._grpc.wait_closed()
            await runner.cleanup()  # closes listeners, waits for handlers still writing responses
            await self.repository.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            log.info("stopped", drained=drained)

    async def _start_sites(self, runner: web.AppRunner) -> None:
        server = self.config.server
        auth = self.config.auth
        if server.http:
            sock = _bind_tcp(server.http)
            await web.SockSite(runner, sock, ssl_context=tls_context(auth.tls_cert, auth.tls_key)).start()
            self.addresses["http"] = _address_of(sock)
            log.info("listening", frontend="http", address=self.addresses["http"])
        if server.grpc:
            sock = _bind_tcp(server.grpc)
            self._grpc = grpclib.server.Server([InferenceServicer(self.dataplane)])
            if self.access.required:
                require_token(self._grpc, self.access)
            await self._grpc.start(sock=sock, ssl=tls_context(auth.tls_cert, auth.tls_key, alpn=["h2"]))
            self.addresses["grpc"] = _address_of(sock)
            log.info("listening", frontend="grpc", address=self.addresses["grpc"])
        if server.socket:
            path = socket_path(server.socket)
            self._unix = UnixFrontEnd(self.dataplane, server.max_request_bytes)
            await self._unix.start(path, server.socket_group)
            self.addresses["socket"] = path
            log.info("listening", frontend="socket", address=path)
        if server.http_socket:
            Path(server.http_socket).unlink(missing_ok=True)
            await web.UnixSite(runner, server.http_socket).start()
            os.chmod(server.http_socket, 0o660)
            self.addresses["http_socket"] = server.http_socket
            log.info("listening", frontend="http_socket", address=server.http_socket)

    async def _drain(self, runner: web.AppRunner) -> bool:
        """Not ready, refuse new work, stop accepting HTTP connections, answer what was accepted
        within the budget. (gRPC keeps accepting and answers UNAVAILABLE, which its clients
        retry: grpclib cannot stop listening without cancelling running calls.)"""
        budget = self.config.server.drain_timeout_s
        systemd.notify("STOPPING=1")
        self.state.draining = True
        for site in list(runner.sites):
            await site.stop()  # the listening socket only; open connections finish their requests
        if self._unix is not None:
            self._unix.stop_accepting()
        log.info("draining", inflight=self.repository.inflight_count(), budget_s=budget)
        drained = await self.repository.drain(budget)
        if not drained:
            log.warning("drain budget exhausted; failing what is left", inflight=self.repository.inflight_count())
        return drained
