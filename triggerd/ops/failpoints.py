"""Failpoints: crash the daemon at a named point, for crash-recovery tests.

`TRIGGERD_FAILPOINT=<name>` makes `hit(name)` send SIGKILL to this process — a real `kill -9`
at a precise moment: `after-trigger-write` (the trigger and its queued job are committed, not
yet claimed), `after-claim` (the job is claimed, running attempt 1, its backend not yet
called), `kafka-after-store` (a Kafka batch is stored, its offsets not yet committed). Unset
in production; the check is one dict lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("after-trigger-write", "after-claim", "kafka-after-store")


def hit(name: str) -> None:
    if os.environ.get("TRIGGERD_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
