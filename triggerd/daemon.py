"""`triggerd.daemon` is `triggerd.runtime.daemon` (kept for imports written before the
runtime package)."""

from triggerd.runtime.daemon import Daemon, run_daemon

__all__ = ["Daemon", "run_daemon"]
