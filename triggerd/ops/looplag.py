"""How late the event loop runs: the measure of anything that blocks it.

Every `INTERVAL` the monitor asks to wake after `INTERVAL` and records how much later it
actually woke: that delay is what every other task (the /healthz answer, the systemd
watchdog ping, a source's notification) waited at that moment. Exported as
`triggerd_event_loop_lag_seconds` (a histogram) and `triggerd_event_loop_lag_max_seconds`
(the worst since the daemon started).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

INTERVAL = 0.25  # seconds between two measurements


class LagSink(Protocol):
    def loop_lag(self, seconds: float) -> None: ...


async def watch(sink: LagSink, interval: float = INTERVAL) -> None:
    """Measure the loop's lag until cancelled."""
    while True:
        t0 = time.monotonic()
        await asyncio.sleep(interval)
        sink.loop_lag(max(0.0, time.monotonic() - t0 - interval))
