"""Failpoints: crash the daemon at a named point, for crash-recovery tests.

`TRIGGERD_FAILPOINT=<name>` makes `hit(name)` send SIGKILL to this process — a real `kill -9`
at a precise moment (e.g. `after-trigger-write`: the trigger and its job are committed, the
dispatch has not started; `kafka-after-store`: a Kafka batch is stored, its offsets
not yet committed). Unset in production; the check is one dict lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("after-trigger-write", "kafka-after-store")


def hit(name: str) -> None:
    if os.environ.get("TRIGGERD_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
