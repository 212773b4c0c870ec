"""watchdog's side of the filesystem source: the handler on the observer thread, the overflow
signal, and scheduling a root's watch with clear errors for what cannot be watched.

The handler runs on watchdog's observer thread: it only hands paths to the thread-safe
`Bridge` (`_bridge.py`), never an asyncio object.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch

from triggerd.errors import TriggerdError
from triggerd.sources._bridge import Bridge

STOP_TIMEOUT = 5.0  # seconds the source waits for watchdog's threads when it stops


def stop_observer(observer: BaseObserver) -> None:
    """Blocking: stop watchdog's observer and wait for its thread (run it with `bounded`)."""
    observer.stop()
    observer.join(STOP_TIMEOUT)


async def bounded(fn: Callable[[], object], seconds: float, name: str) -> bool:
    """Run a blocking watchdog call (`observer.stop`, `join`, `unschedule`) in a daemon
    thread and wait for it at most `seconds`; re-raise what it raised. False when it
    did not finish in time: it is left behind. watchdog joins its emitter threads without a
    timeout in `stop` and `unschedule`; one stuck thread must not hang the event loop (the
    daemon's stop) nor the interpreter's exit (so a daemon thread, not the loop's executor,
    whose threads the exit waits for)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finish(exc: BaseException | None) -> None:
        if not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

    def run() -> None:
        error: BaseException | None = None
        try:
            fn()
        except BaseException as exc:  # handed to the loop, raised there
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(finish, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        async with asyncio.timeout(seconds):
            await asyncio.shield(done)
    except TimeoutError:
        done.add_done_callback(_retrieved)  # what it raises later is nobody's to raise
        return False
    return True


def _retrieved(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "sshfs", "afs", "ceph"})


class WatchError(TriggerdError):
    """A root cannot be watched as configured (network filesystem, inotify limits)."""


class Handler(FileSystemEventHandler):
    """Runs on the observer thread: it only hands paths to the bridge."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def dispatch(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if event.dest_path else ""
        if event.is_directory:
            if event.event_type in ("created", "deleted", "moved"):
                self.bridge.put(src, "dir")
                if dest:
                    self.bridge.put(dest, "dir")
        elif event.event_type == "moved":
            self.bridge.put(src, "deleted")
            self.bridge.put(dest, "moved")
        elif event.event_type == "deleted":
            self.bridge.put(src, "deleted")
        elif event.event_type in ("closed", "created", "modified"):
            self.bridge.put(src, "modified")


class OverflowLog(logging.Handler):
    """watchdog reports an inotify queue overflow only in its log: turn that into a rescan."""

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(logging.WARNING)
        self.bridge = bridge

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.bridge.overflow("inotify queue overflow")


def fs_type(path: str) -> str | None:
    """The filesystem type of the mount holding `path` (Linux /proc/mounts), if known."""
    best, kind = "", None
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        return None
    return kind


def schedule(observer: BaseObserver, handler: Handler, path: str, real: str, *, poll: bool,
             deletes: bool) -> ObservedWatch:
    """Blocking: start watching the root `path` (adds an inotify watch per directory).

    Natively only close-after-write, moves and directory changes (and deletes when asked) are
    watched: watching every write overflowed the kernel queue under load."""
    kinds: list[type[FileSystemEvent]] = [FileMovedEvent, DirCreatedEvent, DirMovedEvent,
                                          DirDeletedEvent]
    if deletes:
        kinds.append(FileDeletedEvent)
    if not poll:
        fs = fs_type(real)
        if fs is not None and (fs in NETWORK_FS or fs.startswith("fuse")):
            raise WatchError(
                f"root {path} is on a {fs} filesystem, where inotify sees no changes "
                f"made by other machines; set `poll: 10s` (or another interval)")
        kinds.append(FileClosedEvent)
    else:
        kinds += [FileCreatedEvent, FileModifiedEvent]
    try:
        return observer.schedule(handler, path, recursive=True, event_filter=kinds)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise WatchError(
                f"cannot watch {path}: the inotify watch limit is exhausted; raise "
                f"the sysctl fs.inotify.max_user_watches (or set `poll`)") from exc
        if exc.errno == errno.EMFILE:
            raise WatchError(
                f"cannot watch {path}: too many inotify instances; raise the sysctl "
                f"fs.inotify.max_user_instances") from exc
        raise
