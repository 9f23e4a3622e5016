"""The daemon's side of one worker process: start it, load the model, run batches, stop it."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

import numpy as np
import structlog

from inferd.backends import ipc, mailbox
from inferd.backends.shm import Region
from inferd.common.deferred import stacked
from inferd.common.errors import ErrorCode, InferdError
from inferd.common.tensors import ModelMetadata
from inferd.scheduler import busypoll, results, streams
from inferd.scheduler.busypoll import keep_polling
from inferd.scheduler.spawner import Forked
from inferd.scheduler.worker_errors import LoadFailed, WorkerLost, describe_exit, worker_error
from inferd.scheduler.worker_spec import WorkerSpec  # noqa: F401 (re-exported)

log = structlog.get_logger("inferd.worker")


BatchDone = Callable[["dict[str, np.ndarray] | list | InferdError"], None]  # (a list: per caller, run_batch)


class _Connection(asyncio.Protocol):
    """The daemon's end of the socket to one worker: hands each frame, and the loss of the
    connection, to its WorkerHandle as soon as they arrive."""

    def __init__(self, handle: WorkerHandle) -> None:
        self.handle = handle
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        for msg in ipc.split_frames(self._buf):
            self.handle._on_message(msg)

    def connection_lost(self, exc) -> None:
        self.handle._on_lost()


class WorkerObserver:
    """Hooks for what a worker handle does; the default does nothing."""

    def batch_sent(self, posted: bool, rung: bool) -> None: ...  # through the mailbox? had to ring the worker?


class WorkerHandle(streams.StreamingWorker):
    """One worker process. Batches are sent with `run_batch` and answered through a callback
    straight from the socket's data callback: no task sits between a worker's reply and the
    callers' futures. `on_exit` is called once if the process goes away, busy or idle."""

    def __init__(self, spec: WorkerSpec, on_exit: Callable[[WorkerHandle], None] = lambda w: None,
                 observer: WorkerObserver | None = None):
        self.spec = spec
        self.on_exit = on_exit
        self.observer = observer or WorkerObserver()
        self.process: Forked | None = None
        self.metadata: ModelMetadata | None = None
        self.spawn_seconds = 0.0  # fork to the worker running
        self.load_seconds = 0.0  # model load and warm-up, in the worker
        self.dead = False
        self.expired = False  # killed because a batch outran execution_timeout_s
        self._lost = False  # its exit (or the end of its socket) was dealt with
        self.device = "cpu"  # where the model runs, as the worker reported when it loaded
        self.per_request = False  # its backend answers each caller on its own (inferd.backends.per_request)
        self.idle_since = 0.0  # monotonic; the pool's scale-down clock
        self._transport: asyncio.Transport | None = None
        self._load_reply: asyncio.Future | None = None
        self._profile_reply: asyncio.Future | None = None
        self._batch: tuple[int, BatchDone, float] | None = None  # (number, callback, busy-poll seconds)
        self.batch_started = 0.0  # monotonic: when the running batch was sent
        self._batches = 0
        self._started = False
        self._stopping = False
        self._inputs: Region | None = None  # shared memory (None: tensors travel in the messages)
        self._outputs: Region | None = None
        self._mailbox: mailbox.Mailbox | None = None  # light-load batches and answers (x86-64 only)
        self._worker_polls_until = 0.0  # monotonic: the worker said it polls for the next batch till then
        self._poll_s = spec.busy_poll_us / 1e6

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def busy(self) -> bool:
        return self._batch is not None

    async def start(self, timeout: float) -> ModelMetadata:
        """Fork the process and load the model; raise LoadFailed with the reason."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        forked_at = time.monotonic()
        loop = asyncio.get_running_loop()
        self._load_reply = loop.create_future()  # (None, if it exits before it answers)
        try:
            self.process = Forked(child, on_exit=self._on_process_exit)
        finally:
            child.close()
        spec = self.spec
        if spec.shared_memory:
            tag = f"inferd-{spec.model}-{spec.version}"
            self._inputs, self._outputs = Region.create(tag + "-in"), Region.create(tag + "-out")
            fds = [self._inputs.fd, self._outputs.fd]
            if mailbox.supported():
                self._mailbox = mailbox.Mailbox.create(tag + "-mailbox")
                fds.append(self._mailbox.fd)
            socket.send_fds(parent, [b"S"], fds)
        else:
            parent.sendall(b"N")
        self._transport, _ = await loop.create_unix_connection(lambda: _Connection(self), sock=parent)
        self._transport.writelines(ipc.encode({
            "type": ipc.LOAD, "model": spec.model, "version": spec.version,
            "path": str(spec.path), "backend": spec.backend, "settings": spec.settings.to_wire(),
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
            self._close()
            raise LoadFailed(f"the worker process exited with {describe_exit(code)} while loading")
        if reply["type"] == ipc.LOAD_FAILED:
            await self.stop(timeout=5)
            raise LoadFailed(reply["reason"])
        self.metadata = ModelMetadata.from_dict(reply["metadata"])
        self.device = reply.get("device", "cpu")
        self.per_request = reply.get("per_request", False)
        self.spawn_seconds = max(0.0, reply.get("started_at", forked_at) - forked_at)
        self.load_seconds = reply["load_s"]
        self.idle_since = time.monotonic()
        self._started = True
        return self.metadata

    def run_batch(self, request_ids: list[str], inputs: dict[str, list[np.ndarray]], outputs: list[str],
                  done: BatchDone, light: bool = False, stream: streams.ResponseStream | None = None,
                  callers: list | None = None) -> None:
        """Send one batch: per input, the requests' arrays in order, stacked along the first
        dimension on the way (into shared memory, or one concatenation for the socket; a part
        that cannot be read raises UnreadPart, and nothing is sent). `done` later gets the
        outputs or an InferdError (the backend's, or WorkerLost if the worker died). One batch
        at a time per worker. `light`: the load is light (a lone request), so this loop and the
        worker busy-poll around the batch (inferd.scheduler.busypoll), and the batch and its
        answer go through the mailbox; under load they would only take CPU from each other.
        `callers` (a per-request backend's batch: scheduler.results.wire_callers): `done` gets a
        list, one answer per caller, its outputs or its own InferdError."""
        if self._batch is not None or self._profile_reply is not None:
            raise RuntimeError(f"worker {self.pid} is busy: a worker runs one batch at a time")
        poll_s = self._poll_s if light and stream is None else 0.0  # (a stream's messages go by the socket)
        message = {"type": ipc.EXECUTE, "batch": self._batches + 1, "ids": request_ids, "outputs": outputs,
                   "poll_s": poll_s}
        by_mailbox = poll_s > 0 and self._mailbox is not None
        if by_mailbox:
            message["mailbox_until"] = time.monotonic() + poll_s  # this loop polls till then (keep_polling below)
        if callers is not None:
            message["callers"] = callers
        if self._inputs is not None:
            message["inputs"] = self._inputs.write(inputs)
            message["size"] = self._inputs.size
        else:
            message["inputs"] = ipc.pack_tensors({name: stacked(parts) for name, parts in inputs.items()})
        done = done if stream is None else self._start_stream(stream, message, done)
        self._batches += 1
        self._batch = (self._batches, done, poll_s)
        self.batch_started = time.monotonic()
        payload = ipc.pack(message)
        if by_mailbox:
            busypoll.watch(self._take_posted)  # the answer comes there, whichever way the batch went
        if by_mailbox and self._mailbox.post(payload):
            rung = mailbox.must_ring(self._worker_polls_until)
            if rung:
                self._transport.writelines(ipc.encode({"type": ipc.WAKE}))
            self.observer.batch_sent(posted=True, rung=rung)
        else:
            self._transport.writelines((ipc.HEADER.pack(len(payload)), payload))
            self.observer.batch_sent(posted=False, rung=False)
        keep_polling(poll_s)  # the reply is read as it lands

    async def profile(self, rows: int, dim: int) -> dict:
        """One run on synthetic inputs of `rows` rows (`dim` for other dynamic dimensions), on
        an idle worker; the reply says whether it ran. Raises WorkerLost if the worker dies."""
        if self._batch is not None or self._profile_reply is not None:
            raise RuntimeError(f"worker {self.pid} is busy: profile it while it is idle")
        self._profile_reply = asyncio.get_running_loop().create_future()
        self._transport.writelines(ipc.encode({"type": ipc.PROFILE, "rows": rows, "dim": dim}))
        try:
            async with asyncio.timeout(self.spec.execution_timeout_s):
                reply = await self._profile_reply
        except TimeoutError:  # like a batch that runs too long: the worker goes (and is replaced)
            self.expired = self.dead = True
            self.process.kill()
            raise WorkerLost(f"killed: the run did not end within execution_timeout_s ({self.spec.execution_timeout_s:g} s)") from None
        finally:
            self._profile_reply = None
        if reply is None:
            raise WorkerLost(self._exit_text())
        return reply

    def expire(self) -> None:
        """The running batch outran execution_timeout_s: its callers are answered
        DEADLINE_EXCEEDED now, and the worker is killed with whatever it started (stopped or
        not). Its exit is then seen like a crash, and the pool replaces it."""
        if self._batch is None:
            return
        done = self._batch[1]
        self._batch = None
        busypoll.unwatch(self._take_posted)
        self.expired = self.dead = True  # (the queue does not give it back to the pool)
        self.process.kill()
        limit = self.spec.execution_timeout_s
        log.error("batch timed out; killing its worker", model=self.spec.model, version=self.spec.version,
                  pid=self.pid, execution_timeout_s=limit)
        done(InferdError(ErrorCode.DEADLINE_EXCEEDED, f"the model did not finish this request within "
                                                      f"execution_timeout_s ({limit:g} s); its worker was stopped"))

    def _take_posted(self) -> None:
        """The worker's answer, if it is waiting in the mailbox."""
        if self._mailbox is not None and (payload := self._mailbox.take()) is not None:
            self._on_message(ipc.decode(payload))

    def _on_message(self, msg: dict) -> None:
        if msg["type"] == ipc.WAKE:
            return self._take_posted()  # (or the answer was taken while polling)
        if msg["type"] == ipc.PARTIAL:
            return self._on_partial(msg)
        for waiting in (self._load_reply, self._profile_reply):
            if waiting is not None:
                if not waiting.done():
                    waiting.set_result(msg)
                return
        if self._batch is None or msg.get("batch") != self._batch[0]:
            log.error("unexpected message from worker", model=self.spec.model, pid=self.pid, type=msg.get("type"))
            return
        _, done, poll_s = self._batch
        self._batch = None
        busypoll.unwatch(self._take_posted)
        self._worker_polls_until = msg.get("polls_until", 0.0)
        self.idle_since = time.monotonic()
        if msg["type"] == ipc.FAILED:
            done(worker_error(msg["code"], msg["message"]))
        elif self.per_request and "callers" in msg:
            if self._outputs is not None:
                self._outputs.follow(msg["size"])
            done(results.per_caller(msg, self._read_outputs))
        elif self._outputs is not None:
            self._outputs.follow(msg["size"])
            # Copied out: the region is written again by this worker's next batch, while the
            # callers may still be encoding these outputs.
            done(self._outputs.read(msg["outputs"], copy=True))
        else:
            done(ipc.unpack_tensors(msg["outputs"]))
        keep_polling(poll_s)  # the callers' next requests, and the next batch's reply

    def _read_outputs(self, items: list) -> dict[str, np.ndarray]:
        """A caller's outputs in a per-request backend's RESULT (copied out of shared memory, below)."""
        return ipc.unpack_tensors(items) if self._outputs is None else self._outputs.read(items, copy=True)

    def _on_process_exit(self, code: int | None) -> None:
        """The process exited (the forkserver says so at once, even while a child of the
        model's still holds the worker's socket open): what it wrote before is still read."""
        if self._transport is not None and not self._lost:
            sock = self._transport.get_extra_info("socket")
            try:
                for _ in range(1024):  # what the socket holds (bounded: a child may go on writing)
                    data = os.read(sock.fileno(), 1 << 20)
                    if not data:
                        break
                    self._transport.get_protocol().data_received(data)
            except (BlockingIOError, OSError, ValueError):
                pass
        self._on_lost()

    def _exit_text(self) -> str:
        code = self.process.returncode if self.process else None
        return describe_exit(code) if code is not None else ""

    def _on_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._take_posted()  # an answer posted just before the worker went is still an answer
        self.dead = True
        for waiting in (self._load_reply, self._profile_reply):
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
        if self._batch is not None:
            done = self._batch[1]
            self._batch = None
            done(WorkerLost(self._exit_text()))
        if self.process is not None and self.process.returncode is None and not self._stopping:
            # Its socket ended but the process lives on: it has at most a few seconds to exit.
            asyncio.get_running_loop().call_later(5, self.process.kill)
        if self._started and not self._stopping:
            self.on_exit(self)
        self._close()  # its shared memory goes now, not when the handle is collected

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
        for region in (self._inputs, self._outputs):
            if region is not None:
                region.close()
        self._inputs = self._outputs = None
        if self._mailbox is not None:
            busypoll.unwatch(self._take_posted)
            self._mailbox.close()
            self._mailbox = None
