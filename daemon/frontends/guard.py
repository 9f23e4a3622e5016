"""Connection limits every listener shares: a cap on open connections, a deadline for a request
that has begun to arrive but is not complete, an idle timeout, and write-side backpressure.

`Guard` wraps each connection's protocol (aiohttp's, grpclib's, the Unix socket's). The front-end
says when a request begins and ends (`begin`/`end`); bytes that arrive while no request is in
progress start the partial-request clock. One sweep a second per listener closes connections
past their deadlines: no timer per connection or per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import resource
import time

import structlog

log = structlog.get_logger("inferd.connections")

SWEEP_S = 1.0
# Descriptors kept for workers, log and model files, and shared memory regions (at most
# daemon/shared_memory.MAX_REGIONS = 128 open at once).
FD_RESERVE = 256


@dataclasses.dataclass(frozen=True)
class Limits:
    max_connections: int
    partial_timeout_s: float  # a started request must be complete within this (0: no limit)
    idle_timeout_s: float  # a connection with no request in progress is closed after this
    write_buffer_bytes: int  # unread replies past this stop the connection being read
    body_timeout_s: float = 0.0  # a request's body (`Guard.body`) must have arrived within this of its head


class Guard(asyncio.Protocol):
    """One connection: forwards every event to the front-end's protocol and keeps the clocks."""

    def __init__(self, listener: GuardedListener, inner: asyncio.Protocol):
        self.listener = listener
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.active = 0  # requests in progress
        self.idle_since = time.monotonic()
        self.partial_since: float | None = None  # the first byte of a request not yet complete
        self.body = None  # the body of the request in progress, where the front-end streams it (HTTP)
        self.body_expired = False  # its reads were failed: the front-end closes after answering
        self.begun_at = 0.0
        self._read_paused = False

    # -- what the front-end says ------------------------------------------------------------

    def begin(self, body=None) -> None:
        """A request's head has arrived. `body`: its body's stream (aiohttp's StreamReader), if
        it is still arriving; the sweep fails the reads of one that takes too long."""
        self.active += 1
        self.partial_since = None
        self.body, self.begun_at, self.body_expired = body, time.monotonic(), False

    def end(self) -> None:
        self.active -= 1
        if self.active <= 0:
            self.active = 0
            self.idle_since = time.monotonic()
            self.partial_since = None
            self.body = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        limits = self.listener.limits
        transport.set_write_buffer_limits(high=limits.write_buffer_bytes)
        if not self.listener.admit(self):
            transport.abort()
            return
        self.inner.connection_made(transport)
        self.listener.on_connection(self)

    def data_received(self, data: bytes) -> None:
        if not self.active and self.partial_since is None:
            self.partial_since = time.monotonic()
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def connection_lost(self, exc) -> None:
        if self.listener.connections.pop(self.transport, None) is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        """The client does not read what it was sent: stop reading what it sends."""
        if self.listener.pause_reads and not self.transport.is_closing():
            self._read_paused = True
            self.transport.pause_reading()
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._read_paused and not self.transport.is_closing():
            self._read_paused = False
            self.transport.resume_reading()
        self.inner.resume_writing()

    # -- deadlines --------------------------------------------------------------------------

    def expired(self, now: float) -> str | None:
        limits = self.listener.limits
        if self.partial_since is not None and limits.partial_timeout_s and now - self.partial_since > limits.partial_timeout_s:
            return "request not complete in time"
        body = self.body
        if body is not None and limits.body_timeout_s and now - self.begun_at > limits.body_timeout_s and not body.is_eof():
            return "body not complete in time"
        if not self.active and limits.idle_timeout_s and now - self.idle_since > limits.idle_timeout_s:
            return "idle"
        return None



class GuardedListener:
    """The connections of one listener. `wrap(factory)` is the protocol factory to serve with."""

    pause_reads = True  # False when the front-end applies write backpressure itself

    def __init__(self, name: str, limits: Limits):
        self.name = name
        self.limits = limits
        self.connections: dict[asyncio.BaseTransport, Guard] = {}  # insertion order: oldest first
        self.refused = 0
        self._sweeper: asyncio.TimerHandle | None = None

    def wrap(self, factory):
        return lambda: Guard(self, factory())

    def admit(self, guard: Guard) -> bool:
        """At the cap, the connection idle the longest makes room; if none is idle, the new
        one is refused (closed at once)."""
        if len(self.connections) < self.limits.max_connections:
            return True
        idle = [g for g in self.connections.values() if not g.active]
        if idle:
            self.close_connection(min(idle, key=lambda g: g.idle_since))
            return True
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("connection limit reached; refusing connections", listener=self.name,
                        limit=self.limits.max_connections, refused=self.refused)
        return False

    def on_connection(self, guard: Guard) -> None:
        self.connections[guard.transport] = guard
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for guard in list(self.connections.values()):
            reason = guard.expired(now)
            if reason is None:
                continue
            log.debug("closing a connection", listener=self.name, reason=reason)
            if guard.body is not None and reason.startswith("body"):
                guard.body.set_exception(self.body_timed_out())  # its handler answers (HTTP 408)
                guard.body, guard.body_expired = None, True
            else:
                self.close_connection(guard)
        if self.connections:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def body_timed_out(self) -> Exception:
        return TimeoutError(f"the request body did not arrive within {self.limits.body_timeout_s:g} s")

    def close_connection(self, guard: Guard) -> None:
        """Close one connection now; cut it if the client has left replies unread (closing
        would wait for it to read them)."""
        transport = guard.transport
        if transport is not None:
            transport.abort() if transport.get_write_buffer_size() else transport.close()

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


def fit_to_descriptors(max_connections: int, listeners: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one, so that every listener can hold
    `max_connections`; where the hard limit is too low, lower the per-listener cap instead, so
    that idle connections on one listener cannot take the descriptors the others need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections * listeners + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
            soft = new_soft
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return max_connections
    fitted = max(1, (soft - FD_RESERVE) // max(1, listeners) if soft > 2 * FD_RESERVE else soft // (2 * max(1, listeners)))
    log.warning("too few file descriptors for server.max_connections; lowering it", configured=max_connections,
                per_listener=fitted, rlimit_nofile=soft)
    return fitted
