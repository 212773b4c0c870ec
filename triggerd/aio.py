"""Waiting in asyncio without `asyncio.wait_for`.

On Python 3.11, `asyncio.wait_for` loses a cancellation that arrives in the same loop
iteration as the awaited thing completing: it returns normally, and a `while True` loop around
it runs on. That hung the daemon's stop (SIGTERM) when a job ended, or a decision woke the
timers, just as the daemon cancelled its tasks (reproduced, fixed in 3.12).
`asyncio.timeout` keeps the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until `event` is set, at most `seconds` (None: no limit); True if set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
