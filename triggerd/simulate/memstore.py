"""A fresh, migrated, in-memory SQLite store for each simulated test, in about a millisecond.

Each store is a named in-memory database opened through a SQLite URI
(`file:NAME?mode=memory&cache=shared`), so that it can be filled by copying another; it lives
while a connection to it is open and is gone when the store is closed. Migrating costs tens
of milliseconds, so one database is migrated once per process and copied into each new one
with SQLite's backup API.
"""

from __future__ import annotations

import sqlite3
import uuid
import warnings
from functools import cache

from sqlalchemy.exc import SADeprecationWarning

from triggerd.store.sql import Store


def _url(name: str) -> str:
    return f"sqlite:///file:{name}?mode=memory&cache=shared&uri=true"


def _open(name: str) -> Store:
    """A store on the named in-memory database. SQLAlchemy picks its one-connection-per-thread
    pool for it (a simulation is one thread), and warns that it may pick another pool one day:
    any pool works, as long as one of its connections stays open."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*SingletonThreadPool",
                                category=SADeprecationWarning)
        return Store(_url(name))


@cache
def _template() -> Store:
    """The migrated database every test's store is copied from (kept for the process)."""
    store = _open(f"triggerd-template-{uuid.uuid4().hex}")
    store.upgrade()
    return store


def fresh_store() -> Store:
    """A new in-memory store at the current schema; close it to free it."""
    name = f"triggerd-sim-{uuid.uuid4().hex}"
    target = sqlite3.connect(f"file:{name}?mode=memory&cache=shared", uri=True)
    try:
        source = _template().engine.raw_connection()
        try:
            source.driver_connection.backup(target)  # type: ignore[union-attr]
        finally:
            source.close()
        store = _open(name)
        store.upgrade()  # a no-op at the head: checks the copy
        store.pin()  # a simulation runs its store work on one thread: keep its connection
    finally:
        target.close()  # the store's own connection keeps the database alive
    return store
