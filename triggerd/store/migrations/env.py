"""Alembic environment: always given a connection by triggerd.store.migrate.

That connection already holds the migration lock and an open transaction (see
triggerd.store.migrate.upgrade), so alembic's check of the current revision and every
migration run under the lock. Run by hand (`alembic` with this directory), the same lock is
taken here, so a manual upgrade is as safe beside running daemons as `triggerd db upgrade`.
"""

from __future__ import annotations

from alembic import context

from triggerd.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `alembic` run by hand
    from sqlalchemy import create_engine

    from triggerd.store.migrate import migration_lock

    url = context.config.get_main_option("sqlalchemy.url") or "sqlite://"
    engine = create_engine(url)
    with engine.connect() as conn, migration_lock(conn), conn.begin():
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
    engine.dispose()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
