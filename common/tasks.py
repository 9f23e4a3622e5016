"""Background tasks with an owner.

A task nobody keeps may be garbage-collected mid-way, and one nobody awaits fails in silence.
A `TaskSet` keeps each task until it ends, logs a failure once with its traceback (a
cancellation is not a failure), and `cancel()` ends them all and waits for them, so nothing is
left running, or unreported, at shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

import structlog

log = structlog.get_logger("inferd")


class TaskSet:
    def __init__(self, owner: str):
        self.owner = owner  # names the tasks in the log
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine, group: set[asyncio.Task] | None = None) -> asyncio.Task:
        """Run `coro` as a task of this set (and of `group`, a set the caller waits on)."""
        task = asyncio.get_running_loop().create_task(coro)
        for tasks in (self._tasks, group):
            if tasks is not None:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        task.add_done_callback(self._report)
        return task

    def _report(self, task: asyncio.Task) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background task failed", owner=self.owner, task=task.get_coro().__qualname__,
                      error=f"{type(error).__name__}: {error}", exc_info=error)

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel_soon(self) -> None:
        """Cancel every task without waiting for them (they end, and are reported, by themselves)."""
        for task in list(self._tasks):
            task.cancel()

    async def cancel(self) -> None:
        """Cancel every task and wait until all have ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
