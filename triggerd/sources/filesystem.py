"""The `filesystem` source: files that land or change under watched roots.

Watching is a hint, the scan is the truth
    watchdog (inotify, or its polling observer with `poll`) only says *which path* to look at.
    What becomes an event is decided by looking: a file is compared with its row in the file
    table (`triggerd.store.files`) by (size, mtime_ns, inode); no row or a different one means
    new or changed. The tree is reconciled against the table at start (`scan_on_start`), every
    `rescan`, for a directory created or moved in, and at once after an inotify queue overflow
    (or a full bridge queue), so a lost notification delays an event but never loses it.

Settling and events
    A path becomes an event only once it is unchanged for `settle`; the destination of a
    rename is looked at at once. Natively only creations, close-after-write, moves (and deletes
    when asked) are watched: watching every write overflowed the kernel queue under load
    (issue 3); the rescan covers the rest. The timers, the verdicts and the events' shape
    (kinds, fingerprints, payload) are in `_fssettle.py`.

Special files
    A FIFO, socket or device where a file was to be read (one matching the patterns, or one
    swapped in by a rename between the look's `lstat` and its `open`) is never opened in a
    way that can block (`_fsscan.py`), never followed through a swapped-in symlink, and never
    an event: it is skipped, counted (`not_regular` in `triggerd status`), logged and
    recorded in the store's rejects (kind `not_regular`: `triggerd events --rejected`,
    `triggerd_rejected_messages` in /metrics), once per path (a FIFO is noticed again at each
    write and found again by each rescan). A known file replaced by one is gone.

Batches
    Events are emitted in batches of at most 1,000; the file rows they cover are written in
    the same store transaction (`ctx.emit(events, also=...)`): both are stored or neither, so
    a crash re-emits the batch rather than loses it. (Rows without events, and a file table
    that cannot join the transaction, are saved after `ctx.emit` returned.)

File table
    `FilesystemSource(name, options, files=...)`: the daemon passes a `StoreFileTable` bound to
    its store and store thread. Without one the source keeps an in-memory table, so every start
    finds every file new (correct, but each restart re-emits duplicates).

Modules and threads
    `_fswatch.py`: watchdog's handler (observer thread; it only calls `Bridge.put`,
    `_bridge.py`) and scheduling watches. `_fsscan.py`: the in-memory index of known files,
    the reconcile walk (which compares with the index in its thread, a directory at a time)
    and the settle look. `_fssettle.py`: the settle timers and the verdicts on looks.
    Walking, stat'ing, hashing and scheduling watches run in daemon threads
    (`_fswatch.in_thread`), never in the loop's default executor, whose threads the daemon's
    exit joins without a timeout: a stop abandons them, and they end at their next directory
    or hashed chunk. The observer is stopped and joined in a daemon thread that the
    source waits for at most 5 s (watchdog joins its own threads without a timeout). So a
    stop never waits on the filesystem, whatever a source thread is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserverVFS

from triggerd.plugin import FileRow, RejectLog, SourceContext, to_the_end
from triggerd.sources._bridge import Bridge
from triggerd.sources._fsoptions import DEFAULT_IGNORES, FilesystemOptions
from triggerd.sources._fsscan import Halted, Known, Look, Matcher, Root, Sig, look, walk
from triggerd.sources._fssettle import Pending, Settle
from triggerd.sources._fstable import FileTable, MemoryFileTable
from triggerd.sources._fswatch import (
    STOP_TIMEOUT,
    Handler,
    OverflowLog,
    WatchError,
    bounded,
    in_thread,
    native_observer,
    schedule,
    stop_observer,
)
from triggerd.sources._names import display, from_stored, stored

__all__ = ["DEFAULT_IGNORES", "FilesystemOptions", "FilesystemSource", "MemoryFileTable",
           "WatchError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

class FilesystemSource:
    """Emits an event per settled new, changed, moved-in (or deleted) file; see the module doc."""

    Options = FilesystemOptions
    # the daemon passes its store-backed file table as `files`, its reject log as `rejects`
    wants = ("files", "rejects")

    def __init__(self, name: str, options: FilesystemOptions, *,
                 files: FileTable | None = None, rejects: RejectLog | None = None,
                 root_check: float = 2.0, queue_limit: int = 10_000) -> None:
        """`files` is the daemon's store-backed table, `rejects` its reject log (special files
        are recorded there); `root_check` (seconds between checks that roots exist) and
        `queue_limit` (bridge bound) exist for tests."""
        self.name = name
        self.options = options
        self.files: FileTable = files if files is not None else MemoryFileTable()
        self.rejects = rejects
        self._root_check = root_check
        self._queue_limit = queue_limit
        self._roots = [Root(os.path.normpath(os.path.abspath(p))) for p in options.paths]
        self._watches: dict[str, ObservedWatch] = {}  # root path -> its watch
        self.matcher = Matcher(options.patterns, options.ignore, DEFAULT_IGNORES)
        self._known = Known()
        self._denied: set[str] = set()
        self._halt = threading.Event()  # set when `run` ends: its threads stop soon after
        self._health: tuple[bool, str | None] | None = None
        self.bridge: Bridge | None = None  # while running (tests inspect its counters)
        self.started = asyncio.Event()
        """Set once the present roots are watched and the start-up scan is done."""
        self.stats: dict[str, Any] = {
            "roots_watched": 0, "files_tracked": 0, "last_event_at": None,
            "last_scan_at": None, "last_scan_seconds": None, "overflows": 0,
            "permission_denied": 0, "bridge_dropped": 0, "not_regular": 0,
        }
        self._timers = Settle(name, options, self.wanted,
                              lambda: asyncio.get_running_loop().time(), self.stats)

    def wanted(self, rel: str) -> bool:
        """True when the root-relative path `rel` is watched (patterns minus ignores)."""
        return self.matcher.wanted(rel)

    def _root_of(self, path: str) -> Root | None:
        for root in self._roots:
            if root.present and root.rel(path) is not None:
                return root
        return None

    # -- the loop -------------------------------------------------------------------------
    async def run(self, ctx: SourceContext) -> None:
        loop = asyncio.get_running_loop()
        bridge = self.bridge = Bridge(loop, self._queue_limit)
        halt = self._halt = threading.Event()  # this run's: a rerun must not revive old threads
        # A restart after a failure (the supervisor calls run again): start from the table,
        # and look again at whatever was waiting to settle (its event was never stored).
        leftover = self._timers.restart()
        self._known = Known()
        for root in self._roots:  # the old observer is gone with its watches: watch anew
            root.present = False
        self._watches.clear()
        self._known.fill(await self.files.load_sigs(self.name), from_stored)
        self.stats["files_tracked"] = len(self._known)
        poll = self.options.poll
        # Polling snapshots with lstat, not watchdog's default os.stat: os.stat follows
        # directory symlinks, so a link leading outside the root was watched (its files became
        # events) and a symlink loop made every poll walk an exponential tree (a hang).
        observer: BaseObserver = (PollingObserverVFS(os.lstat, os.scandir,
                                                     polling_interval=poll.total_seconds())
                                  if poll is not False else native_observer(Observer))
        handler = Handler(bridge)
        overflow_log = OverflowLog(bridge)
        watchdog_log = logging.getLogger("watchdog.observers.inotify_c")
        watchdog_log.addHandler(overflow_log)
        observer.start()
        try:
            await self._check_roots(ctx, observer, handler, initial=True)
            for path, root, hint in leftover:
                self._timers.arm(path, root, hint, 0.0, rearm=False)
            if self.options.scan_on_start:
                await self._reconcile(ctx, [(r, r.path) for r in self._roots if r.present])
            await self._settle_due(ctx)
            self._report(ctx)
            self.started.set()
            next_rescan = loop.time() + self.options.rescan.total_seconds()
            next_check = loop.time() + self._root_check
            while True:
                drained = bridge.drain()
                self.stats["overflows"] = bridge.stats.overflows
                self.stats["bridge_dropped"] = bridge.stats.dropped
                subtrees = self._take(drained.items)
                if drained.overflow or loop.time() >= next_rescan:
                    if drained.overflow:
                        log.warning("filesystem source %s: %s; reconciling every root",
                                    self.name, ", ".join(drained.reasons))
                    await self._reconcile(ctx, [(r, r.path) for r in self._roots if r.present])
                    next_rescan = loop.time() + self.options.rescan.total_seconds()
                elif subtrees:
                    await self._reconcile(ctx, subtrees)
                if loop.time() >= next_check:
                    await self._check_roots(ctx, observer, handler, initial=False)
                    next_check = loop.time() + self._root_check
                await self._settle_due(ctx)
                self._report(ctx)
                wake = min(next_rescan, next_check, self._timers.next_due() or next_check)
                timeout = wake - loop.time()
                if timeout > 0 and not bridge.ready.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await bridge.ready.wait()
        except Exception as exc:
            self._set_health(ctx, False, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            halt.set()
            watchdog_log.removeHandler(overflow_log)
            if not await bounded(functools.partial(stop_observer, observer), STOP_TIMEOUT,
                                 "triggerd-watchdog-stop"):
                log.warning("filesystem source %s: watchdog's observer did not stop within "
                            "%.0fs; leaving its threads behind", self.name, STOP_TIMEOUT)

    def _report(self, ctx: SourceContext) -> None:
        """Publish `stats` for `triggerd status` (the daemon writes it ~once a second)."""
        report = getattr(ctx, "report", None)  # contexts written before report() existed
        if report is not None:
            report(dict(self.stats))

    def _set_health(self, ctx: SourceContext, healthy: bool, error: str | None) -> None:
        if self._health != (healthy, error):
            self._health = (healthy, error)
            ctx.set_health(healthy, error)

    async def _check_roots(self, ctx: SourceContext, observer: BaseObserver,
                           handler: Handler, *, initial: bool) -> None:
        """Watch roots that (re)appeared, drop those that vanished; report missing ones."""
        for root in self._roots:
            exists = await self._blocking(functools.partial(os.path.isdir, root.path))
            if exists and not root.present:
                root.real = await self._blocking(functools.partial(os.path.realpath, root.path))
                self._watches[root.path] = await self._blocking(functools.partial(
                    schedule, observer, handler, root.path, root.real,
                    poll=self.options.poll is not False, deletes="deleted" in self.options.events))
                root.present = True
                if not initial:
                    log.info("filesystem source %s: root %s appeared; scanning it",
                             self.name, root.path)
                    await self._reconcile(ctx, [(root, root.path)])
            elif not exists and root.present:
                log.warning("filesystem source %s: root %s disappeared; waiting for it",
                            self.name, root.path)
                root.present = False
                watch = self._watches.pop(root.path, None)
                if watch is not None:
                    with contextlib.suppress(KeyError):
                        if not await bounded(functools.partial(observer.unschedule, watch),
                                             STOP_TIMEOUT, "triggerd-watchdog-unschedule"):
                            log.warning("filesystem source %s: watchdog did not drop the "
                                        "watch of %s within %.0fs; leaving it", self.name,
                                        root.path, STOP_TIMEOUT)
        missing = [r.path for r in self._roots if not r.present]
        self.stats["roots_watched"] = len(self._roots) - len(missing)
        if missing:
            self._set_health(ctx, False, "; ".join(f"root {p} does not exist yet"
                                                   for p in missing))
        else:
            self._set_health(ctx, True, None)

    def _blocking(self, fn: Callable[[], T]) -> Coroutine[Any, Any, T]:
        """Run a blocking filesystem call off the loop, in a thread no stop waits for."""
        return in_thread(fn, f"triggerd-fs-{self.name}")

    # -- notifications and the settle timer ----------------------------------------------
    def _take(self, items: dict[str, str]) -> list[tuple[Root, str]]:
        """Arm the settle timer for notified files (the destination of a rename: a look at
        once, see the module doc); return directories to reconcile."""
        subtrees: list[tuple[Root, str]] = []
        for path, hint in items.items():
            root = self._root_of(path)
            if root is None:
                continue
            if hint == "dir":
                subtrees.append((root, path))
                continue
            rel = root.rel(path)
            if rel and (self.wanted(rel) or path in self._known):
                self._timers.arm(path, root, hint, 0.0 if hint == "moved" else self._timers.seconds,
                          rearm=True)
        return subtrees

    async def _settle_due(self, ctx: SourceContext) -> None:
        """Look at every file whose timer fell due, in batches, and emit what settled. The
        next batch is looked at (stat, hash: a worker thread) while this one is stored."""
        due = self._timers.due_batch()
        looking = self._look_at(due)
        while due:
            looks = await looking
            after, due = due, self._timers.due_batch()
            looking = self._look_at(due)
            try:
                await self._conclude(ctx, after, looks)
            except BaseException:
                # not stored: these files stay pending, to be looked at again by the next run
                looking.cancel()
                self._timers.put_back(after)
                raise

    def _look_at(self, due: list[tuple[str, Pending]]) -> asyncio.Future[list[Look]]:
        if not due:
            done: asyncio.Future[list[Look]] = asyncio.get_running_loop().create_future()
            done.set_result([])
            return done
        asks = [(p, e.root, e.sig, self._known.sig(p)) for p, e in due]
        return asyncio.ensure_future(self._blocking(
            functools.partial(self._look_all, asks, self._halt.is_set)))

    def _look_all(self, asks: list[tuple[str, Root, Sig | None, Sig | None]],
                  halted: Callable[[], bool]) -> list[Look]:
        now_ns = time.time_ns()
        by_content = self.options.fingerprint == "sha256"
        linked: dict[str, bool] = {}
        looks = []
        for path, root, prev, known in asks:
            if halted():
                raise Halted
            looks.append(look(path, root, prev, known, now_ns, self._timers.seconds, by_content,
                              self._log_denied, linked, halted))
        return looks

    def _log_denied(self, path: str, exc: OSError) -> None:
        """Called from worker threads: an unreadable file or directory, logged once."""
        if path not in self._denied:
            self._denied.add(path)
            self.stats["permission_denied"] += 1
            log.warning("filesystem source %s: cannot read %s: %s (logged once; carrying on)",
                        self.name, display(path), exc.strerror or exc)

    async def _conclude(self, ctx: SourceContext, due: list[tuple[str, Pending]],
                        looks: list[Look]) -> None:
        """Turn looks into events; emit them; only then record the file rows."""
        now = ctx.clock.now()
        found = self._timers.conclude(due, looks, self._known, now)
        if found.rejected and self.rejects is not None:
            try:
                await self.rejects.add(found.rejected)
            except BaseException:  # not recorded: reported again later
                self._timers.special.difference_update(found.rejected_paths)
                raise
        joined = None
        if found.events:
            # the rows go into the events' own transaction where the table can join it: both
            # are stored or neither (one commit per batch, nothing left to save afterwards)
            joined = self.files.with_events(self.name, [row for _path, row in found.saves],
                                            [stored(p) for p in found.gone])
            await ctx.emit(found.events, also=joined)
            self.stats["last_event_at"] = now.isoformat()
        # The events are stored (with their rows, if joined): record the rest even if shutdown
        # cancels us meanwhile, so a clean stop leaves no duplicate to re-emit.
        await to_the_end(self._record(found.saves, found.gone,
                                      stored_already=joined is not None), _failed_late)

    async def _record(self, saves: list[tuple[str, FileRow]], gone: list[str], *,
                      stored_already: bool = False) -> None:
        if saves:
            if not stored_already:
                await self.files.save(self.name, [row for _path, row in saves])
            for path, row in saves:
                self._known.put(path, row.sig)
        if gone:
            if not stored_already:
                await self.files.delete(self.name, [stored(p) for p in gone])
            for p in gone:
                self._known.drop(p)
        self.stats["files_tracked"] = len(self._known)

    # -- reconcile ------------------------------------------------------------------------
    async def _reconcile(self, ctx: SourceContext, targets: Sequence[tuple[Root, str]]) -> None:
        """Compare the trees under `targets` with the file table; arm what is new, changed or
        gone (looked at at once: a file still being written is left to the settle logic)."""
        started, t0 = ctx.clock.now(), time.monotonic()
        for root, start in targets:
            found = await self._blocking(functools.partial(
                walk, root, start, self.matcher, self._known, self._log_denied,
                self._halt.is_set))
            if found is None:
                continue  # the root itself is missing: never take that as "everything deleted"
            for path in found.changed:
                self._timers.arm(path, root, "created", 0.0, rearm=False)
            for path in found.gone:
                self._timers.arm(path, root, "deleted", 0.0, rearm=False)
            for path in found.special:  # counted at its look, once per path
                if path not in self._timers.special:
                    self._timers.arm(path, root, "created", 0.0, rearm=False)
            # known files of directories that the walk did not list (removed, or now ignored)
            for directory in self._known.dirs_below(start):
                if directory not in found.listed:
                    for path in self._known.in_dir(directory):
                        if root.rel(path):
                            self._timers.arm(path, root, "deleted", 0.0, rearm=False)
        self.stats["last_scan_at"] = started.isoformat()
        self.stats["last_scan_seconds"] = round(time.monotonic() - t0, 3)



def _failed_late(recording: asyncio.Future[None]) -> None:
    if recording.exception() is not None:
        log.warning("recording file rows failed during shutdown: %s", recording.exception())
