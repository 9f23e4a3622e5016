"""The event loop's busy poll: the loop stays awake (burns CPU) for the window asked for, a later
call extends it, and then the loop sleeps again."""

from __future__ import annotations

import asyncio
import gc
import time

from inferd.scheduler import busypoll


async def cpu_while_sleeping(seconds: float) -> float:
    """CPU this thread used while the loop had nothing to do but wait `seconds`."""
    started = time.thread_time()
    await asyncio.sleep(seconds)
    return time.thread_time() - started


async def test_the_loop_polls_for_the_window_then_sleeps_again():
    busypoll.keep_polling(0)  # off: nothing polls
    idle = await cpu_while_sleeping(0.1)

    started = time.monotonic()
    busypoll.keep_polling(0.1)
    polling = await cpu_while_sleeping(0.1)  # the loop spins through this wait instead of sleeping
    assert polling > 0.02 and polling > 5 * idle, (polling, idle)

    busypoll.keep_polling(0.05)  # a later call extends the window from now
    poller = busypoll._pollers[asyncio.get_running_loop()]
    assert poller.until >= started + 0.15
    while poller.polling and time.monotonic() < started + 5:
        await asyncio.sleep(0.01)
    assert not poller.polling
    after = await cpu_while_sleeping(0.1)
    assert after < polling / 5, (after, polling)


def test_a_closed_loop_is_not_kept_alive_by_its_poller():
    async def poll_briefly():
        busypoll.keep_polling(0.001)
        await asyncio.sleep(0.005)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(poll_briefly())
    assert loop in busypoll._pollers
    loop.close()
    del loop
    gc.collect()
    assert len([key for key in busypoll._pollers if key.is_closed()]) == 0


async def test_watchers_run_on_each_turn_while_polling_and_once_after_the_window():
    calls: list[float] = []

    def check() -> None:
        calls.append(time.monotonic())

    busypoll.watch(check)
    try:
        busypoll.keep_polling(0.02)
        poller = busypoll._pollers[asyncio.get_running_loop()]
        until = poller.until
        while poller.polling:
            await asyncio.sleep(0)
        assert len(calls) > 10  # many turns in 20 ms
        assert calls[-1] >= until  # the last look comes after the window: a post before it is seen
        seen = len(calls)
        await asyncio.sleep(0.02)
        assert len(calls) == seen  # the loop sleeps: nothing is called
    finally:
        busypoll.unwatch(check)
    busypoll.keep_polling(0.005)
    await asyncio.sleep(0.01)
    assert len(calls) == seen  # unwatched
