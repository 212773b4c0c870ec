"""watchdog's side of the filesystem source: the observer, the handler on its thread, the
overflow signal, scheduling a root's watch with clear errors for what cannot be watched, and
running blocking calls off the loop (`in_thread`, `bounded`).

The handler runs on watchdog's observer thread: it only hands paths to the thread-safe
`Bridge` (`_bridge.py`), never an asyncio object.

Moves across a root's edge
    inotify reports a rename as IN_MOVED_FROM + IN_MOVED_TO with one cookie, each only where a
    watch sees it. A file moved in from an unwatched directory (write in a staging directory,
    `mv` into the root: the usual atomic publish) gives IN_MOVED_TO alone. watchdog's default
    inotify emitter turns that into a `FileCreatedEvent`, which the event filter (close-write,
    moves, directories) dropped: such a file waited for the next `rescan` (with creations
    delivered, below, it would be a creation that settles, not a rename). The observer is
    therefore built with `generate_full_events=True`: an unpaired IN_MOVED_TO arrives as a
    `FileMovedEvent` with an empty `src_path` (and an unpaired IN_MOVED_FROM, a file moved out,
    as one with an empty `dest_path`), handled like any rename. A directory moved in arrives
    as a `DirMovedEvent` with an empty `src_path` (its tree is then reconciled).

Creations
    Natively a regular file is noticed by its close-after-write (or its move). A FIFO, socket
    or device made in place (`mkfifo`) has no close-write: `FileCreatedEvent` is therefore
    delivered too, so the source looks at it, counts it and says why it is no event. inotify
    queues IN_CREATE for a recursive watch anyway (watchdog needs it for new directories), so
    this adds no kernel events, only a coalesced bridge entry per new file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

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

from triggerd.plugin import TriggerdError
from triggerd.sources._bridge import Bridge

STOP_TIMEOUT = 5.0  # seconds the source waits for watchdog's threads when it stops
T = TypeVar("T")


def stop_observer(observer: BaseObserver) -> None:
    """Blocking: stop watchdog's observer and wait for its thread (run it with `bounded`)."""
    observer.stop()
    observer.join(STOP_TIMEOUT)


async def in_thread(fn: Callable[[], T], name: str) -> T:
    """Run the blocking `fn` in a daemon thread of its own and return what it returns (or
    raise what it raised). Cancelling the caller abandons the thread: it runs on, and what it
    returns or raises is dropped. The source's blocking work (walks, looks, hashing, watches)
    runs here, never in the loop's default executor (`asyncio.to_thread`): `asyncio.run` and
    the interpreter's exit join that executor's threads without a timeout, so one thread stuck
    in a read (a hung mount) or busy hashing a huge file would hold up the daemon's stop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def finish(result: T | None, exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(cast(T, result))
        else:
            done.set_exception(exc)

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to the loop, raised there
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(finish, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        done.add_done_callback(_retrieved)  # what it raises later is nobody's to raise
        raise


async def bounded(fn: Callable[[], object], seconds: float, name: str) -> bool:
    """Run a blocking watchdog call (`observer.stop`, `join`, `unschedule`) with `in_thread`
    and wait for it at most `seconds`; re-raise what it raised. False when it did not finish
    in time: it is left behind. watchdog joins its emitter threads without a timeout in `stop`
    and `unschedule`; one stuck thread must not hang the event loop (the daemon's stop) nor
    the interpreter's exit."""
    try:
        async with asyncio.timeout(seconds):
            await in_thread(fn, name)
    except TimeoutError:
        return False
    return True


def _retrieved(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "sshfs", "afs", "ceph"})


class WatchError(TriggerdError):
    """A root cannot be watched as configured (network filesystem, inotify limits)."""


def native_observer(observer_class: Callable[..., BaseObserver]) -> BaseObserver:
    """The native observer; inotify's reports moves into or out of the watched tree as moves
    with an empty side (see the module doc), other platforms' as they do."""
    full = False
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver  # importable on Linux only

        full = isinstance(observer_class, type) and issubclass(observer_class, InotifyObserver)
    return observer_class(generate_full_events=True) if full else observer_class()


class Handler(FileSystemEventHandler):
    """Runs on the observer thread: it only hands paths to the bridge."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def dispatch(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path) if event.src_path else ""
        dest = os.fsdecode(event.dest_path) if event.dest_path else ""
        if event.is_directory:
            if event.event_type in ("created", "deleted", "moved"):
                for path in (src, dest):
                    if path:
                        self.bridge.put(path, "dir")
        elif event.event_type == "moved":  # src or dest is empty across a root's edge
            if src:
                self.bridge.put(src, "deleted")
            if dest:
                self.bridge.put(dest, "moved")
        elif event.event_type == "deleted":
            self.bridge.put(src, "deleted")
        elif event.event_type == "created" and event.is_synthetic:
            # watchdog lists a directory moved in as "created" files: its reconcile (the
            # directory's own event) looks at them at once, a notification would settle first
            return
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

    Natively only creations, close-after-write, moves and directory changes (and deletes when
    asked) are watched: watching every write overflowed the kernel queue under load."""
    kinds: list[type[FileSystemEvent]] = [FileMovedEvent, FileCreatedEvent, DirCreatedEvent,
                                          DirMovedEvent, DirDeletedEvent]
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
        kinds.append(FileModifiedEvent)
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
