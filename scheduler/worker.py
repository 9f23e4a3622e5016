"""The daemon's side of one worker process: start it, load the model, run batches, stop it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import sys
from pathlib import Path

import numpy as np

from inferd.backends import ipc
from inferd.config.errors import ErrorCode, InferdError
from inferd.config.tensors import ModelMetadata


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


class _Connection(asyncio.Protocol):
    """The daemon's end of the socket to one worker: frames in, one awaited reply at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._arrived: list[dict] = []
        self._waiter: asyncio.Future | None = None
        self._lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._arrived.extend(ipc.split_frames(self._buf))
        if self._arrived:
            self._wake()

    def connection_lost(self, exc) -> None:
        self._lost = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def reply(self) -> dict | None:
        """The next message from the worker, or None once it has gone."""
        if not self._arrived and not self._lost:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._arrived.pop(0) if self._arrived else None


def _worker_env() -> dict[str, str]:
    # Workers must not talk to systemd as if they were the service.
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)
    return env


class WorkerHandle:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.process: asyncio.subprocess.Process | None = None
        self.metadata: ModelMetadata | None = None
        self.load_seconds = 0.0
        self._transport: asyncio.Transport | None = None
        self._conn: _Connection | None = None
        self._batches = 0
        self.dead = False

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
        self._transport, self._conn = await asyncio.get_running_loop().create_unix_connection(_Connection, sock=parent)
        spec = self.spec
        self._transport.write(ipc.encode({
            "type": ipc.LOAD, "model": spec.model, "version": spec.version,
            "path": str(spec.path), "backend": spec.backend, "settings": spec.settings,
        }))
        try:
            async with asyncio.timeout(timeout):
                reply = await self._conn.reply()
        except TimeoutError:
            await self.kill()
            raise LoadFailed(f"the model did not load within {timeout:g} s") from None
        if reply is None:
            code = await self.process.wait()
            self.dead = True
            raise LoadFailed(f"the worker process exited with code {code} while loading")
        if reply["type"] == ipc.LOAD_FAILED:
            await self.stop(timeout=5)
            raise LoadFailed(reply["reason"])
        self.metadata = ModelMetadata.from_dict(reply["metadata"])
        self.load_seconds = reply["load_s"]
        return self.metadata

    async def execute(self, request_ids: list[str], inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Run one batch. Raises InferdError: the backend's error, or UNAVAILABLE if the worker died."""
        self._batches += 1
        batch = self._batches
        self._transport.write(ipc.encode({
            "type": ipc.EXECUTE, "batch": batch, "ids": request_ids,
            "inputs": ipc.pack_tensors(inputs), "outputs": outputs,
        }))
        reply = await self._conn.reply()
        if reply is None:
            self.dead = True
            code = await self.process.wait()
            raise InferdError(ErrorCode.UNAVAILABLE, f"the model's worker process exited (code {code}) while running this request")
        if reply["batch"] != batch:
            raise InferdError(ErrorCode.INTERNAL, f"worker answered batch {reply['batch']}, expected {batch}")
        if reply["type"] == ipc.FAILED:
            raise InferdError(ErrorCode(reply["code"]), reply["message"])
        return ipc.unpack_tensors(reply["outputs"])

    async def stop(self, timeout: float) -> None:
        """Ask the worker to exit; kill it if it has not within `timeout`."""
        if self.process is None or self.process.returncode is not None:
            self._close()
            return
        try:
            self._transport.write(ipc.encode({"type": ipc.STOP}))
            async with asyncio.timeout(timeout):
                await self.process.wait()
        except (TimeoutError, ConnectionError):
            await self.kill()
        self._close()

    async def kill(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.dead = True
        self._close()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
