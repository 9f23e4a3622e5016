"""Waiting for something the daemon does in its own time, without fixed sleeps."""

from __future__ import annotations

import asyncio
import time


async def eventually(condition, timeout: float = 60, what: str = "the condition"):
    """Poll `condition` (a function, or an async one) until it returns something true, which is
    returned; fail after `timeout`. For what the daemon reaches on its own time (loads take a
    worker start)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
