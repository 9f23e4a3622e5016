"""structlog set-up, done once by the CLI (and again on SIGHUP when [log] changes).

Formats: JSON lines on stderr; console rendering on a terminal; and under systemd the journal's
native protocol, one entry per event with structured fields (MESSAGE = the event, PRIORITY from
the level, MODEL, VERSION, REQUEST_ID, ... = the event's keys upper-cased), so that
`journalctl -u inferd MODEL=mlp` works. The journal needs systemd-python (`inferd[systemd]`);
without it the same events are JSON lines, which journald stores as plain messages.
"""

from __future__ import annotations

import logging
import os
import re
import sys

import orjson
import structlog

# syslog priorities (sd-journal PRIORITY=)
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2}
_NOT_A_FIELD = re.compile(r"[^A-Z0-9_]")


def _orjson_dumps(obj, default=None) -> str:
    return orjson.dumps(obj, default=default).decode()


def journal_fields(_logger, method: str, event: dict) -> dict:
    """The last processor for the journal: an event dict -> journal fields (str values).
    Field names may hold only A-Z, 0-9 and _ and must not start with _ (trusted fields)."""
    fields = {"MESSAGE": str(event.pop("event", "")),
              "PRIORITY": str(PRIORITIES.get(event.pop("level", method), 6)),
              "SYSLOG_IDENTIFIER": "inferd"}
    event.pop("timestamp", None)  # the journal stamps every entry itself
    for key, value in event.items():
        name = _NOT_A_FIELD.sub("_", key.upper()).lstrip("_")[:64]
        if not name or name in fields:
            name = f"INFERD_{name}"[:64]
        fields[name] = value if isinstance(value, str) else _orjson_dumps(value, default=str)
    return fields


class JournalLogger:
    """structlog's logger for the journal: every method sends one entry with the given fields."""

    def __init__(self, send):
        self._send = send

    def msg(self, **fields) -> None:
        message = fields.pop("MESSAGE")
        self._send(message, **fields)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _journal_send():
    """systemd.journal.send, or None when systemd-python is not installed."""
    try:
        from systemd import journal
    except ImportError:
        return None
    return journal.send


def under_journald(environ=os.environ, stream=sys.stderr) -> bool:
    """True when stderr is the journal stream systemd connected ($JOURNAL_STREAM = device:inode
    of that stream), not a pipe or file that a child of a service inherited the variable with."""
    try:
        device, inode = (int(x) for x in environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def configure(fmt: str = "auto", level: str = "info") -> str:
    """Set up structlog; returns the format in use (json, console or journal)."""
    used = fmt
    if fmt == "auto":
        used = "console" if sys.stderr.isatty() else "journal" if under_journald() else "json"
    send = _journal_send() if used == "journal" else None
    if used == "journal" and send is None:
        used = "json"  # no systemd-python: JSON lines, which journald keeps as the message
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if used == "journal":
        processors.append(journal_fields)
        factory = lambda *args: JournalLogger(send)  # noqa: E731
    else:
        json_renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        processors.append(structlog.dev.ConsoleRenderer() if used == "console" else json_renderer)
        # One write() per line (print() makes two: the line, then its newline, and with an
        # unbuffered stderr, as under the unit's PYTHONUNBUFFERED=1, a worker's line could land
        # between them). Workers share this stderr.
        factory = structlog.WriteLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    return used
