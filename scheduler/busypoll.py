"""Busy polling on the daemon's event loop, for a short while after a worker's activity.

A request at low load crosses four sleeps: client -> daemon -> worker -> daemon -> client. Each
wake-up of a sleeping process costs tens of microseconds on a virtual machine whose idle vCPUs
halt (the host must schedule them again), far more than the work itself on a small model. While
a batch runs and for `busy_poll_us` after it ends, the loop keeps one callback ready, so uvloop
polls its sockets with a zero timeout instead of sleeping: the worker's reply and the client's
next request are read as they land. The worker process does the same on its side
(inferd.backends.ipc.Receiver). Idle, nothing polls; `busy_poll_us = 0` turns it off.

While polling, each turn also calls the `watch`ed functions: they look for a worker's answer
in its shared-memory mailbox (inferd.backends.mailbox). The last call comes after the window
ends, so a worker that posted before then need not ring the socket.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable

_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Poller] = weakref.WeakKeyDictionary()


class _Poller:
    # No reference to its loop: the loop is the key of a weak dictionary, which a value that
    # held it would keep alive for ever.
    def __init__(self):
        self.until = 0.0
        self.polling = False
        self.watchers: set[Callable[[], None]] = set()

    def tick(self) -> None:
        now = time.monotonic()  # read before the watchers run: see the module's docstring
        if self.watchers:
            for watcher in list(self.watchers):
                watcher()
        if now < self.until:
            asyncio.get_running_loop().call_soon(self.tick)
        else:
            self.polling = False


def _poller() -> _Poller:
    loop = asyncio.get_running_loop()
    poller = _pollers.get(loop)
    if poller is None:
        poller = _pollers[loop] = _Poller()
    return poller


def keep_polling(seconds: float) -> None:
    """Keep the running loop from sleeping for the next `seconds` (at least)."""
    if seconds <= 0:
        return
    poller = _poller()
    poller.until = max(poller.until, time.monotonic() + seconds)
    if not poller.polling:
        poller.polling = True
        asyncio.get_running_loop().call_soon(poller.tick)


def watch(check: Callable[[], None]) -> None:
    """Call `check` on each turn while the running loop polls (and once after its window)."""
    _poller().watchers.add(check)


def unwatch(check: Callable[[], None]) -> None:
    _poller().watchers.discard(check)
