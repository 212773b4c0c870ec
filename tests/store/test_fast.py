"""`Fast` statements (the store's hot path on sqlite3 directly) store and read values exactly
as SQLAlchemy does: each case runs one statement both ways on the same SQLite file and compares
what the database holds and what comes back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from triggerd.errors import StoreError
from triggerd.store import Store
from triggerd.store import tables as t
from triggerd.store.fast import Fast

AT = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path}/state.db")
    s.upgrade()
    return s


def trigger_row(tid: str, **over: object) -> dict[str, object]:
    return {"id": tid, "rule": "r", "grp": "g\u00e9", "seq": 1, "fired_at": AT, "reason": "why",
            "kind": "batch", "manual": True, "events": 2,
            "params": {"a": [1, "x"], "n": None}, "request_id": None, **over}


def test_an_insert_and_a_select_hold_and_return_what_sqlalchemy_does(store: Store) -> None:
    fast = Fast(insert(t.triggers), store.engine.dialect)
    with store.write() as c:
        fast.run(c, trigger_row("fast"))
        c.execute(insert(t.triggers), trigger_row("slow"))
    with store.read() as c:
        raw = c.exec_driver_sql("SELECT fired_at, manual, params, grp FROM triggers "
                                "ORDER BY id").all()
        assert raw[0] == raw[1]  # the same text, integers and JSON in the file
        q = select(t.triggers).where(t.triggers.c.id.in_(bindparam("ids", expanding=True)))
        by_fast = Fast(q, store.engine.dialect).run(c, {"ids": ["fast", "slow"]}).all()
        by_sa = c.execute(q, {"ids": ["fast", "slow"]}).all()
    assert [tuple(r) for r in by_fast] == [tuple(r) for r in by_sa]
    row = by_fast[0]
    assert row.fired_at == AT and row.fired_at.tzinfo == UTC  # aware UTC, as the type says
    assert row.manual is True and row.params == {"a": [1, "x"], "n": None}


def test_an_update_counts_rows_and_literal_values_are_bound(store: Store) -> None:
    with store.write() as c:
        c.execute(insert(t.triggers), [trigger_row("a"), trigger_row("b", rule="other")])
        stmt = update(t.triggers).where(t.triggers.c.rule == bindparam("b_rule")).values(
            reason="done", request_id=None, fired_at=bindparam("b_at"))
        res = Fast(stmt, store.engine.dialect).run(c, {"b_rule": "r", "b_at": AT})
        assert res.rowcount == 1
        rows = c.execute(select(t.triggers.c.id, t.triggers.c.reason, t.triggers.c.fired_at)
                         .order_by(t.triggers.c.id)).all()
    assert [tuple(r) for r in rows] == [("a", "done", AT), ("b", "why", AT)]


def test_an_empty_in_list_and_executemany_work(store: Store) -> None:
    with store.write() as c:
        Fast(insert(t.triggers), store.engine.dialect).run(
            c, [trigger_row("a"), trigger_row("b")])
        q = select(t.triggers.c.id).where(t.triggers.c.id.in_(bindparam("ids", expanding=True)))
        fast = Fast(q, store.engine.dialect)
        assert list(fast.run(c, {"ids": []}).scalars()) == []
        assert sorted(fast.run(c, {"ids": ["a", "b", "zz"]}).scalars()) == ["a", "b"]
        literal = select(t.triggers.c.id).where(t.triggers.c.id.in_(["b", "zz"]))  # no params
        assert list(Fast(literal, store.engine.dialect).run(c).scalars()) == ["b"]


def test_database_errors_surface_as_sqlalchemy_and_store_errors(store: Store) -> None:
    fast = Fast(insert(t.triggers), store.engine.dialect)
    with pytest.raises(IntegrityError), store.write() as c:
        fast.run(c, trigger_row("a"))
        fast.run(c, trigger_row("a"))  # the same primary key
    with store.read() as c:  # the failed transaction left nothing
        assert c.execute(select(t.triggers.c.id)).all() == []
    with store.write() as c:
        c.exec_driver_sql("DROP TABLE triggers")
    with pytest.raises(StoreError, match="no such table: triggers") as info, \
            store.write() as c:
        fast.run(c, trigger_row("b"))
    assert isinstance(info.value.__cause__, OperationalError)
