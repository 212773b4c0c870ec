"""A fresh, migrated, in-memory SQLite store for each simulated test, in about a millisecond:
the daemon's own SQL store (`SqlSimStore`, with the reads a simulation's results need).

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
from collections import defaultdict
from datetime import datetime
from functools import cache

from sqlalchemy import select
from sqlalchemy.exc import SADeprecationWarning

from triggerd.store import tables as t
from triggerd.store.sql import Store


class SqlSimStore(Store):
    """The SQL store, and what a simulation reads of it at its end (`simstore.SimStore`)."""

    def memberships(self) -> dict[str, list[str]]:
        re_ = t.rule_events.c
        out: dict[str, list[str]] = {}
        with self.read() as c:
            for trigger_id, event_id in c.execute(select(re_.trigger_id, re_.event_id)
                                                  .where(re_.trigger_id.is_not(None))):
                out.setdefault(trigger_id, []).append(event_id)
        return out

    def job_statuses(self) -> dict[str, str]:
        j = t.jobs.c
        with self.read() as c:
            return {trigger_id: str(status) for trigger_id, status in
                    c.execute(select(j.trigger_id, j.status))}

    def pending_times(self) -> dict[str, list[datetime]]:
        r = t.rule_events.c
        out: dict[str, list[datetime]] = defaultdict(list)
        with self.read() as c:
            for rule, at in c.execute(select(r.rule, r.observed_at)
                                      .where(r.trigger_id.is_(None))):
                out[rule].append(at)
        return dict(out)

    def reject_errors(self) -> list[str]:
        with self.read() as c:
            return list(c.execute(select(t.rejects.c.error)).scalars())


def _url(name: str) -> str:
    return f"sqlite:///file:{name}?mode=memory&cache=shared&uri=true"


def _open(name: str) -> SqlSimStore:
    """A store on the named in-memory database. SQLAlchemy picks its one-connection-per-thread
    pool for it (a simulation is one thread), and warns that it may pick another pool one day:
    any pool works, as long as one of its connections stays open."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*SingletonThreadPool",
                                category=SADeprecationWarning)
        return SqlSimStore(_url(name))


@cache
def _template() -> SqlSimStore:
    """The migrated database every test's store is copied from (kept for the process)."""
    store = _open(f"triggerd-template-{uuid.uuid4().hex}")
    store.upgrade()
    return store


def fresh_store() -> SqlSimStore:
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
