"""The worker process: hosts one backend for one model version and runs the batches the daemon
sends it, one at a time.

The daemon forks it from its forkserver (`child_main`, see inferd.scheduler.spawner); it can
also be started by hand as `python -m inferd.backends.worker --fd N` (N: this end of a
socketpair, inherited). The first byte on the socket says whether the batch tensors travel in
shared memory: b"S" carries the two region fds (inferd.backends.shm) and, on x86-64, the
mailbox's (inferd.backends.mailbox); b"N" none.

It ignores SIGINT/SIGTERM (the daemon stops it with STOP, after draining) and exits when the
daemon's end of the socket closes, or when its parent (the forkserver, which ends with the
daemon) dies, so it never outlives the daemon. It leads its own process group, which the daemon
kills with it: a model's subprocesses do not outlive their worker. It is the OOM killer's first
choice (oom_score_adj 1000), before the daemon. What the model prints becomes log events
(inferd.backends.output); a model's failure is logged with its traceback, while the caller
gets its type and message only.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np
import structlog

from inferd.backends import decoupled, ipc, per_request
from inferd.backends.base import BackendInputError, BackendOutputError
from inferd.backends.mailbox import Mailbox, must_ring
from inferd.backends.output import ModelOutput
from inferd.backends.reshape import Reshaped
from inferd.backends.settings import BackendSettings
from inferd.backends.shm import Region
from inferd.backends.triton import metrics as model_metrics
from inferd.common import gc_policy
from inferd.common.errors import ErrorCode
from inferd.common.redaction import hide_paths
from inferd.common.tensors import DATATYPES

log = structlog.get_logger("inferd.worker")


def _make_backend(target: str, path: Path, settings: BackendSettings):
    module, _, cls = target.partition(":")
    make = getattr(importlib.import_module(module), cls)
    # Tensors whose model sees other shapes than their clients (Triton's reshape): wrapped.
    return Reshaped(make, path, settings) if settings.reshape else make(path, settings)


# How runtimes say an allocation failed: numpy/Python MemoryError, torch's OutOfMemoryError
# (CUDA), onnxruntime's RuntimeException/Fail with one of these messages (host or CUDA arena).
_OOM_MESSAGES = ("failed to allocate memory", "out of memory", "bad_alloc", "cudaerrormemoryallocation")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    cause = exc.__cause__  # the Python backend wraps the model code's exception
    if cause is not None and cause is not exc and is_out_of_memory(cause):
        return True
    text = str(exc).lower()
    return any(m in text for m in _OOM_MESSAGES)


def _error_code(exc: Exception) -> ErrorCode:
    # onnxruntime raises InvalidArgument for inputs it refuses (e.g. an index out of range).
    if isinstance(exc, BackendInputError) or type(exc).__name__ == "InvalidArgument":
        return ErrorCode.INVALID_ARGUMENT
    if is_out_of_memory(exc):
        return ErrorCode.RESOURCE_EXHAUSTED
    return ErrorCode.INTERNAL


def synthetic_inputs(metadata, rows: int, dim: int) -> dict[str, np.ndarray]:
    """Zeros shaped like the model's inputs: `rows` in a dynamic first dimension (when the
    model batches), `dim` in every other dynamic dimension; BYTES elements of `dim` bytes."""
    inputs = {}
    for t in metadata.inputs:
        shape = tuple(d if d >= 0 else (rows if i == 0 and metadata.batchable else dim) for i, d in enumerate(t.shape))
        if t.datatype == "BYTES":
            inputs[t.name] = np.full(shape, b"\0" * dim, dtype=object)
        else:
            inputs[t.name] = np.zeros(shape, dtype=DATATYPES[t.datatype])
    return inputs


def warm_up(backend, metadata) -> None:
    """One run on zeros (one row, 1 for each dynamic dimension) before the worker says LOADED,
    so the first real request does not pay for the runtime's first-run set-up. Best effort: a
    model that cannot run on such inputs still loads (and says so in the log); one that runs
    but does not produce the outputs it declares (BackendOutputError) fails to load."""
    started = time.monotonic()
    try:
        backend.execute(synthetic_inputs(metadata, 1, 1), [t.name for t in metadata.outputs])
        log.info("warmed up", seconds=round(time.monotonic() - started, 4))
    except BackendOutputError as e:
        raise BackendOutputError(f"the model's warm-up run (zeros, one row) did not produce its declared outputs: {e}") from e
    except Exception as e:
        log.info("warm-up skipped: the model does not run on zeros", reason=f"{type(e).__name__}: {e}")


def for_caller(message: str) -> str:
    """A model's error message as its callers read it: no server paths."""
    return hide_paths(message)


def _model_traceback(exc: BaseException) -> BaseException:
    """The exception whose traceback shows the model's code: the one the backend wrapped."""
    return exc.__cause__ if exc.__cause__ is not None else exc


def profile(backend, metadata, msg: dict) -> dict:
    """One run at `rows` rows on synthetic inputs, for the daemon to measure this process's
    memory around it (inferd.scheduler.memory)."""
    started = time.monotonic()
    try:
        backend.execute(synthetic_inputs(metadata, msg["rows"], msg["dim"]), [t.name for t in metadata.outputs])
    except Exception as e:
        return {"type": ipc.PROFILED, "ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"type": ipc.PROFILED, "ok": True, "seconds": time.monotonic() - started}


def _shared_memory(sock: socket.socket) -> tuple[tuple[Region, Region] | None, Mailbox | None]:
    """The regions for batch tensors and the mailbox, as the daemon handed them over (either
    may be absent)."""
    marker, fds, _, _ = socket.recv_fds(sock, 1, 3)
    if marker != b"S" or len(fds) not in (2, 3):
        for fd in fds:
            os.close(fd)
        return None, None
    regions = Region(fds[0], os.fstat(fds[0]).st_size), Region(fds[1], os.fstat(fds[1]).st_size)
    return regions, Mailbox(fds[2], 1) if len(fds) == 3 else None


def _reply(sock: socket.socket, mailbox: Mailbox | None, reply: dict, daemon_polls_until: float | None) -> None:
    """An answer to EXECUTE: in the mailbox when the batch came by it (ringing the daemon
    if its poll window may be over), else on the socket."""
    payload = ipc.pack(reply)
    if daemon_polls_until is None or mailbox is None or not mailbox.post(payload):
        ipc.send_payload(sock, payload)
    elif must_ring(daemon_polls_until):
        ipc.send(sock, {"type": ipc.WAKE})


def _error(request_ids, e: Exception, what: str = "batch") -> tuple[str, str]:
    """(wire code, message) of a failed run (logged here): a batch's, or one caller's."""
    code = _error_code(e)
    if code is ErrorCode.INTERNAL:  # the model author's: where in their code
        log.error(f"{what} failed", request_ids=request_ids, error=f"{type(e).__name__}: {e}", exc_info=_model_traceback(e))
    if code is ErrorCode.RESOURCE_EXHAUSTED:
        log.warning(f"{what} ran out of memory", request_ids=request_ids, error=f"{type(e).__name__}: {e}")
    return ipc.ERROR_CODES[code], for_caller(str(e))


def _failed(msg: dict, e: Exception) -> dict:
    """The FAILED answer to an EXECUTE whose run raised `e`."""
    code, message = _error(msg["ids"], e)
    return {"type": ipc.FAILED, "batch": msg["batch"], "code": code, "message": message}


def _caller_failed(request_id: str, e: Exception) -> tuple[str, str]:
    """One caller's failure in a per-request backend's batch (inferd.backends.per_request)."""
    return _error([request_id], e, "request")


def _load(sock: socket.socket, msg: dict):
    """The backend LOAD names, loaded and warmed up: (backend, metadata, when loading started),
    or None after LOAD_FAILED was sent with the reason."""
    started = time.monotonic()
    try:
        settings = BackendSettings.from_wire(msg["settings"])
        model_metrics.configure(settings.metrics_dir, msg["model"], msg["version"])  # before the model's code runs
        backend = _make_backend(msg["backend"], Path(msg["path"]), settings)
        metadata = backend.load()
        warm_up(backend, metadata)
    except Exception as e:  # any failure to load is reported as data, with its reason
        reason = str(e) if isinstance(e, BackendOutputError) else f"{type(e).__name__}: {e}".strip()
        log.warning("model load failed", reason=reason, exc_info=_model_traceback(e))
        ipc.send(sock, {"type": ipc.LOAD_FAILED, "reason": for_caller(reason)})  # (the log has the paths)
        return None
    return backend, metadata, started


def serve(sock: socket.socket) -> int:
    regions, mailbox = _shared_memory(sock)
    receiver = ipc.Receiver(sock, mailbox)
    msg = receiver.recv()
    if msg is None or msg["type"] != ipc.LOAD:
        return 2
    global log
    log = log.bind(model=msg["model"], version=msg["version"], pid=os.getpid())
    if _output is not None:
        _output.log = log
    loaded = _load(sock, msg)
    if loaded is None:
        return 1
    backend, metadata, started = loaded
    log.info("gc settled", frozen=gc_policy.settle(collect=False))
    per_caller = bool(getattr(backend, "per_request", False))  # (inferd.backends.per_request)
    ipc.send(sock, {"type": ipc.LOADED, "metadata": metadata.to_dict(), "load_s": time.monotonic() - started,
                    "started_at": started,  # CLOCK_MONOTONIC is one clock for every process
                    "device": getattr(backend, "device_name", "cpu"),  # where it runs: "cpu" or "cuda:N"
                    "per_request": per_caller})

    while (msg := receiver.recv()) is not None:
        if msg["type"] == ipc.STOP:
            break
        if msg["type"] == ipc.PROFILE:
            ipc.send(sock, profile(backend, metadata, msg))
            continue
        if msg["type"] != ipc.EXECUTE:
            log.error("unexpected message", type=msg["type"])
            continue
        try:
            if msg.get("stream") is not None:  # a decoupled model's request: responses sent as they come
                reply = decoupled.run(backend, msg, sock, receiver, regions)
            elif per_caller and "callers" in msg:  # a per-request backend's batch: each caller answered on its own
                reply = per_request.reply(backend, msg, regions, _caller_failed)
            elif regions is None:
                outputs = backend.execute(ipc.unpack_tensors(msg["inputs"]), msg["outputs"])
                reply = {"type": ipc.RESULT, "batch": msg["batch"], "outputs": ipc.pack_tensors(outputs)}
            else:
                inputs, outputs_region = regions
                inputs.follow(msg["size"])
                outputs = backend.execute(inputs.read(msg["inputs"], copy=False), msg["outputs"])
                items = outputs_region.write({name: [array] for name, array in outputs.items()})
                reply = {"type": ipc.RESULT, "batch": msg["batch"], "outputs": items, "size": outputs_region.size}
        except Exception as e:
            reply = _failed(msg, e)
        model_metrics.batch_done()  # what the batch changed, on /metrics before its callers have their answers
        # Light load (poll_s): the next batch comes soon, so poll for it; the daemon posts it
        # in the mailbox without ringing while it knows this window is open.
        poll_s = msg.get("poll_s", 0.0)
        reply["polls_until"] = receiver.poll_until = time.monotonic() + poll_s if poll_s else 0.0
        _reply(sock, mailbox, reply, msg.get("mailbox_until") if receiver.posted else None)
    backend.unload()
    return 0


_PR_SET_PDEATHSIG = 1
_output: ModelOutput | None = None  # the model's stdout and stderr, read by a thread


def _become_worker() -> None:
    # (No NOTIFY_SOCKET or LISTEN_* here: the daemon takes them out of its environment at start,
    # before its forkserver exists; see inferd.daemon.operations.systemd.)
    global _output
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.setpgid(0, 0)  # a group of its own, killed with it (inferd.scheduler.spawner.Forked)
    except PermissionError:  # started by hand as a session leader: it leads its group already
        pass
    # Killed when its parent dies (the forkserver, which exits when the daemon does), even if
    # a model's infer never returns to notice that the daemon's socket ended.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _release_the_forkserver()
    with open("/proc/self/oom_score_adj", "w") as f:  # the OOM killer takes a worker first, not the daemon
        f.write("1000")
    # SCHED_BATCH: a woken worker does not preempt what runs on its CPU. The daemon's writes
    # to it are sync wake-ups that place the worker on the daemon's CPU, where it would run
    # its batch before the daemon's write even returned (measured: the write took 330 us at
    # p50 under gRPC load, and gRPC c=64 served 2,300 req/s instead of 2,800).
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    _output, own_stderr = ModelOutput.capture(log)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        # One write() per line: the daemon shares this stderr (fd 2 is now the model's pipe).
        logger_factory=structlog.WriteLoggerFactory(os.fdopen(own_stderr, "w", buffering=1)),
    )


def _release_the_forkserver() -> None:
    """multiprocessing hands every process the forkserver forks the write end of the pipe
    whose end tells the forkserver that the daemon is gone: while a worker held it, a daemon
    killed with SIGKILL left its forkserver, and so (PR_SET_PDEATHSIG) a stuck worker, running."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        os.close(fd)
        server._forkserver_alive_fd = None


def _end_worker() -> None:
    if _output is not None:
        _output.finish()


def child_main(sock: socket.socket) -> None:
    """The entry point of a worker forked by the forkserver; its exit code is serve()'s."""
    _become_worker()
    try:
        with sock:
            code = serve(sock)
    except Exception as e:  # a bug of the worker's: logged as an event, not lost in the pipe
        log.error("worker failed", error=f"{type(e).__name__}: {e}", exc_info=e)
        code = 1
    _end_worker()
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inferd-worker")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    _become_worker()
    try:
        with socket.socket(fileno=args.fd) as sock:
            return serve(sock)
    finally:
        _end_worker()


if __name__ == "__main__":
    sys.exit(main())
