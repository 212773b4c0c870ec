"""systemd's notify protocol (sd_notify(3)), without a dependency.

`notify("READY=1")` sends one datagram to the AF_UNIX socket named by `$NOTIFY_SOCKET` (a
path, or `@name` for the abstract namespace); it does nothing when the variable is unset (not
under systemd `Type=notify`). `watchdog_interval()` is half of `$WATCHDOG_USEC` when the
watchdog is meant for this process (`$WATCHDOG_PID` unset or ours), else None.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("triggerd.sdnotify")


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=running"); True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:  # systemd gone, or a wrong path: never fatal
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout systemd set), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
