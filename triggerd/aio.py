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
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until `event` is set, at most `seconds` (None: no limit); True if set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


async def to_the_end(awaitable: Awaitable[T],
                     late: Callable[[asyncio.Future[T]], None] | None = None) -> T:
    """Await `awaitable`; if the caller is cancelled meanwhile, still wait for it to end
    before the cancellation goes on (the awaitable itself is not cancelled), and hand its
    outcome (the finished future) to `late`, as the caller no longer can.

    For work on another thread that cannot be stopped once started (a store call): the
    caller keeps what it holds (a lock) until the thread is done with it, so nothing that
    waits on the lock overlaps the work (a reload swapping the rules it is using), and what
    the work did (triggers written, jobs claimed) is still handed on. The work is bounded, so
    the wait is too."""
    inner = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        while not inner.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([inner])
        if not inner.cancelled():
            inner.exception()  # retrieved: its outcome no longer has a caller
            if late is not None:
                late(inner)
        raise
