"""The composition root: builds every part from the config and runs start -> serve -> drain -> stop.

    start:  bind the listeners (live, not ready), load the models directory, READY=1
    serve:  until SIGTERM/SIGINT (or `stop` is set), following the models directory;
            SIGHUP: RELOADING=1, re-read the config, rescan, READY=1
    drain:  STOPPING=1, not ready, refuse new requests (503), stop accepting connections,
            answer every accepted request within server.drain_timeout_s; what is still
            unanswered then (a stuck batch) is answered UNAVAILABLE "shutting down"
    stop:   write those answers and close the connections (a few seconds at most), stop the
            workers (killing those still running a batch), exit 0
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from inferd.common import gc_policy
from inferd.common.errors import ConfigError
from inferd.common.tasks import TaskSet
from inferd.config.settings import DaemonConfig
from inferd.daemon.dataplane import DataPlane, ServerState
from inferd.daemon.frontends.auth import Access
from inferd.daemon.listeners import ListenError, Listeners
from inferd.daemon.models import upload
from inferd.daemon.models.repository import ModelRepository
from inferd.daemon.models.source import make_source
from inferd.daemon.models.watcher import DirectoryWatcher
from inferd.daemon.operations import logs, systemd
from inferd.daemon.operations.custom_metrics import CustomMetrics
from inferd.daemon.operations.metrics import Metrics
from inferd.scheduler import spawner
from inferd.scheduler.limits import MemoryManager
from inferd.scheduler.memory import pick_probe

log = structlog.get_logger("inferd")

WORKER_STOP_S = 10.0  # for a worker to exit on STOP before it is killed
ABANDONED_WORKER_STOP_S = 2.0  # the same after a drain that timed out: a worker may be stuck in a batch


class Daemon:
    def __init__(self, config: DaemonConfig, token: str | None = None,
                 reread_config: Callable[[], DaemonConfig] | None = None):
        self.config = config
        self.reread_config = reread_config  # for SIGHUP; None: the config cannot change
        self.registry = CollectorRegistry()
        self.custom_metrics = CustomMetrics()  # Python models' own (its directory made at the first load)
        self.metrics = Metrics(self.registry, self.custom_metrics)
        self.state = ServerState()
        models = config.models
        self.memory = MemoryManager(pick_probe(), config.memory, observer=self.metrics)
        self.source = make_source(models, self.registry)  # models.source (None: the directory alone)
        self.repository = ModelRepository(Path(models.dir), config.defaults, self.metrics, self.memory,
                                          config.server.drain_timeout_s, explicit=models.control == "explicit",
                                          max_concurrent_loads=models.max_concurrent_loads, source=self.source)
        self.watcher = self._make_watcher()
        self.dataplane = DataPlane(self.repository, self.state, accept_model_files=models.accept_model_files,
                                   name=config.server.name)
        access = Access(token, config.auth.open_health, self.metrics.unauthenticated)
        self.listeners = Listeners(config.server, config.auth, self.dataplane, self.registry, access,
                                   model_metrics=self.custom_metrics.exposition)
        self._tasks = TaskSet("daemon")  # the watchdog, the reloads
        self._watching: asyncio.Task | None = None

    @property
    def addresses(self) -> dict[str, str]:
        return self.listeners.addresses

    def _make_watcher(self) -> DirectoryWatcher:
        models = self.config.models
        watcher = DirectoryWatcher(Path(models.dir), models.control, models.settle_ms / 1000,
                                   models.poll_interval_s, publish=self.repository.apply)
        self.repository.api_scanned = watcher.adopt
        return watcher

    async def _follow_directory(self) -> None:
        """Publish the first snapshot of the models directory, and keep watching (or polling)
        it; in explicit mode only the repository API changes models after that."""
        if self.config.models.control == "explicit":
            self.watcher.rescan()
            return
        self._watching = self._tasks.spawn(self.watcher.run())
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
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        drained = False
        try:
            if not await self._start():
                return 1
            await stop.wait()
            drained = await self._drain()
            return 0
        finally:
            await self._tasks.cancel()
            await self.listeners.close()
            await self.repository.stop(WORKER_STOP_S if drained else ABANDONED_WORKER_STOP_S)
            await self.memory.stop()
            self.custom_metrics.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            log.info("stopped", drained=drained)

    async def _start(self) -> bool:
        """Listen first (liveness answers while models load; readiness and inference say 503
        until the initial load is done), load the models directory, READY=1. False: a
        listener could not be bound."""
        started = time.monotonic()
        try:
            await self.listeners.start()
        except ListenError as e:
            log.error("cannot listen", frontend=e.frontend, address=e.address, error=e.reason)
            return False
        except OSError as e:
            log.error("cannot listen", error=str(e))
            return False
        # Models reach the daemon through its Unix socket to call other models (BLS); none without it.
        unix_socket = self.listeners.addresses.get("socket")
        self.repository.assembler.daemon_socket = os.path.abspath(unix_socket) if unix_socket else ""
        await spawner.warm_up()  # the forkserver imports the runtimes once; workers fork from it
        log.info("memory probe", probe=self.memory.probe.kind,
                 devices={d.device: {"free": d.free, "total": d.total} for d in self.memory.probe.devices()})
        self.memory.start()
        upload.remove_leftovers(Path(self.config.models.dir))  # (before the first scan)
        if self.source is not None:  # the store's models serve from the start (a store down: the directory's)
            await self.source.start()
            self._tasks.spawn(self.source.run())
        await self._follow_directory()
        await self.repository.wait_loaded()
        self.state.started = True
        log.info("ready", seconds=round(time.monotonic() - started, 3), models=self.repository.counts(), pid=os.getpid(),
                 gc_frozen=gc_policy.settle())
        systemd.notify("READY=1", self._status())
        if interval := systemd.watchdog_interval():
            self._tasks.spawn(systemd.keep_watchdog_fed(interval))
        return True

    def _status(self) -> str:
        counts = self.repository.counts()
        return "STATUS=models: " + (", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())) or "none")

    def _on_sighup(self) -> None:
        if not self.state.ready:
            log.warning("SIGHUP ignored: the daemon is starting or stopping")
            return
        self._tasks.spawn(self.reload())

    async def reload(self) -> None:
        """SIGHUP: re-read the config, apply what can change while running, rescan the models
        directory, wait for the loads that started, READY=1. Listener, auth and TLS changes
        need a restart (logged); an invalid config is refused and the old one kept. READY=1
        comes whatever happens in between: systemd must not wait on a reload for ever."""
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        log.info("reloading")
        try:
            if self.source is not None:
                await self.source.sync_now()  # before the rescan: a reload serves what the store has
            await self._apply(self._reread())
            log.info("reloaded", models=self.repository.counts())
        except Exception:
            log.exception("reload failed; serving on with what was loaded")
        finally:
            systemd.notify("READY=1", self._status())

    def _reread(self) -> DaemonConfig:
        if self.reread_config is None:
            return self.config
        try:
            return self.reread_config()
        except ConfigError as e:
            log.error("reload refused: invalid configuration; keeping the running one", error=str(e))
            return self.config

    async def _apply(self, new: DaemonConfig) -> None:
        old, self.config = self.config, new
        for section in ("server", "auth"):
            if getattr(old, section) != getattr(new, section):
                log.warning("config changes need a restart to apply", section=section)
        if old.memory != new.memory:
            self.memory.configure(new.memory)
        if old.log != new.log:
            logs.configure(new.log.format, new.log.level)
        if (old.models.source or new.models.source) and _source_keys(old) != _source_keys(new):
            log.warning("model source changes need a restart to apply", section="models")
        if self.source is not None:
            self.source.interval_s = new.models.poll_interval_s
        if old.models != new.models:
            if self._watching is not None:
                self._watching.cancel()
                self._watching = None
            self.repository.reconfigure(Path(new.models.dir), new.models.control == "explicit")
            self.watcher = self._make_watcher()
            await self._follow_directory()
        if old.defaults != new.defaults:
            self.repository.reload_all(new.defaults)
        if new.models.control != "explicit":
            self.watcher.rescan()
        await self.repository.wait_loaded()

    async def _drain(self) -> bool:
        """Not ready, refuse new work, stop accepting connections, answer what was accepted
        within the budget."""
        budget = self.config.server.drain_timeout_s
        systemd.notify("STOPPING=1")
        self.state.draining = True
        await self.listeners.stop_accepting()
        log.info("draining", inflight=self.repository.inflight_count(), budget_s=budget)
        drained = await self.repository.drain(budget)
        if not drained:
            log.warning("drain budget exhausted; failing what is left", inflight=self.repository.inflight_count())
        answered = self.dataplane.answer_all_shutting_down()
        if answered:
            log.warning("answered requests still running as unavailable", requests=answered)
        self.dataplane.system_shared_memory.close()
        self.dataplane.cuda_shared_memory.close()
        return drained


def _source_keys(config: DaemonConfig) -> tuple:
    m = config.models
    return (m.dir, m.source, m.endpoint_url, m.region, m.source_connect_timeout_s, m.source_read_timeout_s,
            m.source_max_objects, m.source_min_free_bytes)
