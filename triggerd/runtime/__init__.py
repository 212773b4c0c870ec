"""The runtime: what runs a daemon once its config is loaded.

- `daemon`: the composition root and the daemon's lifecycle (start, run, stop), signals;
- `build`: plugins (sources, backends) from the config, by their registered type;
- `supervisor`: each source in its own task, restarted with backoff; its `SourceContext`;
- `housekeeping`: the heartbeat, CLI requests, recovery of orphaned jobs, retention;
- `reload`: SIGHUP, applied by `reconfigure` on each component.
"""

from triggerd.runtime.daemon import Daemon, run_daemon

__all__ = ["Daemon", "run_daemon"]
