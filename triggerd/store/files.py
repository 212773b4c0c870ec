"""The `files` table: what the filesystem source has seen, the basis of "nothing lost".

The filesystem source compares every file it finds against its row here: no row, or a
different (size, mtime_ns, inode), means the file is new or changed. Rows are written in the
transaction that stores the events they cover (`with_events`), or after it: never before, so
a crash re-emits (a duplicate the store counts) rather than loses.

The functions are synchronous, like the rest of the store, and take a `Store`; `StoreFileTable`
adapts them to the async `FileTable` protocol the source uses, running them through the
daemon's store thread (`Daemon.call`) or, by default, `asyncio.to_thread`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from triggerd.model import FileRow
from triggerd.store import tables as t
from triggerd.store.fast import sqlite_executemany
from triggerd.store.runner import Runner, to_thread
from triggerd.store.sql import Store, sqlite_value

__all__ = ["FileRow", "StoreFileTable", "delete_files", "files_at", "load_files", "load_sigs",
           "save_files", "write_files"]

_CHUNK = 500


def load_files(store: Store, source: str) -> dict[str, FileRow]:
    """Every row of `source`, keyed by path (plain columns only: 100k rows load in ~0.3 s)."""
    f = t.files.c
    with store.read() as c:
        result = c.execute(select(f.path, f.inode, f.size, f.mtime_ns, f.fingerprint)
                           .where(f.source == source))
        return {r[0]: FileRow(*r) for r in result}


def files_at(store: Store, source: str, paths: Sequence[str]) -> dict[str, FileRow]:
    """The rows of `source` for `paths` (those it has), keyed by path."""
    f = t.files.c
    out: dict[str, FileRow] = {}
    with store.read() as c:
        for i in range(0, len(paths), _CHUNK):
            result = c.execute(select(f.path, f.inode, f.size, f.mtime_ns, f.fingerprint)
                               .where(f.source == source, f.path.in_(paths[i:i + _CHUNK])))
            out.update((r[0], FileRow(*r)) for r in result)
    return out


def load_sigs(store: Store, source: str) -> list[tuple[str, int, int, int]]:
    """(path, size, mtime_ns, inode) of every row of `source` as plain tuples (100k rows in
    ~0.3 s: what the source's start-up waits for before its first scan)."""
    f = t.files.c
    with store.read() as c:
        if store.dialect == "sqlite":  # straight from sqlite3: no per-row result processing
            return c.exec_driver_sql(  # type: ignore[return-value]
                "SELECT path, size, mtime_ns, inode FROM files WHERE source = ?",
                (source,)).fetchall()
        return [tuple(r) for r in c.execute(
            select(f.path, f.size, f.mtime_ns, f.inode).where(f.source == source))]


def save_files(store: Store, source: str, rows: Iterable[FileRow]) -> None:
    """Insert or update rows of `source` (one transaction)."""
    rows = list(rows)
    if rows:
        with store.write() as c:
            write_files(store, c, source, rows, ())


def write_files(store: Store, c: Connection, source: str, rows: Sequence[FileRow],
                gone: Sequence[str]) -> None:
    """Upsert `rows` and delete the rows of `gone` paths within the transaction of `c`."""
    now = datetime.now(UTC)
    values = [{"source": source, "path": r.path, "inode": r.inode, "size": r.size,
               "mtime_ns": r.mtime_ns, "fingerprint": r.fingerprint,
               "seen_at": r.seen_at or now} for r in rows]
    if values and store.dialect == "sqlite":
        _sqlite_upsert(c, values)
    elif values:
        mod = postgresql if store.dialect == "postgresql" else sqlite
        stmt = mod.insert(t.files)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.files.c.source, t.files.c.path],
            set_={k: stmt.excluded[k] for k in ("inode", "size", "mtime_ns", "fingerprint",
                                                 "seen_at")})
        for i in range(0, len(values), _CHUNK):
            c.execute(stmt, values[i:i + _CHUNK])
    f = t.files.c
    for i in range(0, len(gone), _CHUNK):
        c.execute(delete(t.files).where(f.source == source, f.path.in_(gone[i:i + _CHUNK])))


_UPSERT = ("INSERT INTO files (source, path, inode, size, mtime_ns, fingerprint, seen_at) "
           "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, path) DO UPDATE SET "
           "inode = excluded.inode, size = excluded.size, mtime_ns = excluded.mtime_ns, "
           "fingerprint = excluded.fingerprint, seen_at = excluded.seen_at")


def _sqlite_upsert(c: Connection, values: list[dict[str, Any]]) -> None:
    """SQLite: straight to sqlite3's executemany, as Store.ingest does (values converted as
    SQLAlchemy's UTCDateTime would store them)."""
    sqlite_executemany(c, _UPSERT, [
        (v["source"], v["path"], v["inode"], v["size"], v["mtime_ns"], v["fingerprint"],
         sqlite_value(v["seen_at"])) for v in values])


def delete_files(store: Store, source: str, paths: Iterable[str]) -> None:
    """Forget rows of `source` (files that are gone)."""
    wanted = list(paths)
    if wanted:
        with store.write() as c:
            write_files(store, c, source, (), wanted)


class StoreFileTable:
    """A `FileTable` bound to a `Store`; the daemon passes `runner=self.call` (its store thread)."""

    def __init__(self, store: Store, runner: Runner | None = None) -> None:
        self.store = store
        self._run: Runner = runner if runner is not None else to_thread

    async def load(self, source: str) -> dict[str, FileRow]:
        return await self._run(lambda: load_files(self.store, source))

    async def load_sigs(self, source: str) -> list[tuple[str, int, int, int]]:
        return await self._run(lambda: load_sigs(self.store, source))

    async def lookup(self, source: str, paths: Sequence[str]) -> dict[str, FileRow]:
        paths = list(paths)
        return await self._run(lambda: files_at(self.store, source, paths))

    async def save(self, source: str, rows: Sequence[FileRow]) -> None:
        rows = list(rows)
        await self._run(lambda: save_files(self.store, source, rows))

    async def delete(self, source: str, paths: Sequence[str]) -> None:
        paths = list(paths)
        await self._run(lambda: delete_files(self.store, source, paths))

    def with_events(self, source: str, rows: Sequence[FileRow], gone: Sequence[str]
                    ) -> Callable[[Connection], None]:
        rows, gone = list(rows), list(gone)
        return lambda c: write_files(self.store, c, source, rows, gone)
