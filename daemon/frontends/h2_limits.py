"""The gRPC listener's connection limits, on top of every listener's (guard.py): HTTP/2's own
limit on concurrent streams, a PING budget, GOAWAY before closing (and a graceful one when the
drain starts), and a request per stream.

grpclib builds one `H2Protocol` per connection (an h2 `H2Connection`, grpclib's `Handler` and its
event processor); this hooks into those objects once, when the connection is made.
"""

from __future__ import annotations

import asyncio
import time
import weakref

import structlog
from h2.errors import ErrorCodes
from h2.events import PingReceived
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from inferd.daemon.frontends.guard import Guard, GuardedListener, Limits

log = structlog.get_logger("inferd.connections")

MAX_STREAM_ID = 2**31 - 1  # a GOAWAY naming it refuses no stream the client has opened (RFC 9113 6.8)
# Clients built on python-h2, whose state machine ends the connection at any GOAWAY and refuses
# the answers that follow it: told nothing at the drain, their calls in flight are answered.
GOAWAY_BREAKS = ("grpc-python-grpclib/",)


class _PingBudget:
    """A token bucket: `rate` PINGs a second, bursts of up to ten seconds' worth."""

    def __init__(self, rate: float):
        self.rate = rate
        self.capacity = max(10.0, 10 * rate)
        self.tokens = self.capacity
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1
        return self.tokens >= 0


class GrpcListener(GuardedListener):
    def __init__(self, limits: Limits, max_streams: int, max_pings_per_s: float):
        super().__init__("grpc", limits)
        self.max_streams = max_streams
        self.max_pings_per_s = max_pings_per_s
        self._no_goaway: weakref.WeakSet[Guard] = weakref.WeakSet()  # connections of GOAWAY_BREAKS clients
        self._agent_seen: weakref.WeakSet[Guard] = weakref.WeakSet()  # connections whose client is known

    def admit(self, guard: Guard) -> bool:
        if super().admit(guard):
            return True
        guard.inner.handler.close()  # grpclib's server keeps a handler per connection until it closes
        return False

    def on_connection(self, guard: Guard) -> None:
        super().on_connection(guard)
        protocol = guard.inner  # grpclib.protocol.H2Protocol
        protocol.connection._connection.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        protocol.connection.flush()
        _count_streams(guard, protocol.handler, self._note_client)
        if self.max_pings_per_s:
            budget = _PingBudget(self.max_pings_per_s)
            pong = protocol.processor.processors[PingReceived]

            def on_ping(event: PingReceived) -> None:
                if budget.take():
                    return pong(event)
                if guard.transport.is_closing():
                    return
                log.warning("HTTP/2 PING flood; closing the connection", listener=self.name)
                self.close_connection(guard, ErrorCodes.ENHANCE_YOUR_CALM)

            protocol.processor.processors[PingReceived] = on_ping

    def _note_client(self, guard: Guard, headers) -> None:
        if guard in self._agent_seen:  # a connection's client does not change: its first stream says
            return
        self._agent_seen.add(guard)
        agent = next((value for key, value in headers if key == "user-agent"), "")
        if agent.startswith(GOAWAY_BREAKS):
            self._no_goaway.add(guard)

    def go_away(self) -> int:
        """A graceful GOAWAY on every connection (NO_ERROR, last stream 2^31-1): the calls the
        client has started run to their answers, and it opens new streams on a new connection
        (through its balancer, elsewhere). A bare frame, written after what h2 has queued:
        h2's close_connection() would end the connection's state machine, and with it those
        answers; close_connection() below sends the final GOAWAY. Returns the connections told."""
        told = 0
        for guard in list(self.connections.values()):
            connection, transport = getattr(guard.inner, "connection", None), guard.transport
            if connection is None or transport is None or transport.is_closing() or guard in self._no_goaway:
                continue
            connection.flush()
            transport.write(GoAwayFrame(0, last_stream_id=MAX_STREAM_ID, error_code=ErrorCodes.NO_ERROR).serialize())
            told += 1
        return told

    def close_connection(self, guard: Guard, error: ErrorCodes = ErrorCodes.NO_ERROR) -> None:
        """GOAWAY first (the client knows its streams did not run), unless the client leaves
        what it was sent unread: then the connection is cut."""
        connection = getattr(guard.inner, "connection", None)
        transport = guard.transport
        if connection is not None and transport is not None and not transport.get_write_buffer_size():
            try:
                connection._connection.close_connection(error_code=error)
                connection.flush()
            except Exception:  # h2 refuses in some states: closing is what matters
                pass
            return transport.close()
        super().close_connection(guard)


def _count_streams(guard: Guard, handler, note_client) -> None:
    """Each stream grpclib accepts is a request in progress until grpclib releases it; the
    stream keeps its request headers, and `note_client(guard, headers)` sees them."""
    accept = handler.accept

    def accept_counted(stream, headers, release_stream):
        stream.headers = headers  # grpclib gives a handler no headers (grpc_compression reads grpc-encoding)
        note_client(guard, headers)
        guard.begin()
        released = False

        def release():
            nonlocal released
            if not released:
                released = True
                guard.end()
            return release_stream()

        return accept(stream, headers, release)

    handler.accept = accept_counted


async def finish_calls(server, timeout: float) -> None:
    """Wait (at most `timeout` s) until every running call has sent its answer: after the
    drain each one has an answer or UNAVAILABLE; grpclib's close() would cancel them unsent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [t for h in getattr(server, "_handlers", ()) for t in getattr(h, "_tasks", {}).values() if not t.done()]
        if not running:
            return
        await asyncio.wait(running, timeout=max(0.0, deadline - time.monotonic()))
