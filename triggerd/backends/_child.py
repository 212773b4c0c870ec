"""A child process started off the event loop and awaited on it, for the command backend.

`asyncio.create_subprocess_exec` forks on the loop thread, builds a transport and, on 3.11,
starts a thread per child to `waitpid` it: milliseconds from the call to a running child in
the daemon (bench/filesystem.py; bench/RESULTS.md). Here the spawn (`subprocess.Popen`, which
uses vfork) runs in a worker thread with the job's file work, in one trip, and the exit is
awaited on the loop through a pidfd (Linux >= 5.3): readable once the child has exited, so
`wait` reaps it without blocking. Where `os.pidfd_open` is missing, a worker thread waits instead.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping, Sequence


class Child:
    """A running child: `pid`, and `wait()` for its exit code (negative: killed by a signal,
    as with asyncio's `Process.returncode`)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._exited: asyncio.Future[None] | None = None

    async def wait(self) -> int:
        if self._popen.returncode is not None:
            return self._popen.returncode
        if self._exited is None:
            self._exited = _exit_future(self.pid)
        if self._exited is None:  # no pidfd here: a worker thread waits
            return await asyncio.to_thread(self._popen.wait)
        await asyncio.shield(self._exited)  # several waiters (timeout, detach) share it
        return self._popen.wait()  # exited: reaps at once


def spawn(argv: Sequence[str], *, stdout: int, cwd: str | None, env: Mapping[str, str]
          ) -> subprocess.Popen[bytes]:
    """Start `argv` (no shell) in its own session, stdin on /dev/null, stdout and stderr on
    `stdout`. Blocking (fork/exec): call it from a worker thread."""
    return subprocess.Popen(  # noqa: S603 - an argv list from the config, never a shell
        list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
        cwd=cwd, env=dict(env), start_new_session=True, close_fds=True)


def _exit_future(pid: int) -> asyncio.Future[None] | None:
    """A future done when `pid` has exited (not reaped), or None without pidfd support."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, done)
    return fut
