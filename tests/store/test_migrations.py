"""Migrations: the hand-kept HEAD matches alembic's, and the migrated schema matches tables.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import bindparam, text

from triggerd.store import Store
from triggerd.store.migrate import HEAD, alembic_config, current
from triggerd.store.tables import UTCDateTime, metadata

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_head_constant_matches_the_migrations(store: Store) -> None:
    script = ScriptDirectory.from_config(alembic_config(store.engine))
    assert script.get_current_head() == HEAD
    assert current(store.engine) == HEAD


def test_migrated_schema_matches_the_table_definitions(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_upgrade_is_idempotent(store: Store) -> None:
    store.upgrade()
    store.upgrade()
    assert current(store.engine) == HEAD


def test_0005_summarises_what_is_already_pending(store: Store) -> None:
    """A store upgraded from 0004 starts with each group's summary equal to its pending rows
    (the daemon reads only the summary from then on)."""
    cfg = alembic_config(store.engine)
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    try:
        at = bindparam("at", type_=UTCDateTime())
        with store.engine.begin() as conn:
            conn.execute(text("INSERT INTO rule_groups (rule, grp, seq, created_at, "
                              "sustained_count) VALUES ('r', 'x', 1, :at, 0), "
                              "('r', 'y', 0, :at, 0), ('q', '', 0, :at, 0)").bindparams(at),
                         {"at": T0})
            for n, (grp, trig) in enumerate([("x", None), ("x", None), ("x", "r.1"),
                                             ("y", None)]):
                conn.execute(text("INSERT INTO rule_events (rule, event_id, grp, size, "
                                  "observed_at, trigger_id) VALUES ('r', :id, :grp, :size, "
                                  ":at, :trig)").bindparams(at),
                             {"id": f"e{n}", "grp": grp, "size": 10 * (n + 1),
                              "at": T0 + timedelta(minutes=n), "trig": trig})
    finally:
        store.upgrade()
    assert current(store.engine) == HEAD
    pend = {k: (p.count, p.bytes, p.first_at, p.last_at) for k, p in store.pending().items()}
    assert pend == {("r", "x"): (2, 30, T0, T0 + timedelta(minutes=1)),
                    ("r", "y"): (1, 40, T0 + timedelta(minutes=3), T0 + timedelta(minutes=3))}
