"""Alembic migrations, run programmatically (`triggerd db upgrade`, and `run` at start).

Contract:
- `upgrade` is safe when several processes call it at once (replicas starting together, or
  `db upgrade` beside running daemons): the check "which revision is the store at?" and the
  upgrade itself run under one database-wide lock, so the first caller migrates and the others
  wait, then find nothing to do. PostgreSQL: a session advisory lock (`pg_advisory_lock` on
  `MIGRATION_LOCK_KEY`) held on the migrating connection for the whole upgrade. SQLite: the
  database's own write lock, taken by `BEGIN IMMEDIATE` when the upgrade transaction opens
  (see triggerd.store.connect) and held until it commits.
- `check_current` is what the query commands use instead: it reads, never writes, and raises
  `SchemaNotCurrentError` when the store is missing, empty, behind or ahead of this triggerd.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError, OperationalError

from triggerd.errors import StoreError
from triggerd.store.connect import READ_ONLY, sqlite_path

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("triggerd.store")

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD = "0006"  # the newest revision in migrations/versions (a test keeps this in step)
# The advisory-lock key every triggerd uses for migrations: the bytes of "triggerd" as a bigint.
MIGRATION_LOCK_KEY = int.from_bytes(b"triggerd", "big")
# How long a query command waits for a migration under way before giving up (PostgreSQL).
QUERY_WAIT = "15s"


class SchemaNotCurrentError(StoreError):
    """The store's schema is not the one this triggerd needs; only `run` or `db upgrade` may
    change it. `state` is `missing` (no database / no tables), `behind` or `ahead`."""

    def __init__(self, message: str, state: str, revision: str | None) -> None:
        super().__init__(message)
        self.state = state
        self.revision = revision


def alembic_config(engine: Engine) -> Config:
    # alembic (and mako, which it brings) is imported only when a migration runs: a query
    # command, or a daemon starting on a store already at HEAD (`at_head`), never needs it
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # only for `alembic` run by hand: triggerd always hands env.py a connection
    cfg.set_main_option("sqlalchemy.url",
                        engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the store to `revision` under the migration lock (a no-op when already there)."""
    from alembic import command

    cfg = alembic_config(engine)
    try:
        with engine.connect() as conn, migration_lock(conn), conn.begin():
            # alembic reads the current revision here, inside the locked transaction
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except DBAPIError as exc:
        if isinstance(exc, OperationalError):
            raise  # the caller words it (Store.upgrade: "cannot migrate the store ...")
        where = engine.url.render_as_string(hide_password=True)
        raise StoreError(f"cannot migrate the store {where}: {exc.orig}") from exc


@contextmanager
def migration_lock(conn: Connection) -> Iterator[None]:
    """Hold the database-wide migration lock on `conn` (PostgreSQL; a no-op elsewhere, where
    the upgrade transaction's own write lock serialises migrators)."""
    if conn.dialect.name != "postgresql":
        yield
        return
    key = {"key": MIGRATION_LOCK_KEY}
    got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar()
    conn.commit()
    if not got:
        log.info("another process is migrating the store; waiting for it to finish")
        conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
        conn.commit()
    try:
        yield
    finally:
        try:
            if conn.in_transaction():
                conn.rollback()
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
            conn.commit()
        except DBAPIError:
            # a broken session: closing it releases the lock on the server
            conn.invalidate()


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def at_head(engine: Engine) -> bool:
    """True when the store is already at HEAD: a cheap check that skips loading alembic."""
    try:
        with engine.connect() as conn:
            return bool(conn.execute(text("SELECT version_num FROM alembic_version"))
                        .scalar() == HEAD)
    except DBAPIError:
        return False


def check_current(engine: Engine, where: str) -> None:
    """Raise SchemaNotCurrentError unless the store is at HEAD; never creates or changes
    anything (not even an empty SQLite file). `where` names the store in messages (a URL
    without its password). On PostgreSQL a migration under way is waited for (QUERY_WAIT)."""
    path = sqlite_path(engine.url)
    if path is not None and not path.exists():
        raise SchemaNotCurrentError(f"the store {where} does not exist yet", "missing", None)
    revision = _read_revision(engine, where)
    if revision == HEAD:
        return
    if revision is None:
        raise SchemaNotCurrentError(f"the store {where} has no triggerd tables yet",
                                    "missing", None)
    if revision < HEAD:
        raise SchemaNotCurrentError(
            f"the store {where} is at schema revision {revision}; this triggerd needs {HEAD}",
            "behind", revision)
    raise SchemaNotCurrentError(
        f"the store {where} is at schema revision {revision}, newer than this triggerd "
        f"knows ({HEAD}): upgrade triggerd", "ahead", revision)


def _read_revision(engine: Engine, where: str) -> str | None:
    try:
        with engine.connect().execution_options(**{READ_ONLY: True}) as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"SET LOCAL lock_timeout = '{QUERY_WAIT}'"))
                # shared: waits only while a migrator holds the lock exclusively
                conn.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"),
                             {"key": MIGRATION_LOCK_KEY})
            if not inspect(conn).has_table("alembic_version"):
                return None
            value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            return None if value is None else str(value)
    except DBAPIError as exc:
        if exc.orig is not None and getattr(exc.orig, "sqlstate", None) == "55P03":
            raise StoreError(f"the store {where} has been migrating for over {QUERY_WAIT}; "
                             "try again when it has finished") from None
        raise StoreError(f"store {where}: {exc.orig}") from exc
