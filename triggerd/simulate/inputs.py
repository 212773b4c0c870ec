"""The events of a test's inputs, built by the sources' own code, so that they are exactly the
events the daemon would store: same kinds, subjects, fingerprints and payloads.

- files: the filesystem source's verdicts (`_fssettle.Settle.conclude`), given the look a
  settled file gets (size, an mtime `settle` before the input's time, a sha256 of `content`
  or of the path, size and time), so created / modified / moved / deleted, the `events`,
  `patterns` and `ignore` options and the fingerprints are the source's;
- objects: the bucket source's reconcile (`_bucketlist.compare`) of a listing that holds the
  object, settled at the input's time (last-modified then; the content tag given, the MD5 of
  `content`, or new), against the object table the test's listings built, so created /
  modified / deleted, `events`, `patterns`, `ignore` and the fingerprints are the source's;
- Kafka messages: the Kafka source's decoder (`_kafka.decode.Decoder`), which also rejects
  what the source rejects (a note in the result, no event); with a notification format,
  the bucket source's events of its notices (`_bucketlist.notice_event`), against the same
  object table, which notices read and never write, as in the daemon: an object no `object`
  input listed is `created`, a removal of one never listed makes no event;
- cron ticks: the cron source's `tick_event`;
- `event`: any event, as given (for source plugins).
Each event also gets the names a test may call it by (`Named`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from itertools import count
from typing import Any

from pydantic import BaseModel

from triggerd.language.schedules import Schedule
from triggerd.model import Event, FileRow
from triggerd.simulate.spec import EventIn, FileIn, Input, MessageIn, ObjectIn, TickIn
from triggerd.sources._bucketlist import Obj, compare, matcher_for, notice_event, url_of
from triggerd.sources._bucketoptions import BucketOptions
from triggerd.sources._fsoptions import DEFAULT_IGNORES, FilesystemOptions
from triggerd.sources._fsscan import Known, Look, Matcher, Root, Sig
from triggerd.sources._fssettle import Settle
from triggerd.sources._kafka.decode import Decoder, Record
from triggerd.sources._kafka.options import NOTIFICATIONS, KafkaOptions
from triggerd.sources.cron import CronOptions, tick_event


@dataclass(frozen=True)
class Named:
    """An event and what a test calls it: `shown` in reports, any of `names` in `events:`."""

    event: Event
    shown: str
    names: frozenset[str]


@dataclass(frozen=True, slots=True)
class Built:
    """A source's input whose events are built already (`prebuilt`: a replay's arrivals),
    which the simulator takes in place of an `Input`: its source, and its events (none: a
    file its patterns leave out, a message its source rejects)."""

    source: str
    named: tuple[Named, ...]


class _Files(Known):
    """The files a simulated filesystem source knows: the source's table (`Known`) as its
    verdicts read it (`sig`), kept as a plain dict: without the index by directory that only
    the source's walks read, nor the packing that keeps a hundred thousand rows small."""

    def __init__(self) -> None:
        super().__init__()
        self.sigs: dict[str, Sig] = {}

    def sig(self, path: str) -> Sig | None:
        return self.sigs.get(path)

    def put(self, path: str, sig: Sig) -> None:
        self.sigs[path] = sig

    def drop(self, path: str) -> None:
        self.sigs.pop(path, None)


class FileSide:
    """One filesystem source: its matcher, roots, settle verdicts and known files."""

    def __init__(self, name: str, options: FilesystemOptions) -> None:
        self.options = options
        self.roots = [Root(os.path.normpath(os.path.abspath(p))) for p in options.paths]
        matcher = Matcher(options.patterns, options.ignore, DEFAULT_IGNORES)
        self.settle = Settle(name, options, matcher.wanted, lambda: 0.0, {"not_regular": 0})
        self.known = _Files()
        self.inodes: dict[str, int] = {}
        self.settled_for = options.settle

    def events(self, path: str, kind: str | None, size: int, content: str | None,
               now: datetime) -> list[Event]:
        """The events of a file input (`FileIn`'s fields) settled at `now`."""
        root = next(r for r in self.roots if r.rel(path))
        inodes = self.inodes
        inode = inodes.get(path)
        if inode is None:
            inode = inodes[path] = 1000 + len(inodes)
        mtime_ns = int((now - self.settled_for).timestamp() * 1e9)
        sig = (size, mtime_ns, inode)
        known = self.known
        if kind in ("modified", "deleted") and known.sig(path) is None:
            known.put(path, sig)  # a file the test says was there before
        elif kind == "created":
            known.drop(path)
        found = self.settle.conclude_now(
            path, root, kind if kind in ("moved", "deleted") else "created",
            self._look(path, kind, content, sig), known, now)
        for saved, row in found.saves:
            known.put(saved, row.sig)
        for gone in found.gone:
            known.drop(gone)
        return found.events

    def _look(self, path: str, kind: str | None, content: str | None,
              sig: tuple[int, int, int]) -> Look:
        if kind == "deleted":
            return Look("gone")
        if self.options.fingerprint == "stat":
            return Look("settled", sig, f"{sig[0]}:{sig[1]}:{sig[2]}")
        text = content if content is not None else f"{path}\0{sig[0]}\0{sig[1]}"
        digest = hashlib.sha256(text.encode()).hexdigest()
        return Look("settled", sig, digest, digest)


class BucketSide:
    """One bucket source: its matcher and the object table its listings keep."""

    def __init__(self, name: str, options: BucketOptions) -> None:
        self.name = name
        self.options = options
        self.listed = options.model_copy(update={"settle": False})  # `at`: when it settled
        self.matcher = matcher_for(options)
        self.rows: dict[str, FileRow] = {}
        self.uploads = count(1)

    def key_of(self, given: str) -> str:
        """The full key of an input's `key` (below the prefix, or the object's URL)."""
        base = url_of(self.options, "")
        return given[len(base):] if given.startswith(base) else self.options.prefix + given

    def events(self, o: ObjectIn, now: datetime) -> list[Event]:
        key = self.key_of(o.key)
        path = url_of(self.options, key)
        mtime_ns = int(now.timestamp() * 1e9)
        rel = key[len(self.options.prefix):]
        if o.kind == "created":
            self.rows.pop(path, None)
        elif o.kind in ("modified", "deleted") and path not in self.rows:
            # an object the test says was there before: some earlier version of it
            self.rows[path] = FileRow(path, 0, o.size, mtime_ns - 1, f"{rel}:earlier", now)
        row = self.rows.get(path)
        known = {path: row} if row else {}
        if o.kind == "deleted":
            found = compare(self.name, self.listed, self.matcher, [], known, {}, now)
        else:
            text = o.content if o.content is not None else \
                f"{key}\0{o.size}\0{now.isoformat()}\0{next(self.uploads)}"
            tag = o.etag or hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
            found = compare(self.name, self.listed, self.matcher,
                            [Obj(key, o.size, mtime_ns, tag, None)], known, {}, now,
                            partial=True)
        for saved in found.saves:
            self.rows[saved.path] = saved
        for gone in found.gone:
            self.rows.pop(gone, None)
        return found.events


class Builder:
    """Builds the events of inputs for the sources of one config, remembering what the
    sources remember (known files, Kafka offsets) across a test's timeline."""

    def __init__(self, sources: dict[str, BaseModel], start: datetime,
                 show: Callable[[datetime], str]) -> None:
        self.sources = sources
        self.start = start
        self.show = show
        self.files: dict[str, FileSide] = {}
        self.buckets: dict[str, BucketSide] = {}
        self.decoders: dict[str, Decoder] = {}
        self.offsets: dict[tuple[str, str, int], int] = {}
        self.numbers = count(1)
        self.schedules: dict[str, Schedule] = {}
        self.notes: list[str] = []

    def build(self, item: Input, now: datetime) -> tuple[str, list[Named]]:
        """The source and the events of a file, message, tick or event input."""
        if item.file is not None:
            return item.file.source, self._files(item.file, item.id, now)
        if item.object is not None:
            return item.object.source, self._objects(item.object, item.id, now)
        if item.message is not None:
            return item.message.source, self._message(item.message, item.id, now)
        if item.tick is not None:
            return item.tick.source, [self._tick(item.tick, item.id, now)]
        assert item.event is not None  # noqa: S101 - the caller passes event inputs only
        return item.event.source, [self._event(item.event, item.id, now)]

    def _files(self, f: FileIn, label: str | None, now: datetime) -> list[Named]:
        return self.files_of(f.source, f.path, f.kind, f.size, f.content, label, now)

    def files_of(self, source: str, path: str, kind: str | None, size: int,
                 content: str | None, label: str | None, now: datetime) -> list[Named]:
        """The events of a file input, given by its fields (`FileIn`'s)."""
        side = self.files.get(source)
        if side is None:
            options = self.sources[source]
            assert isinstance(options, FilesystemOptions)  # noqa: S101 - cross-checked
            side = self.files[source] = FileSide(source, options)
        out = []
        for event in side.events(path, kind, size, content, now):
            p = event.payload
            names = (p["path"], p["relpath"], p["name"]) + ((label,) if label else ())
            out.append(Named(event, label or p["name"], frozenset(names)))
        if not out:
            self.notes.append(f"{path}: no event (not watched by source {source}'s "
                              "patterns, or a kind its `events` leave out)")
        return out

    def _bucket(self, source: str) -> BucketSide:
        side = self.buckets.get(source)
        if side is None:
            options = self.sources[source]
            assert isinstance(options, BucketOptions)  # noqa: S101 - cross-checked
            side = self.buckets[source] = BucketSide(source, options)
        return side

    def _objects(self, o: ObjectIn, label: str | None, now: datetime) -> list[Named]:
        out = []
        for event in self._bucket(o.source).events(o, now):
            p = event.payload
            names = {event.subject, p["key"], p["relpath"], p["name"]} | (
                {label} if label else set())
            out.append(Named(event, label or p["relpath"], frozenset(names)))
        if not out:
            self.notes.append(f"{o.key}: no event (not watched by source {o.source}'s "
                              "patterns, unchanged, or a kind its `events` leave out)")
        return out

    def _message(self, m: MessageIn, label: str | None, now: datetime) -> list[Named]:
        options = self.sources[m.source]
        assert isinstance(options, KafkaOptions)  # noqa: S101 - cross-checked
        decoder = self.decoders.setdefault(m.source, Decoder(m.source, options))
        topic = m.topic or options.topics[0]
        where = (m.source, topic, m.partition)
        offset = m.offset if m.offset is not None else self.offsets.get(where, 0)
        self.offsets[where] = offset + 1
        record = Record(topic, m.partition, offset, now.timestamp(), _bytes(m.key),
                        _value(m, options.format), [(k, v.encode()) for k, v in m.headers.items()])
        if options.bucket is not None:
            return self._notified(m.source, options.bucket, decoder, record, label, now)
        found = decoder.decode(record, now)
        if not isinstance(found, Event):
            self.notes.append(f"message {record.ref} rejected by source {m.source} "
                              f"({found.kind}): {found.error}")
            return []
        names = {record.ref, found.subject} | ({m.key} if m.key else set()) | (
            {label} if label else set())
        return [Named(found, label or record.ref, frozenset(names))]

    def _notified(self, source: str, bucket: str, decoder: Decoder, record: Record,
                  label: str | None, now: datetime) -> list[Named]:
        found = decoder.notices(record, now)
        if not isinstance(found, list):
            self.notes.append(f"message {record.ref} rejected by source {source} "
                              f"({found.kind}): {found.error}")
            return []
        side = self._bucket(bucket)
        out = []
        for notice in found:
            row = side.rows.get(url_of(side.options, notice.key))  # read, never written
            event = notice_event(bucket, side.options, side.matcher, notice, row, now)
            if event is not None:
                names = {record.ref, event.subject, event.payload["relpath"]} | (
                    {label} if label else set())
                out.append(Named(event, label or event.payload["relpath"], frozenset(names)))
        if not out:
            self.notes.append(f"message {record.ref}: no event (no object of bucket source "
                              f"{bucket} it watches)")
        return out

    def _tick(self, t: TickIn, label: str | None, now: datetime) -> Named:
        options = self.sources[t.source]
        assert isinstance(options, CronOptions)  # noqa: S101 - cross-checked
        slot = now if t.slot is None else (
            t.slot if isinstance(t.slot, datetime) else self.start + t.slot)
        return self.tick(t.source, options, slot, now, label)

    def tick(self, source: str, options: CronOptions, slot: datetime, now: datetime,
             label: str | None = None) -> Named:
        """A tick of `source` for `slot` (also the ticks a cron source makes by itself)."""
        schedule = self.schedules.get(source)
        if schedule is None:
            schedule = self.schedules[source] = options.build_schedule()
        event = tick_event(source, schedule, slot, now)
        shown = f"{source}@{self.show(slot)}"
        return Named(event, label or shown, frozenset({shown, *([label] if label else [])}))

    def _event(self, e: EventIn, label: str | None, now: datetime) -> Named:
        fingerprint = e.fingerprint or f"{e.subject}#{next(self.numbers)}"
        event = Event(source=e.source, kind=e.kind, subject=e.subject, fingerprint=fingerprint,
                      payload=dict(e.payload), observed_at=now)
        names = {e.subject, fingerprint} | ({label} if label else set())
        return Named(event, label or e.subject, frozenset(names))


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _value(m: MessageIn, fmt: str) -> bytes:
    if m.raw is not None:
        return m.raw.encode()
    value: Any = m.value
    if fmt == "json" or (fmt in NOTIFICATIONS and not isinstance(value, str)):
        return json.dumps(value).encode()  # notifications are JSON too: a mapping is encoded
    return str(value).encode()
