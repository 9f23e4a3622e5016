"""The composition root: builds every part from the config and runs start -> serve -> drain -> stop.

    start:  bind the listeners (live, not ready), load the models directory, READY=1
    serve:  until SIGTERM/SIGINT (or `stop` is set), following the models directory;
            SIGHUP: RELOADING=1, re-read the config, rescan, READY=1
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
from collections.abc import Callable
from pathlib import Path

import grpclib.server
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from inferd.config import gc_policy
from inferd.config.errors import ConfigError
from inferd.config.settings import DaemonConfig, parse_address, socket_path
from inferd.daemon import systemd
from inferd.daemon.dataplane import DataPlane, ServerState
from inferd.daemon.auth import Access, tls_context
from inferd.daemon.grpc import InferenceServicer, require_token
from inferd.daemon.http import build_app
from inferd.daemon.metrics import Metrics
from inferd.daemon.unix import UnixFrontEnd
from inferd.daemon.repository import ModelRepository
from inferd.daemon.watcher import DirectoryWatcher
from inferd.scheduler import spawner
from inferd.scheduler.limits import MemoryManager
from inferd.scheduler.memory import pick_probe

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
    def __init__(self, config: DaemonConfig, token: str | None = None,
                 reread_config: Callable[[], DaemonConfig] | None = None):
        self.config = config
        self.reread_config = reread_config  # for SIGHUP; None: the config cannot change
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.state = ServerState()
        models = config.models
        self.memory = MemoryManager(pick_probe(), config.memory, observer=self.metrics)
        self.repository = ModelRepository(Path(models.dir), config.defaults, self.metrics, self.memory,
                                          config.server.drain_timeout_s, explicit=models.control == "explicit")
        self.watcher = self._make_watcher()
        self.dataplane = DataPlane(self.repository, self.state)
        self.access = Access(token, config.auth.open_health, self.metrics.unauthenticated)
        self.addresses: dict[str, str] = {}
        self._grpc: grpclib.server.Server | None = None
        self._unix: UnixFrontEnd | None = None
        self._watching: asyncio.Task | None = None

    def _make_watcher(self) -> DirectoryWatcher:
        models = self.config.models
        return DirectoryWatcher(Path(models.dir), models.control, models.settle_ms / 1000,
                                models.poll_interval_s, publish=self.repository.apply)

    async def _follow_directory(self) -> None:
        """Publish the first snapshot of the models directory, and keep watching (or polling)
        it; in explicit mode only the repository API changes models after that."""
        if self.config.models.control == "explicit":
            self.watcher.rescan()
            return
        self._watching = asyncio.create_task(self.watcher.run())
        started = asyncio.create_task(self.watcher.started.wait())
        await asyncio.wait([self._watching, started], return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self._watching.done():
            self._watching.result()  # the watcher failed: say why

    async def run(self, stop: asyncio.Event | None = None) -> int:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task] = set()
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn_reload(reloads))
        systemd.install_hang_hook(loop)  # off unless a test asks for it
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
            await spawner.warm_up()  # the forkserver imports the runtimes once; workers fork from it
            log.info("memory probe", probe=self.memory.probe.kind,
                     devices={d.device: {"free": d.free, "total": d.total} for d in self.memory.probe.devices()})
            self.memory.start()
            await self._follow_directory()
            await self.repository.wait_loaded()
            self.state.started = True
            log.info("ready", seconds=round(time.monotonic() - started, 3), models=self.repository.counts(), pid=os.getpid(),
                     gc_frozen=gc_policy.settle())
            systemd.notify("READY=1", self._status())
            interval = systemd.watchdog_interval()
            if interval:
                watchdog = asyncio.create_task(systemd.keep_watchdog_fed(interval))
            await stop.wait()
            drained = await self._drain(runner)
            return 0
        finally:
            for task in (watchdog, self._watching, *reloads):
                if task is not None:
                    task.cancel()
            if self._unix is not None:
                await self._unix.close()
            if self._grpc is not None:  # drained above: closing cancels no accepted request
                self._grpc.close()
                await self._grpc.wait_closed()
            await runner.cleanup()  # closes listeners, waits for handlers still writing responses
            await self.repository.stop()
            await self.memory.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
                loop.remove_signal_handler(sig)
            log.info("stopped", drained=drained)

    def _status(self) -> str:
        counts = self.repository.counts()
        return "STATUS=models: " + (", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())) or "none")

    def _spawn_reload(self, reloads: set[asyncio.Task]) -> None:
        if not self.state.ready:
            log.warning("SIGHUP ignored: the daemon is starting or stopping")
            return
        task = asyncio.create_task(self.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    async def reload(self) -> None:
        """SIGHUP: re-read the config, apply what can change while running, rescan the models
        directory, wait for the loads that started, READY=1. Listener, auth and TLS changes
        need a restart (logged); an invalid config is refused and the old one kept."""
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        log.info("reloading")
        new = self.config
        if self.reread_config is not None:
            try:
                new = self.reread_config()
            except ConfigError as e:
                log.error("reload refused: invalid configuration; keeping the running one", error=str(e))
        old, self.config = self.config, new
        for section in ("server", "auth"):
            if getattr(old, section) != getattr(new, section):
                log.warning("config changes need a restart to apply", section=section)
        if old.memory != new.memory:
            self.memory.configure(new.memory)
        if old.log != new.log:
            from inferd.daemon import logs

            logs.configure(new.log.format, new.log.level)
        if old.models != new.models:
            if self._watching is not None:
                self._watching.cancel()
                self._watching = None
            self.repository.root = Path(new.models.dir)
            self.repository.explicit = new.models.control == "explicit"
            self.watcher = self._make_watcher()
            await self._follow_directory()
        if old.defaults != new.defaults:
            self.repository.reload_all(new.defaults)
        if new.models.control != "explicit":
            self.watcher.rescan()
        await self.repository.wait_loaded()
        log.info("reloaded", models=self.repository.counts())
        systemd.notify("READY=1", self._status())

    async def _start_sites(self, runner: web.AppRunner) -> None:
        """Bind each configured listener, or take the socket that systemd socket activation
        handed over under the listener's name (http, grpc, socket, http_socket): an activated
        socket wins over the config, which then only says what else to bind."""
        server = self.config.server
        auth = self.config.auth
        activated = systemd.listen_sockets()
        for name in set(activated) - {"http", "grpc", "socket", "http_socket"}:
            log.warning("ignoring a socket passed by systemd with an unknown name", name=name)
            activated.pop(name).close()

        def listening(frontend: str, address: str) -> None:
            self.addresses[frontend] = address
            log.info("listening", frontend=frontend, address=address, activated=frontend in activated)

        if server.http or "http" in activated:
            sock = activated.get("http") or _bind_tcp(server.http)
            await web.SockSite(runner, sock, ssl_context=tls_context(auth.tls_cert, auth.tls_key)).start()
            listening("http", _address_of(sock))
        if server.grpc or "grpc" in activated:
            sock = activated.get("grpc") or _bind_tcp(server.grpc)
            self._grpc = grpclib.server.Server([InferenceServicer(self.dataplane)])
            if self.access.required:
                require_token(self._grpc, self.access)
            await self._grpc.start(sock=sock, ssl=tls_context(auth.tls_cert, auth.tls_key, alpn=["h2"]))
            listening("grpc", _address_of(sock))
        if server.socket or "socket" in activated:
            self._unix = UnixFrontEnd(self.dataplane, server.max_request_bytes)
            if "socket" in activated:  # systemd made it (SocketMode=, SocketGroup=) and keeps the file
                await self._unix.start_on(activated["socket"])
                path = activated["socket"].getsockname()
            else:
                path = socket_path(server.socket)
                await self._unix.start(path, server.socket_group)
            listening("socket", path)
        if "http_socket" in activated:
            sock = activated["http_socket"]
            await web.SockSite(runner, sock).start()
            listening("http_socket", sock.getsockname())
        elif server.http_socket:
            Path(server.http_socket).unlink(missing_ok=True)
            await web.UnixSite(runner, server.http_socket).start()
            os.chmod(server.http_socket, 0o660)
            listening("http_socket", server.http_socket)

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
