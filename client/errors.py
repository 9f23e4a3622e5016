"""The one exception the client raises, with the protocol's error code."""

from __future__ import annotations

# HTTP statuses back to the data plane's codes (the inverse of the daemon's table).
_BY_STATUS = {
    400: "invalid_argument",
    401: "unauthenticated",
    404: "not_found",
    429: "resource_exhausted",
    499: "cancelled",
    500: "internal",
    501: "unimplemented",
    503: "unavailable",
    504: "deadline_exceeded",
}


class InferdClientError(Exception):
    """A failed call: `code` is the protocol's error code (e.g. "not_found"), `message` says why.

    Connection problems are "unavailable" too, so one `except` covers a daemon that is down,
    restarting or refusing work.
    """

    def __init__(self, code: str, message: str):
        super().__init__(code, message)  # both in args: the error pickles (multiprocessing, futures)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @classmethod
    def from_http_status(cls, status: int, message: str) -> InferdClientError:
        code = _BY_STATUS.get(status) or ("invalid_argument" if 400 <= status < 500 else "internal")
        return cls(code, message or f"HTTP {status}")
