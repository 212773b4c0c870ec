"""The file table a filesystem source keeps: the daemon service `"files"`, as the source needs it.

The source owns this protocol; the store implements it (`triggerd.store.files.StoreFileTable`,
rows written in the transaction of the events they cover), and `MemoryFileTable` stands in
where there is no store (a source built without the daemon: tests, tools).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from triggerd.plugin import FileRow

__all__ = ["FileTable", "MemoryFileTable"]


class FileTable(Protocol):
    """The async view of the table a filesystem source uses (one source's rows)."""

    async def load(self, source: str) -> dict[str, FileRow]: ...

    async def load_sigs(self, source: str) -> list[tuple[str, int, int, int]]:
        """(path, size, mtime_ns, inode) of every row: what a start-up needs, fast."""

    async def lookup(self, source: str, paths: Sequence[str]) -> dict[str, FileRow]:
        """The rows of these paths (those the table has), keyed by path."""

    async def save(self, source: str, rows: Sequence[FileRow]) -> None: ...

    async def delete(self, source: str, paths: Sequence[str]) -> None: ...

    def with_events(self, source: str, rows: Sequence[FileRow], gone: Sequence[str]
                    ) -> Callable[[Any], None] | None:
        """`save` and `delete` as work for the transaction that stores the events the rows
        cover (`SourceContext.emit(events, also=...)`); None when the table cannot join it."""


class MemoryFileTable:
    """A `FileTable` that lives as long as the process (used when the daemon passes none)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, FileRow]] = {}

    async def load(self, source: str) -> dict[str, FileRow]:
        return dict(self.rows.get(source, {}))

    async def load_sigs(self, source: str) -> list[tuple[str, int, int, int]]:
        return [(r.path, r.size, r.mtime_ns, r.inode) for r in self.rows.get(source, {}).values()]

    async def lookup(self, source: str, paths: Sequence[str]) -> dict[str, FileRow]:
        table = self.rows.get(source, {})
        return {p: table[p] for p in paths if p in table}

    async def save(self, source: str, rows: Sequence[FileRow]) -> None:
        self.rows.setdefault(source, {}).update((r.path, r) for r in rows)

    async def delete(self, source: str, paths: Sequence[str]) -> None:
        table = self.rows.get(source, {})
        for p in paths:
            table.pop(p, None)

    def with_events(self, source: str, rows: Sequence[FileRow], gone: Sequence[str]
                    ) -> None:
        return None  # no store transaction to join: saved after the events, by `save`
