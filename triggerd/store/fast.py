"""Built-once statements, run straight on sqlite3 on SQLite: the store's hot path.

Executing a built SQLAlchemy Core statement costs several times what sqlite3 itself does
(bench/RESULTS.md, "Design figures"), and the path from a file's event to its backend runs ~20 of
them, so the statements on that path are compiled once per dialect and, on SQLite, run on the
sqlite3 cursor of the transaction's own connection. Values go in and come out through
SQLAlchemy's own bind and result processors for each type (UTCDateTime, JSON, Boolean), so
they are stored and read exactly as through SQLAlchemy; tests/store runs every statement both
ways (SQLite here, SQLAlchemy on PostgreSQL). On other dialects `run` is `Connection.execute`.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Dialect, Executable, Insert, Select
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound

Processor = Callable[[Any], Any] | None
_EXPAND = "__[POSTCOMPILE_{}]"


@contextmanager
def sqlite_errors(sql: str) -> Iterator[None]:
    """sqlite3's errors, raised as SQLAlchemy raises them (IntegrityError, OperationalError:
    the store turns the latter into StoreError), for SQL run on sqlite3 directly."""
    try:
        yield
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc


def _driver(c: Connection) -> Any:
    raw = c.connection.driver_connection
    assert raw is not None  # noqa: S101 - a live connection in a transaction
    return raw


def sqlite_executemany(c: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """sqlite3's executemany within `c`'s transaction (values already as SQLite stores
    them)."""
    with sqlite_errors(sql):
        _driver(c).executemany(sql, rows)


class FastResult:
    """The part of SQLAlchemy's `CursorResult` the store uses, over a sqlite3 cursor."""

    def __init__(self, cursor: Any, row: Any, procs: Sequence[Processor]) -> None:
        self._cursor = cursor
        self._row = row
        self._procs = procs
        self.rowcount: int = cursor.rowcount

    def _make(self, raw: tuple[Any, ...]) -> Any:
        return self._row._make([v if p is None or v is None else p(v)
                                for v, p in zip(raw, self._procs, strict=True)])

    def __iter__(self) -> Iterator[Any]:
        return (self._make(r) for r in self._cursor)

    def all(self) -> list[Any]:
        return [self._make(r) for r in self._cursor.fetchall()]

    def first(self) -> Any:
        raw = self._cursor.fetchone()
        self._cursor.close()
        return None if raw is None else self._make(raw)

    def one(self) -> Any:
        rows = self.all()
        if not rows:
            raise NoResultFound("No row was found when one was required")
        if len(rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        return rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> Iterator[Any]:
        return (r[0] for r in self)


class Fast:
    """A statement compiled once; `run(c, params)` executes it within `c`'s transaction."""

    def __init__(self, stmt: Executable, dialect: Dialect) -> None:
        self.stmt = stmt
        self._dialect = dialect
        self._sqlite = dialect.name == "sqlite"
        self._plans: dict[tuple[str, ...], _Plan] = {}  # by parameter keys (inserts)

    def run(self, c: Connection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
            | None = None) -> Any:
        if not self._sqlite:
            return c.execute(self.stmt, params)
        rows = [params] if isinstance(params, Mapping) or params is None else list(params)
        if not rows:
            return c.execute(self.stmt, params)
        first: Mapping[str, Any] = rows[0] or {}
        keys = tuple(first) if isinstance(self.stmt, Insert) else ()
        plan = self._plans.get(keys)
        if plan is None:
            plan = self._plans[keys] = _Plan(self.stmt, self._dialect, keys)
        if plan.sql is None or plan.empty_in(first) or (plan.expanding and len(rows) > 1):
            return c.execute(self.stmt, params)  # e.g. an empty IN list: SQLAlchemy renders it
        raw = _driver(c)
        if len(rows) > 1:
            with sqlite_errors(plan.sql):
                cursor = raw.executemany(plan.sql, [plan.values(r or {}) for r in rows])
        else:
            sql, values = plan.expand(first)
            with sqlite_errors(sql):
                cursor = raw.execute(sql, values)
        return FastResult(cursor, plan.row, plan.procs)


class _Plan:
    """One compiled form: SQL with `?` placeholders, where each value comes from, and how
    values are converted both ways. `sql` is None for what the fast path does not cover (an
    insert leaving a column to its Python default), which then runs through SQLAlchemy."""

    def __init__(self, stmt: Executable, dialect: Dialect, keys: tuple[str, ...]) -> None:
        compiled: Any = stmt.compile(  # type: ignore[attr-defined]  # every statement can
            dialect=dialect, column_keys=list(keys) or None)
        self.sql: str | None = compiled.string
        binds = compiled.binds
        order = list(compiled.positiontup or [])
        self.expanding = [n for n in dict.fromkeys(order) if binds[n].expanding]
        self.slots: list[tuple[str, bool, Any, Processor]] = []
        for name in order:
            bind = binds[name]
            given = bind.required  # else a literal value (None included)
            if given and bind.type._isnull:
                raise TypeError(f"bind {name!r} has no type: give it the column's type")
            if given and isinstance(stmt, Insert) and name not in keys:
                self.sql = None  # a column default SQLAlchemy would fill in
            proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
            self.slots.append((name, given, None if given else bind.effective_value, proc))
        columns = list(stmt.selected_columns) if isinstance(stmt, Select) else []
        self.row = namedtuple("Row", [c.key or f"c{i}" for i, c in enumerate(columns)],  # type: ignore[misc]
                              rename=True)
        self.procs: list[Processor] = [
            col.type.dialect_impl(dialect).result_processor(dialect, None) for col in columns]
        self._sql_by_lengths: dict[tuple[int, ...], str] = {}

    def values(self, params: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, given, fixed, proc in self.slots:
            value = params[name] if given else fixed
            out.append(value if proc is None or value is None else proc(value))
        return out

    def empty_in(self, params: Mapping[str, Any]) -> bool:
        return any(not (params[name] if given else fixed)
                   for name, given, fixed, _proc in self.slots if name in self.expanding)

    def expand(self, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
        assert self.sql is not None  # noqa: S101 - checked by the caller
        if not self.expanding:
            return self.sql, self.values(params)
        lists = {name: params[name] if given else fixed
                 for name, given, fixed, _proc in self.slots if name in self.expanding}
        lengths = tuple(len(lists[n]) for n in self.expanding)
        sql = self._sql_by_lengths.get(lengths)
        if sql is None:
            sql = self.sql
            for name, n in zip(self.expanding, lengths, strict=True):
                sql = sql.replace(_EXPAND.format(name), ", ".join("?" * n))
            self._sql_by_lengths[lengths] = sql
        out: list[Any] = []
        for name, given, fixed, proc in self.slots:
            items = lists[name] if name in lists else [params[name] if given else fixed]
            out.extend(v if proc is None or v is None else proc(v) for v in items)
        return sql, out
