"""The `filesystem` source: files that land or change under watched roots (SPEC 3, `landing`).

Watching is a hint, the scan is the truth
    watchdog (inotify, or its polling observer with `poll`) only says *which path* to look at.
    What becomes an event is decided by looking: a file is compared with its row in the file
    table (`triggerd.store.files`) by (size, mtime_ns, inode); no row or a different one means
    new or changed. The tree is reconciled against the table at start (`scan_on_start`), every
    `rescan`, for a directory created or moved in, and at once after an inotify queue overflow
    (or a full bridge queue), so a lost notification delays an event but never loses it.

Settling
    A path becomes an event only once it is unchanged for `settle`: a notification (re)arms a
    timer on the loop (one heap, no polling of idle files); when it falls due the file is stat'ed
    off the loop. It is settled when (size, mtime_ns) equal those of the previous look, or, on the
    first look, when its mtime is already `settle` old. Otherwise it is looked at again `settle`
    later. Natively only close-after-write, moves (and deletes when asked) are watched: watching
    every write overflowed the kernel queue under load (issue 3); the rescan covers the rest.

Events
    kind: created | modified | moved (the destination of a rename) | deleted; subject: the
    absolute path; fingerprint: `relpath + ":" + sha256 hex` (or `size:mtime_ns:inode` with
    `fingerprint: stat`), so the same content at the same path is a duplicate the store counts.
    payload: path, relpath, dir, name, size, mtime (ISO 8601 UTC), root, and sha256.
    Events are emitted in batches of at most 500; the file rows they cover are saved only after
    `ctx.emit` returned, so a crash re-emits (a counted duplicate) rather than loses.

File table
    `FilesystemSource(name, options, files=...)`: the daemon passes a `StoreFileTable` bound to
    its store and store thread. Without one the source keeps an in-memory table, so every start
    finds every file new (correct, but each restart re-emits duplicates).

Threads
    watchdog's handler runs on the observer thread and only calls `Bridge.put` (`_bridge.py`).
    Scanning, stat'ing, hashing and scheduling watches run in `asyncio.to_thread`. On stop the
    observer is stopped and joined with `await asyncio.to_thread(observer.join, 5)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import heapq
import logging
import os
import stat
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field, field_validator
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
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserverVFS

from triggerd.config.types import Duration, Strict
from triggerd.engine.globs import compile_glob
from triggerd.errors import ExpressionError, TriggerdError
from triggerd.interfaces import SourceContext
from triggerd.model import Event
from triggerd.sources._bridge import Bridge
from triggerd.store.files import FileRow, FileTable

__all__ = ["DEFAULT_IGNORES", "FilesystemOptions", "FilesystemSource", "MemoryFileTable",
           "WatchError"]

log = logging.getLogger(__name__)

DEFAULT_IGNORES = ("*.tmp", "*.part", ".*", "*~", "*.swp", ".goutputstream-*")
"""Partial-write and editor files, matched against every component of a relative path."""
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "sshfs", "afs", "ceph"})
BATCH = 500
CHUNK = 1 << 20
Sig = tuple[int, int, int]  # size, mtime_ns, inode
Kind = Literal["created", "modified", "moved", "deleted"]


def _default_events() -> list[Kind]:
    return ["created", "modified", "moved"]


class WatchError(TriggerdError):
    """A root cannot be watched as configured (network filesystem, inotify limits)."""


class FilesystemOptions(Strict):
    """Options of a `type: filesystem` source (SPEC 3, source `landing`)."""

    type: Literal["filesystem"]
    paths: list[str] = Field(min_length=1)
    """Roots to watch; globs are relative to each."""
    patterns: list[str] = Field(default_factory=lambda: ["**/*"])
    """A file is watched when its path relative to the root matches one of these."""
    ignore: list[str] = Field(default_factory=list)
    """Relative-path globs to skip, on top of DEFAULT_IGNORES (any path component)."""
    events: list[Kind] = Field(default_factory=_default_events, min_length=1)
    settle: Duration = timedelta(seconds=5)
    """Emit only once a file's size and mtime are unchanged this long."""
    fingerprint: Literal["sha256", "stat"] = "sha256"
    poll: Literal[False] | Duration = False
    """An interval to poll instead of inotify (NFS, CIFS, FUSE)."""
    scan_on_start: bool = True
    rescan: Duration = timedelta(minutes=10)

    @field_validator("patterns", "ignore")
    @classmethod
    def _valid_globs(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                compile_glob(pattern)
            except ExpressionError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("rescan")
    @classmethod
    def _valid_rescan(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("`rescan` must be at least 1s")
        return value

    @field_validator("poll")
    @classmethod
    def _valid_poll(cls, value: Literal[False] | timedelta) -> Literal[False] | timedelta:
        if value is not False and value < timedelta(milliseconds=100):
            raise ValueError("`poll` must be false or at least 100ms")
        return value


class MemoryFileTable:
    """A `FileTable` that lives as long as the process (used when the daemon passes none)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, FileRow]] = {}

    async def load(self, source: str) -> dict[str, FileRow]:
        return dict(self.rows.get(source, {}))

    async def save(self, source: str, rows: Sequence[FileRow]) -> None:
        self.rows.setdefault(source, {}).update((r.path, r) for r in rows)

    async def delete(self, source: str, paths: Sequence[str]) -> None:
        table = self.rows.get(source, {})
        for p in paths:
            table.pop(p, None)


@dataclass(eq=False)
class _Root:
    path: str  # absolute, as configured (normalised)
    real: str = ""  # its realpath while present: symlinks must stay below it
    watch: ObservedWatch | None = None
    present: bool = False

    def rel(self, path: str) -> str | None:
        prefix = self.path.rstrip("/") + "/"
        return path[len(prefix):] if path.startswith(prefix) else None


@dataclass(eq=False)
class _Pending:
    root: _Root
    hint: str
    due: float
    sig: Sig | None = None


@dataclass(frozen=True, slots=True)
class _Look:
    verdict: Literal["gone", "same", "skip", "changing", "settled"]
    sig: Sig | None = None
    content: str = ""  # the content/stat fingerprint of a settled file
    sha256: str | None = None


class _Handler(FileSystemEventHandler):
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


class _OverflowLog(logging.Handler):
    """watchdog reports an inotify queue overflow only in its log: turn that into a rescan."""

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(logging.WARNING)
        self.bridge = bridge

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.bridge.overflow("inotify queue overflow")


def _fs_type(path: str) -> str | None:
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


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _through_link(directory: str, root: _Root) -> bool:
    """Blocking: True when `directory` (at or below `root.path`) is, or lies below, a symlink
    below the root, i.e. its real path is not the root's real path plus its relative path."""
    rel = root.rel(directory)
    expected = root.real if rel is None else os.path.join(root.real, rel)
    return os.path.realpath(directory) != os.path.normpath(expected)


async def _uncancelled(coro: Coroutine[Any, Any, None]) -> None:
    """Run `coro` to its end even if the caller is cancelled meanwhile, then re-raise that."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            log.warning("recording file rows failed during shutdown: %s", task.exception())
        raise


def _iso_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


class FilesystemSource:
    """Emits an event per settled new, changed, moved-in (or deleted) file; see the module doc."""

    Options = FilesystemOptions
    wants = ("files",)  # the daemon passes its store-backed file table as `files`

    def __init__(self, name: str, options: FilesystemOptions, *,
                 files: FileTable | None = None, root_check: float = 2.0,
                 queue_limit: int = 10_000) -> None:
        """`files` is the daemon's store-backed table; `root_check` (seconds between checks that
        roots exist) and `queue_limit` (bridge bound) exist for tests."""
        self.name = name
        self.options = options
        self.files: FileTable = files if files is not None else MemoryFileTable()
        self._root_check = root_check
        self._queue_limit = queue_limit
        self._roots = [_Root(os.path.normpath(os.path.abspath(p))) for p in options.paths]
        self._patterns = [compile_glob(p) for p in options.patterns]
        self._ignore = [compile_glob(p) for p in options.ignore]
        self._default_ignore = [compile_glob(p) for p in DEFAULT_IGNORES]
        self._settle = options.settle.total_seconds()
        self._known: dict[str, FileRow] = {}
        self._by_dir: dict[str, set[str]] = {}  # directory -> its known files (reconcile)
        self._pending: dict[str, _Pending] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._denied: set[str] = set()
        self._health: tuple[bool, str | None] | None = None
        self.bridge: Bridge | None = None  # while running (tests inspect its counters)
        self.started = asyncio.Event()
        """Set once the present roots are watched and the start-up scan is done."""
        self.stats: dict[str, Any] = {
            "roots_watched": 0, "files_tracked": 0, "last_event_at": None,
            "last_scan_at": None, "last_scan_seconds": None, "overflows": 0,
            "permission_denied": 0, "bridge_dropped": 0, "undecodable_names": 0,
        }

    # -- matching ---------------------------------------------------------------------------
    def _ignored_name(self, name: str) -> bool:
        return any(p.fullmatch(name) for p in self._default_ignore)

    def wanted(self, rel: str, *, parents_checked: bool = False) -> bool:
        """True when the root-relative path `rel` is watched (patterns minus ignores).
        `parents_checked`: the walk already skipped ignored names on the way down (a walk
        starting below an ignored directory is caught by `_conclude`'s full check)."""
        if parents_checked:
            if self._ignored_name(rel.rpartition("/")[2]):
                return False
        elif any(self._ignored_name(part) for part in rel.split("/")):
            return False
        if not rel.isascii() and not self._encodable(rel):
            return False
        if any(p.fullmatch(rel) for p in self._ignore):
            return False
        return any(p.fullmatch(rel) for p in self._patterns)

    def _encodable(self, rel: str) -> bool:
        """Names that are not valid UTF-8 cannot be stored yet (JSON, SQL text): skip them,
        logged once, instead of failing every emit. TODO(issue 3): deliver them as data."""
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            if rel not in self._denied:
                self._denied.add(rel)
                self.stats["undecodable_names"] += 1
                log.warning("filesystem source %s: skipping %r: its name is not valid UTF-8",
                            self.name, rel)
            return False
        return True

    def _root_of(self, path: str) -> _Root | None:
        for root in self._roots:
            if root.present and root.rel(path) is not None:
                return root
        return None

    # -- the loop -------------------------------------------------------------------------
    async def run(self, ctx: SourceContext) -> None:
        loop = asyncio.get_running_loop()
        bridge = self.bridge = Bridge(loop, self._queue_limit)
        self._known = await self.files.load(self.name)
        for path in self._known:
            self._by_dir.setdefault(os.path.dirname(path), set()).add(path)
        poll = self.options.poll
        # Polling snapshots with lstat, not watchdog's default os.stat: os.stat follows
        # directory symlinks, so a link leading outside the root was watched (its files became
        # events) and a symlink loop made every poll walk an exponential tree (a hang).
        observer: BaseObserver = (PollingObserverVFS(os.lstat, os.scandir,
                                                     polling_interval=poll.total_seconds())
                                  if poll is not False else Observer())
        handler = _Handler(bridge)
        overflow_log = _OverflowLog(bridge)
        watchdog_log = logging.getLogger("watchdog.observers.inotify_c")
        watchdog_log.addHandler(overflow_log)
        observer.start()
        try:
            await self._check_roots(ctx, observer, handler, initial=True)
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
                wake = min(next_rescan, next_check, self._heap[0][0] if self._heap else next_check)
                timeout = wake - loop.time()
                if timeout > 0 and not bridge.ready.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await bridge.ready.wait()
        except Exception as exc:
            self._set_health(ctx, False, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            watchdog_log.removeHandler(overflow_log)
            observer.stop()
            await asyncio.to_thread(observer.join, 5)

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
                           handler: _Handler, *, initial: bool) -> None:
        """Watch roots that (re)appeared, drop those that vanished; report missing ones."""
        for root in self._roots:
            exists = await asyncio.to_thread(os.path.isdir, root.path)
            if exists and not root.present:
                root.real = await asyncio.to_thread(os.path.realpath, root.path)
                root.watch = await asyncio.to_thread(self._schedule, observer, handler, root)
                root.present = True
                if not initial:
                    log.info("filesystem source %s: root %s appeared; scanning it",
                             self.name, root.path)
                    await self._reconcile(ctx, [(root, root.path)])
            elif not exists and root.present:
                log.warning("filesystem source %s: root %s disappeared; waiting for it",
                            self.name, root.path)
                root.present = False
                if root.watch is not None:
                    with contextlib.suppress(KeyError):
                        await asyncio.to_thread(observer.unschedule, root.watch)
                    root.watch = None
        missing = [r.path for r in self._roots if not r.present]
        self.stats["roots_watched"] = len(self._roots) - len(missing)
        if missing:
            self._set_health(ctx, False, "; ".join(f"root {p} does not exist yet"
                                                   for p in missing))
        else:
            self._set_health(ctx, True, None)

    def _schedule(self, observer: BaseObserver, handler: _Handler, root: _Root) -> ObservedWatch:
        """Start watching `root` (blocking: adds a watch per directory)."""
        kinds: list[type[FileSystemEvent]] = [FileMovedEvent, DirCreatedEvent, DirMovedEvent,
                                              DirDeletedEvent]
        if "deleted" in self.options.events:
            kinds.append(FileDeletedEvent)
        if self.options.poll is False:
            fs = _fs_type(root.real)
            if fs is not None and (fs in NETWORK_FS or fs.startswith("fuse")):
                raise WatchError(
                    f"root {root.path} is on a {fs} filesystem, where inotify sees no changes "
                    f"made by other machines; set `poll: 10s` (or another interval)")
            kinds.append(FileClosedEvent)
        else:
            kinds += [FileCreatedEvent, FileModifiedEvent]
        try:
            return observer.schedule(handler, root.path, recursive=True, event_filter=kinds)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise WatchError(
                    f"cannot watch {root.path}: the inotify watch limit is exhausted; raise "
                    f"the sysctl fs.inotify.max_user_watches (or set `poll`)") from exc
            if exc.errno == errno.EMFILE:
                raise WatchError(
                    f"cannot watch {root.path}: too many inotify instances; raise the sysctl "
                    f"fs.inotify.max_user_instances") from exc
            raise

    # -- notifications and the settle timer ----------------------------------------------
    def _take(self, items: dict[str, str]) -> list[tuple[_Root, str]]:
        """Arm the settle timer for notified files; return directories to reconcile."""
        subtrees: list[tuple[_Root, str]] = []
        for path, hint in items.items():
            root = self._root_of(path)
            if root is None:
                continue
            if hint == "dir":
                subtrees.append((root, path))
                continue
            rel = root.rel(path)
            if rel and (self.wanted(rel) or path in self._known):
                self._arm(path, root, hint, self._settle, rearm=True)
        return subtrees

    def _arm(self, path: str, root: _Root, hint: str, delay: float, *, rearm: bool) -> None:
        entry = self._pending.get(path)
        if entry is not None and not rearm:
            return
        due = asyncio.get_running_loop().time() + delay
        if entry is None:
            self._pending[path] = _Pending(root, hint, due)
        else:
            entry.due = due
            if hint in ("moved", "deleted"):
                entry.hint = hint
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, path))

    async def _settle_due(self, ctx: SourceContext) -> None:
        """Look at every file whose timer fell due, in batches, and emit what settled."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            due: list[tuple[str, _Pending]] = []
            while self._heap and self._heap[0][0] <= now and len(due) < BATCH:
                when, _, path = heapq.heappop(self._heap)
                entry = self._pending.get(path)
                if entry is not None and entry.due == when:
                    due.append((path, entry))
            if not due:
                return
            asks = [(p, e.root, e.sig, self._known[p].sig if p in self._known else None)
                    for p, e in due]
            looks = await asyncio.to_thread(self._look_all, asks)
            await self._conclude(ctx, due, looks)

    def _look_all(self, asks: list[tuple[str, _Root, Sig | None, Sig | None]]) -> list[_Look]:
        now_ns = time.time_ns()
        return [self._look(path, root, prev, known, now_ns) for path, root, prev, known in asks]

    def _look(self, path: str, root: _Root, prev: Sig | None, known: Sig | None,
              now_ns: int) -> _Look:
        """Blocking: stat (and hash) one file to see whether it has settled."""
        real_root = root.real
        try:
            # A path through a symlinked directory (watchdog reports files below a directory
            # link it walked) is not the root's: skipped, as _walk does not follow such links.
            if _through_link(os.path.dirname(path), root):
                return _Look("skip")
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                if not _inside(os.path.realpath(path), real_root):
                    return _Look("skip")  # a symlink leading outside the root
                st = os.stat(path)
        except FileNotFoundError:
            return _Look("gone")
        except OSError as exc:
            self._log_denied(path, exc)
            return _Look("skip")
        if not stat.S_ISREG(st.st_mode):
            return _Look("skip")
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        if sig == known:
            return _Look("same", sig)
        if sig != prev and not (prev is None and now_ns - st.st_mtime_ns >= self._settle * 1e9):
            return _Look("changing", sig)
        if self.options.fingerprint == "stat":
            return _Look("settled", sig, f"{sig[0]}:{sig[1]}:{sig[2]}")
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
            after = os.stat(path)
        except FileNotFoundError:
            return _Look("gone")
        except OSError as exc:
            self._log_denied(path, exc)
            return _Look("skip")
        if (after.st_size, after.st_mtime_ns, after.st_ino) != sig:
            return _Look("changing", (after.st_size, after.st_mtime_ns, after.st_ino))
        hexdigest = digest.hexdigest()
        return _Look("settled", sig, hexdigest, hexdigest)

    def _log_denied(self, path: str, exc: OSError) -> None:
        if path not in self._denied:
            self._denied.add(path)
            self.stats["permission_denied"] += 1
            log.warning("filesystem source %s: cannot read %s: %s (logged once; carrying on)",
                        self.name, path, exc.strerror or exc)

    async def _conclude(self, ctx: SourceContext, due: list[tuple[str, _Pending]],
                        looks: list[_Look]) -> None:
        """Turn looks into events; emit them; only then record the file rows."""
        events: list[Event] = []
        saves: list[FileRow] = []
        gone: list[str] = []
        now = ctx.clock.now()
        for (path, entry), look in zip(due, looks, strict=True):
            if look.verdict == "changing":
                entry.sig = look.sig
                self._arm(path, entry.root, entry.hint, max(self._settle, 0.01), rearm=True)
                continue
            del self._pending[path]
            rel = entry.root.rel(path) or ""
            old = self._known.get(path)
            if look.verdict == "gone":
                if old is not None:
                    gone.append(path)
                    if "deleted" in self.options.events:
                        events.append(self._event(ctx, "deleted", path, entry.root, rel,
                                                  old.size, old.mtime_ns, None,
                                                  f"{old.fingerprint}:deleted"))
                continue
            if look.verdict != "settled" or look.sig is None or not self.wanted(rel):
                continue
            kind: Kind = ("moved" if entry.hint == "moved"
                          else "created" if old is None else "modified")
            size, mtime_ns, inode = look.sig
            fingerprint = f"{rel}:{look.content}"
            saves.append(FileRow(path, inode, size, mtime_ns, fingerprint, now))
            if kind in self.options.events:
                events.append(self._event(ctx, kind, path, entry.root, rel, size, mtime_ns,
                                          look.sha256, fingerprint))
        if events:
            await ctx.emit(events)
            self.stats["last_event_at"] = now.isoformat()
        # The events are stored: record the rows even if shutdown cancels us meanwhile, so a
        # clean stop leaves no duplicate to re-emit (a crash here only causes one, counted).
        await _uncancelled(self._record(saves, gone))

    async def _record(self, saves: list[FileRow], gone: list[str]) -> None:
        if saves:
            await self.files.save(self.name, saves)
            for row in saves:
                self._known[row.path] = row
                self._by_dir.setdefault(os.path.dirname(row.path), set()).add(row.path)
        if gone:
            await self.files.delete(self.name, gone)
            for p in gone:
                self._known.pop(p, None)
                paths = self._by_dir.get(os.path.dirname(p))
                if paths is not None:
                    paths.discard(p)
                    if not paths:
                        del self._by_dir[os.path.dirname(p)]
        self.stats["files_tracked"] = len(self._known)

    def _event(self, ctx: SourceContext, kind: str, path: str, root: _Root, rel: str,
               size: int, mtime_ns: int, sha256: str | None, fingerprint: str) -> Event:
        directory, _, name = rel.rpartition("/")
        payload: dict[str, Any] = {"path": path, "relpath": rel, "dir": directory, "name": name,
                                   "size": size, "mtime": _iso_ns(mtime_ns), "root": root.path}
        if self.options.fingerprint == "sha256" and sha256 is not None:
            payload["sha256"] = sha256
        return Event(source=self.name, kind=kind, subject=path, fingerprint=fingerprint,
                     payload=payload, observed_at=ctx.clock.now())

    # -- reconcile ------------------------------------------------------------------------
    async def _reconcile(self, ctx: SourceContext, targets: Sequence[tuple[_Root, str]]) -> None:
        """Compare the trees under `targets` with the file table; arm what is new, changed or
        gone (looked at at once: a file still being written is left to the settle logic)."""
        started, t0 = ctx.clock.now(), time.monotonic()
        for root, start in targets:
            found = await asyncio.to_thread(self._walk, root, start)
            if found is None:
                continue  # the root itself is missing: never take that as "everything deleted"
            for path, sig in found.items():
                row = self._known.get(path)
                if row is None or row.sig != sig:
                    self._arm(path, root, "created", 0.0, rearm=False)
            # known files that the walk did not find are gone: look only at the directories
            # below `start` (a new subdirectory must not cost a pass over every known file)
            below = start.rstrip("/") + "/"
            for directory in [d for d in self._by_dir if d == start or d.startswith(below)]:
                for path in self._by_dir[directory]:
                    if path not in found and root.rel(path):
                        self._arm(path, root, "deleted", 0.0, rearm=False)
        self.stats["last_scan_at"] = started.isoformat()
        self.stats["last_scan_seconds"] = round(time.monotonic() - t0, 3)

    def _walk(self, root: _Root, start: str) -> dict[str, Sig] | None:
        """Blocking: every wanted regular file below `start`, with its (size, mtime_ns, inode).
        None when the root itself is gone. Symlinked directories are not followed; symlinked
        files count only when they resolve inside the root."""
        found: dict[str, Sig] = {}
        # A directory link reported as a directory (watchdog walks links) is not followed:
        # it may lead outside the root, or back into it and alias every file below.
        if start != root.path and _through_link(start, root):
            return found
        stack = [start]
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as it:
                    entries = list(it)
            except FileNotFoundError:
                if directory == root.path:
                    return None
                continue
            except OSError as exc:
                self._log_denied(directory, exc)
                continue
            for entry in entries:
                if self._ignored_name(entry.name):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    if entry.is_symlink():
                        if not _inside(os.path.realpath(entry.path), root.real):
                            continue
                        st = os.stat(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                    else:
                        continue
                except OSError:
                    continue  # vanished meanwhile, or a dangling link
                rel = root.rel(entry.path)
                if rel and stat.S_ISREG(st.st_mode) and self.wanted(rel, parents_checked=True):
                    found[entry.path] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return found
