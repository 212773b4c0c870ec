"""The `files` table: what the filesystem source has seen, the basis of "nothing lost".

The filesystem source compares every file it finds against its row here: no row, or a
different (size, mtime_ns, inode), means the file is new or changed. Rows are written only
after the events they cover were stored (`ctx.emit` returned), so a crash re-emits (a
duplicate the store counts) rather than loses.

The functions are synchronous, like the rest of the store, and take a `Store`; `StoreFileTable`
adapts them to the async `FileTable` protocol the source uses, running them through the
daemon's store thread (`Daemon.call`) or, by default, `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from triggerd.store import tables as t
from triggerd.store.sql import Store

__all__ = ["FileRow", "FileTable", "StoreFileTable", "delete_files", "load_files", "save_files"]

T = TypeVar("T")
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class FileRow:
    """One seen file. `path` is absolute; `fingerprint` is the event fingerprint emitted for it."""

    path: str
    inode: int
    size: int
    mtime_ns: int
    fingerprint: str
    seen_at: datetime

    @property
    def sig(self) -> tuple[int, int, int]:
        """What a rescan compares: (size, mtime_ns, inode)."""
        return (self.size, self.mtime_ns, self.inode)


class FileTable(Protocol):
    """The async view of the table a filesystem source uses (one source's rows)."""

    async def load(self, source: str) -> dict[str, FileRow]: ...

    async def save(self, source: str, rows: Sequence[FileRow]) -> None: ...

    async def delete(self, source: str, paths: Sequence[str]) -> None: ...


def load_files(store: Store, source: str) -> dict[str, FileRow]:
    """Every row of `source`, keyed by path."""
    f = t.files.c
    with store.read() as c:
        result = c.execute(select(f.path, f.inode, f.size, f.mtime_ns, f.fingerprint, f.seen_at)
                           .where(f.source == source))
        return {r.path: FileRow(r.path, r.inode, r.size, r.mtime_ns, r.fingerprint, r.seen_at)
                for r in result}


def save_files(store: Store, source: str, rows: Iterable[FileRow]) -> None:
    """Insert or update rows of `source` (one transaction)."""
    values = [{"source": source, "path": r.path, "inode": r.inode, "size": r.size,
               "mtime_ns": r.mtime_ns, "fingerprint": r.fingerprint, "seen_at": r.seen_at}
              for r in rows]
    if not values:
        return
    mod = postgresql if store.dialect == "postgresql" else sqlite
    stmt = mod.insert(t.files)
    stmt = stmt.on_conflict_do_update(
        index_elements=[t.files.c.source, t.files.c.path],
        set_={k: stmt.excluded[k] for k in ("inode", "size", "mtime_ns", "fingerprint",
                                             "seen_at")})
    with store.write() as c:
        for i in range(0, len(values), _CHUNK):
            c.execute(stmt, values[i:i + _CHUNK])


def delete_files(store: Store, source: str, paths: Iterable[str]) -> None:
    """Forget rows of `source` (files that are gone)."""
    wanted = list(paths)
    if not wanted:
        return
    f = t.files.c
    with store.write() as c:
        for i in range(0, len(wanted), _CHUNK):
            c.execute(delete(t.files).where(f.source == source,
                                            f.path.in_(wanted[i:i + _CHUNK])))


class Runner(Protocol):
    """Runs a blocking store call off the event loop (`Daemon.call`, or `asyncio.to_thread`)."""

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


def _to_thread(fn: Callable[[], T]) -> Awaitable[T]:
    return asyncio.to_thread(fn)


class StoreFileTable:
    """A `FileTable` bound to a `Store`; the daemon passes `runner=self.call` (its store thread)."""

    def __init__(self, store: Store, runner: Runner | None = None) -> None:
        self.store = store
        self._run: Runner = runner if runner is not None else _to_thread

    async def load(self, source: str) -> dict[str, FileRow]:
        return await self._run(lambda: load_files(self.store, source))

    async def save(self, source: str, rows: Sequence[FileRow]) -> None:
        rows = list(rows)
        await self._run(lambda: save_files(self.store, source, rows))

    async def delete(self, source: str, paths: Sequence[str]) -> None:
        paths = list(paths)
        await self._run(lambda: delete_files(self.store, source, paths))
