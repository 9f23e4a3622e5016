"""Errors shared by every layer.

`InferdError` carries a protocol-neutral `ErrorCode`; each front-end maps the code to its own
status through one table of its own, and the two wire protocols that carry codes as text (the
Unix socket, the worker IPC) through explicit tables too: the enum's values are not a wire
format, so renaming a member cannot silently change a protocol.

Every message is capped here (MAX_MESSAGE_CHARS), the one place all of them pass: a message
goes back to callers in places that cost more than its length (gRPC's `grpc-message` trailer is
HPACK-Huffman-encoded, quadratic in h2: a 1 MiB model name echoed there held the loop ~70 s).
Names a client chose are clipped inside messages with `clip()`.

`unexpected()` is the one fallback for an exception that is not an InferdError (a bug): it is
logged once with its traceback and answered INTERNAL with a short message that carries no
internals.
"""

from __future__ import annotations

import enum

import structlog

log = structlog.get_logger("inferd")

MAX_MESSAGE_CHARS = 1024  # an error message as callers see it
MAX_NAME_CHARS = 64  # a client-chosen name (model, input, output) quoted inside a message


def clip(name: object) -> str:
    """`name` quoted for a message (like {name!r}), clipped to MAX_NAME_CHARS characters."""
    text = name if isinstance(name, str) else str(name)
    if len(text) <= MAX_NAME_CHARS:
        return repr(text)
    return repr(text[:MAX_NAME_CHARS]) + f"... ({len(text):,} characters)"


def capped(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 20] + " ... (message cut)"


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = enum.auto()
    NOT_FOUND = enum.auto()
    FAILED_PRECONDITION = enum.auto()
    RESOURCE_EXHAUSTED = enum.auto()
    DEADLINE_EXCEEDED = enum.auto()
    CANCELLED = enum.auto()
    UNAVAILABLE = enum.auto()
    UNIMPLEMENTED = enum.auto()
    INTERNAL = enum.auto()


class InferdError(Exception):
    """A request-level failure that a client should see, with its code and a clear message."""

    def __init__(self, code: ErrorCode, message: str, retry_after_s: float | None = None):
        message = capped(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s  # a hint for the client (HTTP Retry-After)

    def __repr__(self) -> str:
        return f"InferdError({self.code.name}, {self.message!r})"


def invalid(message: str) -> InferdError:
    """The request is malformed or does not fit the model (the caller's fault)."""
    return InferdError(ErrorCode.INVALID_ARGUMENT, message)


class ConfigError(Exception):
    """Invalid configuration: names the file, the key and the reason."""

    def __init__(self, file: str, key: str, reason: str):
        super().__init__(f"{file}: {key}: {reason}")
        self.file = file
        self.key = key
        self.reason = reason


def unexpected(error: BaseException, event: str, **context) -> InferdError:
    """A bug, as every front-end answers it: the traceback goes to the log (here, once) and
    the caller gets INTERNAL with the exception's type only."""
    if isinstance(error, InferdError):
        return error
    log.error(event, error=f"{type(error).__name__}: {error}", exc_info=error, **context)
    return InferdError(ErrorCode.INTERNAL, f"internal error ({type(error).__name__}); the server's log has the details")
