"""Errors shared by every layer.

`InferdError` carries a protocol-neutral `ErrorCode`; each front-end maps the code to its own
status through one table (HTTP in inferd.daemon.http). Nothing below the front-ends knows
about HTTP or gRPC statuses.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    FAILED_PRECONDITION = "failed_precondition"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"


class InferdError(Exception):
    """A request-level failure that a client should see, with its code and a clear message."""

    def __init__(self, code: ErrorCode, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s  # a hint for the client (HTTP Retry-After)

    def __repr__(self) -> str:
        return f"InferdError({self.code.name}, {self.message!r})"


class ConfigError(Exception):
    """Invalid configuration: names the file, the key and the reason."""

    def __init__(self, file: str, key: str, reason: str):
        super().__init__(f"{file}: {key}: {reason}")
        self.file = file
        self.key = key
        self.reason = reason
