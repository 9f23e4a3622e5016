"""The daemon's side of one worker process: start it, load the model, run batches, stop it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog

from inferd.backends import ipc
from inferd.config.errors import ErrorCode, InferdError
from inferd.config.tensors import ModelMetadata

log = structlog.get_logger("inferd.worker")


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to host one model version."""

    model: str
    version: str
    path: Path
    backend: str  # "module:Class"
    settings: dict  # ModelSettings as a plain dict


class LoadFailed(Exception):
    """The worker could not load the model; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


BatchDone = Callable[["dict[str, np.ndarray] | InferdError"], None]


class _Connection(asyncio.Protocol):
    """The daemon's end of the socket to one worker: hands each frame, and the loss of the
    connection, to its WorkerHandle as soon as they arrive."""

    def __init__(self, handle: "WorkerHandle") -> None:
        self.handle = handle
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        for msg in ipc.split_frames(self._buf):
            self.handle._on_message(msg)

    def connection_lost(self, exc) -> None:
        self.handle._on_lost()


def _worker_env() -> dict[str, str]:
    # Workers must not talk to systemd as if they were the service.
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)
    return env


class WorkerHandle:
    """One worker process. Batches are sent with `run_batch` and answered through a callback
    straight from the socket's data callback: no task sits between a worker's reply and the
    callers' futures. `on_exit` is called once if the process goes away, busy or idle."""

    def __init__(self, spec: WorkerSpec, on_exit: Callable[["WorkerHandle"], None] = lambda w: None):
        self.spec = spec
        self.on_exit = on_exit
        self.process: asyncio.subprocess.Process | None = None
        self.metadata: ModelMetadata | None = None
        self.load_seconds = 0.0
        self.dead = False
        self._transport: asyncio.Transport | None = None
        self._load_reply: asyncio.Future | None = None
        self._batch: tuple[int, BatchDone] | None = None
        self._batches = 0
        self._started = False
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self, timeout: float) -> ModelMetadata:
        """Spawn the process and load the model; raise LoadFailed with the reason."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "inferd.backends.worker", "--fd", str(child.fileno()),
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL, env=_worker_env(),
            )
        finally:
            child.close()
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_unix_connection(lambda: _Connection(self), sock=parent)
        self._load_reply = loop.create_future()
        spec = self.spec
        self._transport.writelines(ipc.encode({
            "type": ipc.LOAD, "model": spec.model, "version": spec.version,
            "path": str(spec.path), "backend": spec.backend, "settings": spec.settings,
        }))
        try:
            async with asyncio.timeout(timeout):
                reply = await self._load_reply
        except TimeoutError:
            await self.kill()
            raise LoadFailed(f"the model did not load within {timeout:g} s") from None
        except asyncio.CancelledError:  # the load was abandoned (e.g. the daemon is stopping)
            await self.kill()
            raise
        finally:
            self._load_reply = None
        if reply is None:
            code = await self.process.wait()
            raise LoadFailed(f"the worker process exited with code {code} while loading")
        if reply["type"] == ipc.LOAD_FAILED:
            await self.stop(timeout=5)
            raise LoadFailed(reply["reason"])
        self.metadata = ModelMetadata.from_dict(reply["metadata"])
        self.load_seconds = reply["load_s"]
        self._started = True
        return self.metadata

    def run_batch(self, request_ids: list[str], inputs: dict[str, np.ndarray], outputs: list[str], done: BatchDone) -> None:
        """Send one batch; `done` later gets the outputs or an InferdError (the backend's, or
        UNAVAILABLE if the worker died). One batch at a time per worker."""
        assert self._batch is None, "a worker runs one batch at a time"
        self._batches += 1
        self._batch = (self._batches, done)
        self._transport.writelines(ipc.encode({
            "type": ipc.EXECUTE, "batch": self._batches, "ids": request_ids,
            "inputs": ipc.pack_tensors(inputs), "outputs": outputs,
        }))

    def _on_message(self, msg: dict) -> None:
        if self._load_reply is not None:
            if not self._load_reply.done():
                self._load_reply.set_result(msg)
            return
        if self._batch is None or msg.get("batch") != self._batch[0]:
            log.error("unexpected message from worker", model=self.spec.model, pid=self.pid, type=msg.get("type"))
            return
        _, done = self._batch
        self._batch = None
        if msg["type"] == ipc.FAILED:
            done(InferdError(ErrorCode(msg["code"]), msg["message"]))
        else:
            done(ipc.unpack_tensors(msg["outputs"]))

    def _on_lost(self) -> None:
        self.dead = True
        if self._load_reply is not None and not self._load_reply.done():
            self._load_reply.set_result(None)
        if self._batch is not None:
            _, done = self._batch
            self._batch = None
            done(InferdError(ErrorCode.UNAVAILABLE, "the model's worker process exited while running this request"))
        if self._started and not self._stopping:
            self.on_exit(self)

    async def exit_code(self) -> int | None:
        return await self.process.wait() if self.process else None

    async def stop(self, timeout: float) -> None:
        """Ask the worker to exit; kill it if it has not within `timeout`."""
        self._stopping = True
        if self.process is None or self.process.returncode is not None:
            self._close()
            return
        try:
            if self._transport is not None and not self._transport.is_closing():  # else: already leaving
                self._transport.writelines(ipc.encode({"type": ipc.STOP}))
            async with asyncio.timeout(timeout):
                await self.process.wait()
        except (TimeoutError, ConnectionError):
            await self.kill()
        self._close()

    async def kill(self) -> None:
        self._stopping = True
        if self.process and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.dead = True
        self._close()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
