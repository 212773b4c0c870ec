"""The store's foundation: the database, its transactions and the SQLite fast path.

`StoreBase` is what every part of `Store` (triggerd.store.sql) builds on; see that module
for the parts and the contract they share.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Executable,
    Table,
    and_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from triggerd.errors import StoreError
from triggerd.store import tables as t
from triggerd.store.connect import READ_ONLY, DaemonLock, make_engine, sqlite_path
from triggerd.store.fast import Fast, sqlite_executemany

Key = tuple[str, str]  # (rule, group)
TS = t.UTCDateTime()  # the type of a bound timestamp that no column gives its type to


WRITE_FAILURE_RECENT = timedelta(seconds=30)


class StoreBase:
    """The database and its transactions: the engine, the daemon lock, the pinned SQLite
    connection, `write`/`read`, compiled hot-path statements (`_q`), and the group and source
    rows every part of the store makes sure exist. The parts of `Store` build on it."""

    def __init__(self, url: str, *, create_dir: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url, create_dir=create_dir)
        self.dialect = self.engine.dialect.name
        self._lock: DaemonLock | None = None
        self._known_groups: set[Key] = set()
        self._known_sources: set[str] = set()  # rows known to exist (saves a statement)
        self._stmts: dict[str, Fast] = {}  # hot-path statements, built once (see _q)
        self._pinned: tuple[int, Connection] | None = None  # see pin
        # the last write the database refused (disk full, read-only, connection lost), as
        # (when, what): readiness reports it while recent (`failing_writes`)
        self.write_failure: tuple[datetime, str] | None = None
        self._fold_pending = False  # a full disk: fold the WAL once space is back (_fold_wal)

    # -- lifecycle ------------------------------------------------------------------------------
    def upgrade(self) -> None:
        """Apply pending migrations (a no-op, without loading alembic, when at the head)."""
        from triggerd.store.migrate import at_head, upgrade

        try:
            if at_head(self.engine):
                return
            upgrade(self.engine)
        except OperationalError as exc:
            raise StoreError(f"cannot migrate the store {self.safe_url}: {exc.orig}") from exc

    def lock(self) -> None:
        """Take the one-daemon-per-file lock (SQLite only; PostgreSQL allows replicas)."""
        path = sqlite_path(self.url)
        if path is not None:
            self._lock = DaemonLock(path)
            self._lock.acquire()

    @property
    def exclusive(self) -> bool:
        """True while this process holds the one-daemon lock (SQLite): no other daemon lives."""
        return self._lock is not None

    def close(self) -> None:
        if self._pinned is not None:
            self._pinned[1].close()
            self._pinned = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.engine.dispose()

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def pin(self) -> None:
        """Keep one SQLite connection open for this thread's transactions, reads and writes
        (the daemon's store thread): taking a connection from the pool and giving it back was
        most of an empty transaction's cost, and the hot path runs four (bench/RESULTS.md,
        "Design figures"). One, not one per kind: each connection keeps its own page cache
        (up to 64 MiB). No-op on other databases."""
        if self.dialect == "sqlite" and self._pinned is None:
            self._pinned = (threading.get_ident(), self.engine.connect())

    def _pinned_conn(self) -> Connection | None:
        """This thread's pinned connection, if it has one and it is not in a transaction
        already (a transaction within another takes a pooled connection, as without pin)."""
        pinned = self._pinned
        if pinned is None or pinned[0] != threading.get_ident() or pinned[1].in_transaction():
            return None
        return pinned[1]

    @contextmanager
    def write(self) -> Iterator[Connection]:
        try:
            pinned = self._pinned_conn()
            if pinned is not None:
                with pinned.begin():
                    yield pinned
            else:
                with self.engine.begin() as conn:
                    yield conn
        except BaseException as exc:
            # the rollback also undid any group rows this transaction inserted: forget them
            self._known_groups.clear()
            self._known_sources.clear()
            if isinstance(exc, OperationalError):
                self.write_failure = (datetime.now(UTC), str(exc.orig))
                if self.dialect == "sqlite" and "full" in str(exc.orig):
                    self._fold_pending = not self._fold_wal()
                raise StoreError(f"store {self.safe_url}: {exc.orig}") from exc
            raise
        if self.write_failure is not None and not _out_of_space(self.write_failure[1]):
            self.write_failure = None  # the connection is back: writes go through again
        if self._fold_pending:  # the first write since the disk was full: space is back
            self._fold_pending = not self._fold_wal()

    def _fold_wal(self) -> bool:
        """SQLite after a full disk: fold the write-ahead log into the database and truncate
        it; True if that was done. Tried when a write finds the disk full (the fold itself
        may need space) and, until it succeeds, after each write that succeeds."""
        return self._checkpoint("TRUNCATE") == 0

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database without waiting for readers
        (PASSIVE), so the log is reused from its start rather than growing until
        `wal_autocheckpoint` pages (tens of MB: more than a small state volume holds, which
        would then stay full). The daemon calls it every few seconds; a no-op elsewhere."""
        if self.dialect == "sqlite":
            self._checkpoint("PASSIVE")

    def _checkpoint(self, mode: str) -> int | None:
        """`PRAGMA wal_checkpoint(mode)` outside any transaction (SQLAlchemy would BEGIN
        one): its busy flag (0: done), or None if it failed (still full)."""
        raw = self.engine.raw_connection()
        try:
            row = raw.driver_connection.execute(  # type: ignore[union-attr]
                f"PRAGMA wal_checkpoint({mode})").fetchone()
        except Exception:  # still full, or busy: tried again later
            return None
        finally:
            raw.close()
        return int(row[0]) if row else None

    def failing_writes(self, now: datetime) -> tuple[datetime, str] | None:
        """The last refused write, if it was within `WRITE_FAILURE_RECENT` of `now`. One
        refused for want of space is not cleared by the next write that succeeds: on a full
        disk small writes (a heartbeat) still fit while a batch of events does not. Any other
        (a lost connection) is cleared by the next write that succeeds."""
        failed = self.write_failure
        return failed if failed is not None and now - failed[0] < WRITE_FAILURE_RECENT else None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            pinned = self._pinned_conn()
            if pinned is not None:
                pinned.execution_options(**{READ_ONLY: True})  # a deferred BEGIN (connect.py)
                try:
                    with pinned.begin():
                        yield pinned
                finally:
                    pinned.execution_options(**{READ_ONLY: False})
            else:
                with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn, \
                        conn.begin():
                    yield conn
        except OperationalError as exc:
            raise StoreError(f"store {self.safe_url}: {exc.orig}") from exc

    def _q(self, name: str, build: Callable[[], Executable]) -> Fast:
        """The statement `name`, built and compiled on first use (`Fast`: on SQLite it runs
        on sqlite3 directly). Building a SQLAlchemy statement costs several times executing a
        built one, and executing one several times running it on sqlite3 (bench/RESULTS.md,
        "Design figures"); the hot path from an event to its backend runs ~20 of them."""
        stmt = self._stmts.get(name)
        if stmt is None:
            stmt = self._stmts[name] = Fast(build(), self.engine.dialect)
        return stmt

    def _insert(self, table: Table) -> Any:
        mod = postgresql if self.dialect == "postgresql" else sqlite
        return mod.insert(table)

    # -- rows every part needs ---------------------------------------------------------------
    def _ensure_groups(self, c: Connection, keys: Iterable[Key], now: datetime) -> None:
        # in key order: replicas creating the same groups at once wait for each other in
        # one order, never each for the other (PostgreSQL)
        missing = sorted(k for k in set(keys) if k not in self._known_groups)
        if not missing:
            return
        self._q("groups.ensure", lambda: self._insert(t.rule_groups).on_conflict_do_nothing()
                ).run(c, [{"rule": r, "grp": g, "seq": 0, "created_at": now,
                           "sustained_count": 0, "pending_count": 0, "pending_bytes": 0}
                          for r, g in missing])
        self._known_groups.update(missing)

    def _ensure_source(self, c: Connection, source: str, source_type: str) -> None:
        if source in self._known_sources:
            return
        c.execute(self._insert(t.sources).values(
            name=source, type=source_type, healthy=True, events=0, duplicates=0, errors=0)
            .on_conflict_do_nothing())
        self._known_sources.add(source)


def other_gone(daemon: Any, owner: str, stale_before: datetime, exclusive: bool) -> Any:
    """SQL condition: the daemon in column `daemon` is another one, and gone — stopped, or
    silent since `stale_before`; with `exclusive` (we hold the SQLite lock) any other one."""
    if exclusive:
        return daemon != owner
    d = t.daemons.c
    alive = select(d.id).where(and_(d.heartbeat_at >= stale_before, d.stopped_at.is_(None)))
    return and_(daemon != owner, daemon.not_in(alive))


def sqlite_value(value: Any) -> Any:
    """A value as SQLAlchemy stores it in SQLite (JSON text, naive-UTC datetime text)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def _out_of_space(error: str) -> bool:
    """Whether a refused write's error says the disk (or quota) is full: SQLite's "database
    or disk is full", PostgreSQL's "No space left on device" / "disk quota exceeded"."""
    text = error.lower()
    return "full" in text or "no space left" in text or "quota" in text


def sqlite_insert_many(c: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """`INSERT OR IGNORE` straight to sqlite3's executemany: the ingest hot path.

    SQLAlchemy's per-row parameter processing was a large share of ingest time (bench/); the
    values are converted exactly as its JSON and UTCDateTime types would store them, and
    test_store.py reads them back through SQLAlchemy on every run."""
    keys = list(rows[0])
    cols = [table.c[k].name for k in keys]  # names from tables.py; values stay bound
    sql = (f"INSERT OR IGNORE INTO {table.name} ({', '.join(cols)}) "  # noqa: S608
           f"VALUES ({', '.join('?' * len(cols))})")
    stamps: dict[datetime, str] = {}  # the timestamps of a batch repeat: each converted once

    def stamp(value: Any) -> Any:
        text = stamps.get(value)
        if text is None:
            text = stamps[value] = sqlite_value(value)
        return text

    def convert(k: str) -> Callable[[Any], Any] | None:
        kind = table.c[k].type
        return stamp if isinstance(kind, t.UTCDateTime) else \
            sqlite_value if isinstance(kind, JSON) else None
    conv = [(k, convert(k)) for k in keys]
    sqlite_executemany(c, sql, [tuple(r[k] if f is None or r[k] is None else f(r[k])
                                      for k, f in conv) for r in rows])
