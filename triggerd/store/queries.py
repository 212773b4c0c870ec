"""The read model: read-only queries behind the CLI's `events`, `triggers`, `jobs` and
`status`, and the store's side of a `/metrics` scrape (`read_snapshot`, `ping`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, desc, func, select

from triggerd.model import ACTIVE_JOB_STATUSES, Job, Trigger
from triggerd.store import tables as t
from triggerd.store.jobs import job_row
from triggerd.store.rejects import count_rejects
from triggerd.store.sql import Store


def list_events(store: Store, *, rule: str | None = None, source: str | None = None,
                since: datetime | None = None, limit: int = 50) -> list[dict[str, Any]]:
    e = t.events.c
    q = select(t.events)
    if rule is not None:
        q = q.join(t.rule_events, and_(t.rule_events.c.event_id == e.id,
                                       t.rule_events.c.rule == rule))
    if source is not None:
        q = q.where(e.source == source)
    if since is not None:
        q = q.where(e.observed_at >= since)
    q = q.order_by(desc(e.observed_at), desc(e.id)).limit(limit)
    with store.read() as c:
        rows = c.execute(q).all()
    return [{"id": r.id, "source": r.source, "kind": r.kind, "subject": r.subject,
             "fingerprint": r.fingerprint, "observed_at": r.observed_at.isoformat(),
             "payload": r.payload} for r in rows]


def list_triggers(store: Store, *, rule: str | None = None, since: datetime | None = None,
                  limit: int = 50) -> list[Trigger]:
    tr = t.triggers.c
    q = select(t.triggers)
    if rule is not None:
        q = q.where(tr.rule == rule)
    if since is not None:
        q = q.where(tr.fired_at >= since)
    q = q.order_by(desc(tr.fired_at), desc(tr.seq)).limit(limit)
    with store.read() as c:
        return [Trigger(id=r.id, rule=r.rule, group=r.grp, seq=r.seq, fired_at=r.fired_at,
                        reason=r.reason, manual=r.manual, events=r.events, kind=r.kind)
                for r in c.execute(q)]


def list_jobs(store: Store, *, rule: str | None = None, status: str | None = None,
              limit: int = 50) -> list[Job]:
    j = t.jobs.c
    q = select(t.jobs)
    if rule is not None:
        q = q.where(j.rule == rule)
    if status is not None:
        q = q.where(j.status == status)
    q = q.order_by(desc(j.created_at), desc(j.id)).limit(limit)
    with store.read() as c:
        return [job_row(r) for r in c.execute(q)]


def job(store: Store, job_id: str) -> Job | None:
    with store.read() as c:
        row = c.execute(select(t.jobs).where(t.jobs.c.id == job_id)).first()
    return job_row(row) if row else None


def active_jobs(store: Store, rule: str | None = None) -> list[Job]:
    """Queued, running and retrying jobs, oldest first."""
    q = select(t.jobs).where(t.jobs.c.status.in_(list(ACTIVE_JOB_STATUSES)))
    if rule is not None:
        q = q.where(t.jobs.c.rule == rule)
    with store.read() as c:
        return [job_row(r) for r in c.execute(q.order_by(t.jobs.c.created_at))]


def trigger_counts(store: Store) -> dict[str, tuple[int, datetime | None]]:
    """Per rule: (number of triggers kept, time of the last one)."""
    from sqlalchemy import func

    tr = t.triggers.c
    with store.read() as c:
        return {r[0]: (int(r[1]), r[2]) for r in c.execute(
            select(tr.rule, func.count(), func.max(tr.fired_at)).group_by(tr.rule))}


def last_trigger_times(store: Store) -> dict[str, datetime | None]:
    g = t.rule_groups.c
    from sqlalchemy import func

    with store.read() as c:
        return {r[0]: r[1] for r in c.execute(
            select(g.rule, func.max(g.last_trigger_at)).group_by(g.rule))}


def sources(store: Store) -> dict[str, dict[str, Any]]:
    with store.read() as c:
        return {r.name: {"type": r.type, "healthy": r.healthy, "events": r.events,
                         "duplicates": r.duplicates, "errors": r.errors,
                         "last_event_at": r.last_event_at, "error": r.error,
                         "checkpoint": r.checkpoint, "details": r.details or {}}
                for r in c.execute(select(t.sources))}


def latest_daemon(store: Store) -> dict[str, Any] | None:
    d = t.daemons.c
    with store.read() as c:
        r = c.execute(select(t.daemons).order_by(desc(d.heartbeat_at)).limit(1)).first()
    if r is None:
        return None
    return {"id": r.id, "pid": r.pid, "host": r.host, "version": r.version,
            "started_at": r.started_at, "heartbeat_at": r.heartbeat_at,
            "stopped_at": r.stopped_at}


def request_result(store: Store, request_id: int) -> tuple[datetime | None, str | None]:
    r = t.requests.c
    with store.read() as c:
        row = c.execute(select(r.handled_at, r.result).where(r.id == request_id)).first()
    return (row[0], row[1]) if row else (None, None)


@dataclass
class StoreSnapshot:
    """What the store says at scrape time (read on the store thread)."""

    at: datetime
    pending: dict[str, tuple[int, int, datetime | None]] = field(default_factory=dict)
    last_success: dict[str, datetime | None] = field(default_factory=dict)
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    rejects: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> kind -> n


def read_snapshot(store: Store, rules: Iterable[str], now: datetime) -> StoreSnapshot:
    """Per rule pending events (count, bytes, oldest), last success; jobs by backend/status."""
    names = list(rules)
    snap = StoreSnapshot(at=now)
    g, j = t.rule_groups.c, t.jobs.c
    conv = t.UTCDateTime().process_result_value
    with store.read() as c:
        # per rule from its groups' rows (their pending summaries): not from every pending row
        for rule, count, size, oldest, last in c.execute(
                select(g.rule, func.sum(g.pending_count), func.sum(g.pending_bytes),
                       func.min(g.pending_first_at), func.max(g.last_success_at))
                .where(g.rule.in_(names)).group_by(g.rule)):
            if count:
                snap.pending[rule] = (int(count), int(size), conv(oldest, store.engine.dialect))
            snap.last_success[rule] = conv(last, store.engine.dialect)
        for backend, status, n in c.execute(select(j.backend, j.status, func.count())
                                            .group_by(j.backend, j.status)):
            snap.jobs[(backend, status)] = int(n)
    snap.rejects = count_rejects(store)
    return snap


def ping(store: Store) -> None:
    """A cheap round trip to the store (raises StoreError when it cannot be reached)."""
    with store.read() as c:
        c.execute(select(1)).scalar()
