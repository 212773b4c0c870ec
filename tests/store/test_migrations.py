"""Migrations: the hand-kept HEAD matches alembic's, and the migrated schema matches tables.py."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from triggerd.store import Store
from triggerd.store.migrate import HEAD, alembic_config, current
from triggerd.store.tables import metadata


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
