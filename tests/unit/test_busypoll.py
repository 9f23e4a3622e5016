"""The event loop's busy poll: on for the window asked for, extended by later calls, then off."""

from __future__ import annotations

import asyncio
import time

from inferd.scheduler import busypoll


async def test_the_loop_polls_for_the_window_then_sleeps_again():
    loop = asyncio.get_running_loop()
    busypoll.keep_polling(0)  # off: nothing is scheduled
    assert loop not in busypoll._pollers or not busypoll._pollers[loop].polling

    started = time.monotonic()
    busypoll.keep_polling(0.05)
    poller = busypoll._pollers[loop]
    assert poller.polling and poller.until >= started + 0.05
    await asyncio.sleep(0.02)
    busypoll.keep_polling(0.05)  # a later call extends the window from now
    assert poller.until >= started + 0.07
    await asyncio.sleep(0.02)
    assert poller.polling  # still inside the extended window
    while poller.polling and time.monotonic() < started + 5:
        await asyncio.sleep(0.01)
    assert not poller.polling and time.monotonic() >= started + 0.07
