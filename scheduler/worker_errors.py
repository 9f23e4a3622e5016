"""What a worker's failures mean to the daemon and its callers: a load that failed, a worker
lost mid-batch, a batch out of memory, a failure the worker reported (a batch's or one
caller's), an exit status in words."""

from __future__ import annotations

import signal

from inferd.backends import ipc
from inferd.common.errors import ErrorCode, InferdError


class LoadFailed(Exception):
    """The worker could not load the model; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class WorkerLost(InferdError):
    """The worker process went away while running a batch: the batch may be retried elsewhere."""

    def __init__(self, how: str = "") -> None:
        how = f" ({how})" if how else ""
        super().__init__(ErrorCode.UNAVAILABLE, f"the model's worker process exited{how} while running this request")


class OutOfMemory(InferdError):
    """The runtime could not allocate memory for a batch: the queue splits it and lowers the limit."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, f"out of memory: {message}", retry_after_s=1)


def worker_error(wire_code: str, message: str) -> InferdError:
    """A worker's FAILED (a batch's) or a caller's failure, as the callers get it."""
    code = ipc.error_code(wire_code)
    return OutOfMemory(message) if code is ErrorCode.RESOURCE_EXHAUSTED else InferdError(code, message)


def describe_exit(code: int | None) -> str:
    """'exit code 3', 'signal SIGKILL', for logs and reasons."""
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
