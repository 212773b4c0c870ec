"""What a replay replays: arrivals, from the store's events or from a log a user brings.

An `Arrival` is one thing a source saw: when, which source, its subject, and what the event
would carry. `stored_arrivals` reads them from a store (its `events` table: exactly the events
the daemon stored); `read_log` reads an arrivals log, JSON lines or CSV:

    {"time": "2026-11-02T08:00:00Z", "source": "landing", "subject": "/data/a.parquet",
     "size": 1200, "kind": "created"}

`time`, `source` and `subject` are required. `size`, `kind` (default `created`) and
`fingerprint` are optional; every other field (or a `payload` object) is the payload. In CSV,
the first line names the columns. A bad row is an error naming `file:line`; nothing is
skipped silently.

`timeline_inputs` turns arrivals into the simulator's inputs for one config, built by the
sources' own code (`inputs.Builder`): a filesystem source's rows are files (its `patterns`,
`ignore` and `events` apply; a row's `fingerprint` stands for the file's content, so the same
fingerprint at the same path is a duplicate), a Kafka source's rows are messages whose value
is the payload and whose key is the subject, a bucket source's rows are objects (their
subject the URL or the key below the prefix, `fingerprint` the content tag) made into the
listing's events, stored events and other sources' rows are events as given. Cron sources
tick by themselves in a replay, on each config's own schedule, so a log's or the store's ticks
are left out (and counted).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select

from triggerd.config.loader import Config
from triggerd.errors import ConfigError
from triggerd.model import Event, FileRow
from triggerd.simulate.spec import EventIn, FileIn, Input, MessageIn
from triggerd.sources._bucketlist import matcher_for, notice_event
from triggerd.sources._bucketnotify import Notice
from triggerd.sources._bucketoptions import BucketOptions
from triggerd.sources._fsoptions import FilesystemOptions
from triggerd.sources._kafka.options import KafkaOptions
from triggerd.sources.cron import CronOptions
from triggerd.store import tables as t
from triggerd.store.sql import Store

REQUIRED = ("time", "source", "subject")
KNOWN = {*REQUIRED, "size", "kind", "fingerprint", "payload"}
FILE_KINDS = {"created", "modified", "moved", "deleted"}
MAX_PROBLEMS = 20  # a bad log's first problems are enough to fix it


@dataclass(frozen=True)
class Arrival:
    at: datetime
    source: str
    subject: str
    kind: str = "created"
    size: int = 0
    fingerprint: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    stored: bool = False  # an event from the store: replayed exactly as stored


def stored_arrivals(store: Store, since: datetime | None, until: datetime | None
                    ) -> list[Arrival]:
    """The store's events observed in [since, until), oldest first."""
    e = t.events.c
    query = select(e.source, e.kind, e.subject, e.fingerprint, e.payload, e.size,
                   e.observed_at).order_by(e.observed_at, e.id)
    if since is not None:
        query = query.where(e.observed_at >= since)
    if until is not None:
        query = query.where(e.observed_at < until)
    with store.read() as c:
        return [Arrival(r.observed_at, r.source, r.subject, r.kind, int(r.size or 0),
                        r.fingerprint, dict(r.payload or {}), stored=True)
                for r in c.execute(query)]


def read_log(path: str | os.PathLike[str]) -> list[Arrival]:
    """An arrivals log (`.csv` by its name, else JSON lines), sorted by time."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(_csv_rows(f) if path.suffix.lower() == ".csv" else _json_rows(f))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the arrivals log: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    arrivals, problems = [], []
    for line, row in rows:
        try:
            arrivals.append(_arrival(row))
        except ValueError as exc:
            problems.append(f"{path}:{line}: {exc}")
            if len(problems) >= MAX_PROBLEMS:
                problems.append(f"{path}: (stopped after {MAX_PROBLEMS} problems)")
                break
    if problems:
        raise ConfigError(problems)
    arrivals.sort(key=lambda a: a.at)  # stable: rows at one time keep their order
    return arrivals


def _json_rows(f: Any) -> Iterator[tuple[int, Any]]:
    for line, text in enumerate(f, 1):
        if not text.strip():
            continue
        try:
            yield line, json.loads(text)
        except ValueError as exc:
            yield line, ValueError(f"not JSON: {exc}")


def _csv_rows(f: Any) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(f)
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        yield 1, ValueError(f"the header line lacks the column(s) {', '.join(missing)}")
        return
    for row in reader:
        extra = row.pop(None, None)
        if extra:
            yield reader.line_num, ValueError(f"{len(extra)} more field(s) than columns")
            continue
        yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}


def _arrival(row: Any) -> Arrival:
    if isinstance(row, ValueError):
        raise row
    if not isinstance(row, dict):
        raise ValueError("a row must be an object with time, source and subject")
    missing = [k for k in REQUIRED if k not in row or row[k] in (None, "")]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    payload = row.get("payload", {})
    if not isinstance(payload, dict):
        raise ValueError("payload: must be an object")
    payload = {**{k: v for k, v in row.items() if k not in KNOWN}, **payload}
    size = _size(row.get("size", 0))
    if size:
        payload.setdefault("size", size)
    kind = str(row.get("kind", "created"))
    fingerprint = row.get("fingerprint")
    return Arrival(_time(row["time"]), str(row["source"]), str(row["subject"]), kind, size,
                   None if fingerprint is None else str(fingerprint), payload)


def _time(value: Any) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"time: {value!r} is not an ISO time or epoch seconds") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _size(value: Any) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"size: {value!r} is not a whole number of bytes") from None
    if size < 0:
        raise ValueError("size: must be 0 or more")
    return size


@dataclass
class Inputs:
    """A config's timeline inputs, and what was left out of it (by reason)."""

    items: list[tuple[datetime, Input]] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)

    def leave_out(self, why: str) -> None:
        self.left_out[why] = self.left_out.get(why, 0) + 1


def timeline_inputs(config: Config, arrivals: list[Arrival]) -> Inputs:
    """The simulator's inputs for `config` (see the module docstring)."""
    out = Inputs()
    for a, entry in entries(config, arrivals, out):
        if isinstance(entry, str):
            entry = _input(a.at, file=FileIn(
                source=a.source, path=entry, size=a.size,
                kind=a.kind,  # one of FILE_KINDS: `entries` checked it
                content=a.fingerprint))
        out.items.append((a.at, entry))
    return out


def entries(config: Config, arrivals: list[Arrival], out: Inputs
            ) -> Iterator[tuple[Arrival, Input | str]]:
    """Each arrival that is replayed, as an input; a filesystem source's row as the file's
    absolute path (its other fields are the arrival's: a file input without a pydantic model
    each, for `prebuilt`). What is left out is counted in `out`."""
    kinds = {name: _kind(options) for name, options in config.sources.items()}
    for a in arrivals:
        options = config.sources.get(a.source)
        kind = kinds.get(a.source)
        if options is None:
            out.leave_out(f"source {a.source} is not in the config")
        elif kind is CronOptions:
            out.leave_out(f"ticks of cron source {a.source} (the replay makes its own)")
        elif a.stored:
            yield a, _input(a.at, event=EventIn(
                source=a.source, kind=a.kind, subject=a.subject, fingerprint=a.fingerprint,
                payload=a.payload))
        elif kind is FilesystemOptions:
            assert isinstance(options, FilesystemOptions)  # noqa: S101 - its kind
            if a.kind not in FILE_KINDS:
                out.leave_out(f"rows of filesystem source {a.source} with kind {a.kind!r}")
                continue
            path = _under(options, a.subject)
            if path is None:
                out.leave_out(f"paths outside filesystem source {a.source}'s paths")
                continue
            yield a, path
        elif kind is KafkaOptions:
            yield a, _input(a.at, message=MessageIn(source=a.source, value=a.payload,
                                                    key=a.subject))
        elif kind is BucketOptions:
            assert isinstance(options, BucketOptions)  # noqa: S101 - its kind
            event = _object_event(a, options)
            if event is None:
                out.leave_out(f"rows of bucket source {a.source} it does not watch")
                continue
            yield a, _input(a.at, event=EventIn(
                source=a.source, kind=event.kind, subject=event.subject,
                fingerprint=event.fingerprint, payload=event.payload))
        else:
            yield a, _input(a.at, event=EventIn(
                source=a.source, kind=a.kind, subject=a.subject, fingerprint=a.fingerprint,
                payload=a.payload))


def _kind(options: object) -> type | None:
    """Which of the built-in sources' options `options` are (None: a plugin's)."""
    return next((kind for kind in (CronOptions, FilesystemOptions, KafkaOptions, BucketOptions)
                 if isinstance(options, kind)), None)


def _object_event(a: Arrival, options: BucketOptions) -> Event | None:
    """A bucket source's row as the event its listing makes (`notice_event`): the subject is
    the object's URL or its key below the prefix; a row's `fingerprint` stands for the
    object's content tag; `kind` created, modified or deleted."""
    base = f"{options.scheme}://{options.bucket}/"
    key = (a.subject[len(base):] if a.subject.startswith(base)
           else options.prefix + a.subject.lstrip("/"))
    mtime_ns = int(a.at.timestamp() * 1e9)
    url = base + key
    row = None if a.kind == "created" else FileRow(url, 0, a.size, mtime_ns, "")
    notice = Notice(a.kind == "deleted", options.bucket, key, a.size, mtime_ns,
                    a.fingerprint or None, None)
    return notice_event(a.source, options, matcher_for(options), notice, row, a.at)


def _under(options: FilesystemOptions, subject: str) -> str | None:
    """The absolute path of a file row (a relative one is under the source's first path), or
    None when it is under none of the source's paths (a row naming one of those directories
    itself is no file in it either)."""
    roots = _roots(tuple(options.paths))
    path = subject if _normal(subject) else os.path.normpath(os.path.join(roots[0][0], subject))
    for _, below in roots:
        if path.startswith(below):
            return path
    return None


def _normal(path: str) -> bool:
    """Whether `path` is absolute and `os.path.normpath` leaves it as it is (no `//`, no `.`
    or `..` component, no trailing `/`; a name starting with `.` is left to normpath): most
    rows, without a normpath each."""
    return (path.startswith("/") and "//" not in path and "/." not in path
            and not path.endswith("/"))


@lru_cache(maxsize=64)
def _roots(paths: tuple[str, ...]) -> list[tuple[str, str]]:
    """Each path normalised, and the prefix of the paths below it."""
    roots = [os.path.normpath(os.path.abspath(p)) for p in paths]
    return [(r, r.rstrip(os.sep) + os.sep) for r in roots]


def _input(at: datetime, **one: Any) -> Input:
    """An input (validated: faster than pydantic's `model_construct`, which is Python)."""
    return Input(at=at, **one)
