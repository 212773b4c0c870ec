"""Settling, and what a look at a file becomes: the filesystem source's timers and verdicts.

Settling
    A path becomes an event only once it is unchanged for `settle`: a notification (re)arms a
    timer on the loop (one heap, no polling of idle files); when it falls due the file is stat'ed
    off the loop (`_fsscan.look`). It is settled when (size, mtime_ns) equal those of the
    previous look, or, on the first look, when its mtime is already `settle` old. Otherwise it
    is looked at again `settle` later. The destination of a rename is looked at at once rather
    than `settle` later: a rename is how writers publish (`x.tmp` -> `x`, or `mv` from a staging
    directory outside the root), and a file whose mtime is already `settle` old is then an
    event at once; a fresh one still settles as above.

Events
    kind: created | modified | moved (the destination of a rename) | deleted; subject: the
    absolute path; fingerprint: `relpath + ":" + sha256 hex` (or `size:mtime_ns:inode` with
    `fingerprint: stat`), so the same content at the same path is a duplicate the store counts.
    payload: path, relpath, dir, name, size, mtime (ISO 8601 UTC), root, and sha256.
    A name that is not valid UTF-8 arrives readable (`\\xNN` for each bad byte) in subject and
    path fields, with its exact bytes in `payload.path_b64` (see `_names.py`). A deleted file's
    fingerprint is `relpath:size:mtime_ns:inode:deleted` of the row it had.

Everything here runs on the event loop and never blocks.
"""

from __future__ import annotations

import heapq
import logging
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from triggerd.plugin import Event, FileRow, Reject
from triggerd.sources._fsoptions import FilesystemOptions, Kind
from triggerd.sources._fsscan import Known, Look, Root, Sig
from triggerd.sources._names import display, is_text, raw_b64, stored

log = logging.getLogger("triggerd.sources.filesystem")

BATCH = 1000  # files looked at and stored together (bench/RESULTS.md: "Design figures")
_SPECIAL = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
            stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


@dataclass(eq=False)
class Pending:
    """A file waiting to be looked at: its root, why (the notification), when, and the
    signature its previous look saw."""

    root: Root
    hint: str
    due: float
    sig: Sig | None = None


@dataclass
class Verdicts:
    """What a batch of looks became: events, file rows to save, paths gone, rejects."""

    events: list[Event] = field(default_factory=list)
    saves: list[tuple[str, FileRow]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    rejected: list[Reject] = field(default_factory=list)
    rejected_paths: list[str] = field(default_factory=list)


class Settle:
    """The files waiting to settle (a heap of due times) and the verdicts on their looks.

    `clock` is the loop's monotonic clock; `stats` the source's figures (`not_regular`)."""

    def __init__(self, name: str, options: FilesystemOptions, wanted: Callable[[str], bool],
                 clock: Callable[[], float], stats: dict[str, Any]) -> None:
        self.name = name
        self.options = options
        self.wanted = wanted
        self.clock = clock
        self.stats = stats
        self.seconds = options.settle.total_seconds()
        self.pending: dict[str, Pending] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self.special: set[str] = set()  # paths of special files already counted and logged

    def restart(self) -> list[tuple[str, Root, str]]:
        """Forget the timers (a new run of the source); what was waiting, to be armed again."""
        leftover = [(path, entry.root, entry.hint) for path, entry in self.pending.items()]
        self.pending, self._heap = {}, []
        return leftover

    def arm(self, path: str, root: Root, hint: str, delay: float, *, rearm: bool) -> None:
        """Look at `path` `delay` seconds from now (sooner or later than an armed timer only
        with `rearm`); a move or a delete is remembered as the reason."""
        entry = self.pending.get(path)
        if entry is not None and not rearm:
            return
        due = self.clock() + delay
        if entry is None:
            self.pending[path] = Pending(root, hint, due)
        else:
            entry.due = due
            if hint in ("moved", "deleted"):
                entry.hint = hint
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, path))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def due_batch(self) -> list[tuple[str, Pending]]:
        """Up to BATCH files whose timers fell due (a timer re-armed since is skipped)."""
        now = self.clock()
        due: list[tuple[str, Pending]] = []
        while self._heap and self._heap[0][0] <= now and len(due) < BATCH:
            when, _, path = heapq.heappop(self._heap)
            entry = self.pending.get(path)
            if entry is not None and entry.due == when:
                due.append((path, entry))
        return due

    def put_back(self, due: list[tuple[str, Pending]]) -> None:
        """A batch that was not stored: its files stay pending for the next run."""
        for path, entry in due:
            self.pending.setdefault(path, entry)

    def conclude(self, due: list[tuple[str, Pending]], looks: list[Look], known: Known,
                 now: datetime) -> Verdicts:
        """The verdicts on a batch's looks; a file still changing is armed again."""
        out = Verdicts()
        for (path, entry), seen in zip(due, looks, strict=True):
            if seen.verdict == "changing":
                entry.sig = seen.sig
                self.arm(path, entry.root, entry.hint, max(self.seconds, 0.01), rearm=True)
                continue
            del self.pending[path]
            self._one(out, path, entry, seen, known.sig(path), now)
        return out

    def conclude_now(self, path: str, root: Root, hint: str, seen: Look, known: Known,
                     now: datetime) -> Verdicts:
        """The verdict on a look at `path` taken at once, without a timer (a file that the
        simulator's inputs say has settled: triggerd.simulate.inputs), as `conclude` gives it
        for the same look when its timer falls due."""
        entry = Pending(root, hint, self.clock())
        self.pending[path] = entry
        return self.conclude([(path, entry)], [seen], known, now)

    def _one(self, out: Verdicts, path: str, entry: Pending, seen: Look, old: Sig | None,
             now: datetime) -> None:
        rel = entry.root.rel(path) or ""
        if seen.verdict == "special" and path not in self.special:
            out.rejected.append(self._not_regular(now, path, seen.mode))
            out.rejected_paths.append(path)
        elif seen.verdict != "special":
            self.special.discard(path)  # a special file there again is reported again
        if seen.verdict in ("gone", "special"):  # a known file replaced by one is gone
            if old is not None:
                out.gone.append(path)
                if "deleted" in self.options.events:
                    size, mtime_ns, inode = old
                    out.events.append(self._event(
                        now, "deleted", path, entry.root, rel, size, mtime_ns, None,
                        f"{stored(rel)}:{size}:{mtime_ns}:{inode}:deleted"))
            return
        if seen.verdict != "settled" or seen.sig is None or not self.wanted(rel):
            return
        kind: Kind = ("moved" if entry.hint == "moved"
                      else "created" if old is None else "modified")
        size, mtime_ns, inode = seen.sig
        fingerprint = f"{stored(rel)}:{seen.content}"
        out.saves.append((path, FileRow(stored(path), inode, size, mtime_ns, fingerprint, now)))
        if kind in self.options.events:
            out.events.append(self._event(now, kind, path, entry.root, rel, size, mtime_ns,
                                          seen.sha256, fingerprint))

    def _not_regular(self, now: datetime, path: str, mode: int) -> Reject:
        """Count and log a special file where a regular one was to be read, once per path: a
        FIFO is looked at again whenever it is written to, and found again by every rescan."""
        what = _SPECIAL.get(stat.S_IFMT(mode), "a special file")
        self.stats["not_regular"] += 1
        self.special.add(path)
        log.warning("filesystem source %s: %s is %s, not a regular file: skipped (logged "
                    "once; counted as not_regular)", self.name, display(path), what)
        return Reject(self.name, display(path), "not_regular",
                      f"{what} where a regular file was expected: skipped", None, now)

    def _event(self, now: datetime, kind: str, path: str, root: Root, rel: str,
               size: int, mtime_ns: int, sha256: str | None, fingerprint: str) -> Event:
        directory, _, name = rel.rpartition("/")
        text = is_text(path)  # and so are its parts (`rel` is one): each as it is
        payload: dict[str, Any] = {
            "path": path if text else display(path), "relpath": rel if text else display(rel),
            "dir": directory if text else display(directory),
            "name": name if text else display(name), "size": size, "mtime": _iso_ns(mtime_ns),
            "root": display(root.path)}
        if not text:
            payload["path_b64"] = raw_b64(path)
        if self.options.fingerprint == "sha256" and sha256 is not None:
            payload["sha256"] = sha256
        return Event(source=self.name, kind=kind, subject=payload["path"],
                     fingerprint=fingerprint, payload=payload, observed_at=now)


def _iso_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()
