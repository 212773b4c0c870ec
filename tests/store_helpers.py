"""Store calls only tests make: shorthands over the store's own transactions and queries.

The daemon never claims a job without its context, reads flags outside a decision's
snapshot, or beats by hand; tests do, to set up and to look."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from triggerd.model import Job, RuleFlags, Trigger
from triggerd.store import Store
from triggerd.store import tables as t


def claim_job(store: Store, job_id: str, owner: str, concurrency: int, now: datetime
              ) -> Job | None:
    """Start an attempt of a queued/retrying job if its rule has a free slot (`Store.claim`)."""
    return store.claim(job_id, owner, lambda _rule: concurrency, now).job


def trigger_context(store: Store, job_id: str) -> tuple[Trigger, list[dict[str, Any]]] | None:
    """The trigger behind a job and the events it consumed, as a backend is given them."""
    with store.read() as c:
        found = store._trigger_context(c, job_id)
    return None if found is None else (found.trigger, found.events)


def trigger_params(store: Store, trigger_id: str) -> dict[str, Any]:
    with store.read() as c:
        value = c.execute(select(t.triggers.c.params)
                          .where(t.triggers.c.id == trigger_id)).scalar()
    return dict(value or {})


def rule_flags(store: Store) -> dict[str, RuleFlags]:
    """Every rule's pause flags (a decision reads them in its snapshot)."""
    with store.read() as c:
        return store._flags(c, None)


def active_jobs_by_rule(store: Store) -> dict[str, int]:
    """Queued, running and retrying jobs per rule (what `concurrency` is measured by)."""
    with store.read() as c:
        return store._active(c, None)

