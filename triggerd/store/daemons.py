"""Daemons, sources' checkpoints, CLI requests and retention in the store.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    and_,
    delete,
    insert,
    select,
    update,
)

from triggerd import __version__
from triggerd.model import (
    ACTIVE_JOB_STATUSES,
)
from triggerd.store import tables as t
from triggerd.store.base import StoreBase, other_gone


class DaemonStore(StoreBase):
    """Daemons (registration, heartbeats), sources' checkpoints and health, CLI requests,
    and retention."""

    # -- daemon ---------------------------------------------------------------------------------
    def register_daemon(self, daemon_id: str, now: datetime) -> None:
        with self.write() as c:
            c.execute(insert(t.daemons).values(
                id=daemon_id, pid=os.getpid(), host=socket.gethostname(), version=__version__,
                started_at=now, heartbeat_at=now))

    def heartbeat(self, daemon_id: str, now: datetime) -> None:
        with self.write() as c:
            c.execute(update(t.daemons).where(t.daemons.c.id == daemon_id)
                      .values(heartbeat_at=now))

    def daemon_stopped(self, daemon_id: str, now: datetime) -> None:
        with self.write() as c:
            c.execute(update(t.daemons).where(t.daemons.c.id == daemon_id)
                      .values(stopped_at=now, heartbeat_at=now))
    # -- sources --------------------------------------------------------------------------------
    def load_checkpoint(self, source: str) -> dict[str, Any] | None:
        with self.read() as c:
            value: dict[str, Any] | None = c.execute(
                select(t.sources.c.checkpoint).where(t.sources.c.name == source)).scalar()
        return value

    def save_checkpoint(self, source: str, source_type: str, data: dict[str, Any],
                        now: datetime) -> None:
        with self.write() as c:
            self._ensure_source(c, source, source_type)
            c.execute(update(t.sources).where(t.sources.c.name == source)
                      .values(checkpoint=data, updated_at=now))

    def set_source_health(self, source: str, source_type: str, healthy: bool,
                          error: str | None, now: datetime, errors: int = 0) -> None:
        s = t.sources.c
        with self.write() as c:
            self._ensure_source(c, source, source_type)
            c.execute(update(t.sources).where(s.name == source).values(
                healthy=healthy, error=error, errors=s.errors + errors, updated_at=now,
                type=source_type))

    def set_source_details(self, source: str, source_type: str, details: dict[str, Any],
                           now: datetime) -> None:
        with self.write() as c:
            self._ensure_source(c, source, source_type)
            c.execute(update(t.sources).where(t.sources.c.name == source)
                      .values(details=details, updated_at=now))
    # -- CLI requests ---------------------------------------------------------------------------
    def add_request(self, kind: str, rule: str, args: dict[str, Any], now: datetime) -> int:
        with self.write() as c:
            res = c.execute(insert(t.requests).values(kind=kind, rule=rule, args=args,
                                                      created_at=now))
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    def take_requests(self, owner: str, now: datetime
                      ) -> list[tuple[int, str, str, dict[str, Any]]]:
        """Claim the open CLI requests (each by exactly one daemon)."""
        r = t.requests.c
        with self.write() as c:
            rows = c.execute(select(r.id, r.kind, r.rule, r.args).where(r.handled_at.is_(None))
                             .order_by(r.id).limit(100)).all()
            taken = []
            for row in rows:
                res = c.execute(update(t.requests).where(and_(r.id == row.id,
                                                              r.handled_at.is_(None)))
                                .values(handled_at=now, handled_by=owner))
                if res.rowcount == 1:
                    taken.append((row.id, row.kind, row.rule, dict(row.args or {})))
        return taken

    def triggers_of_request(self, request_id: int) -> list[str]:
        """Triggers already written for a CLI request (so a retried request fires nothing)."""
        with self.read() as c:
            return list(c.execute(select(t.triggers.c.id).where(
                t.triggers.c.request_id == request_id).order_by(t.triggers.c.id)).scalars())

    def requeue_requests(self, owner: str, stale_before: datetime, *,
                         exclusive: bool = False) -> int:
        """Give back requests taken by a daemon that died before answering them."""
        r = t.requests.c
        gone = other_gone(r.handled_by, owner, stale_before, exclusive)
        with self.write() as c:
            return int(c.execute(update(t.requests).where(and_(
                r.handled_at.is_not(None), r.result.is_(None), gone))
                .values(handled_at=None, handled_by=None)).rowcount)

    def finish_request(self, request_id: int, result: str) -> None:
        with self.write() as c:
            c.execute(update(t.requests).where(t.requests.c.id == request_id)
                      .values(result=result))

    # -- retention ------------------------------------------------------------------------------
    def prune(self, before: datetime) -> int:
        """Delete consumed events, triggers, finished jobs and handled requests older than
        `before`. Pending events are kept whatever their age. Returns rows deleted."""
        removed = 0
        j, tr, re_, ev = t.jobs.c, t.triggers.c, t.rule_events.c, t.events.c
        with self.write() as c:
            old_triggers = select(tr.id).where(and_(
                tr.fired_at < before,
                tr.id.not_in(select(j.trigger_id).where(j.status.in_(
                    list(ACTIVE_JOB_STATUSES))))))
            removed += c.execute(delete(t.rule_events).where(
                re_.trigger_id.in_(old_triggers))).rowcount
            removed += c.execute(delete(t.job_attempts).where(t.job_attempts.c.job_id.in_(
                select(j.id).where(j.trigger_id.in_(old_triggers))))).rowcount
            removed += c.execute(delete(t.jobs).where(j.trigger_id.in_(old_triggers))).rowcount
            removed += c.execute(delete(t.triggers).where(tr.id.in_(
                select(old_triggers.subquery().c.id)))).rowcount
            removed += c.execute(delete(t.events).where(ev.id.in_(
                select(ev.id).select_from(t.events.outerjoin(t.rule_events, re_.event_id == ev.id))
                .where(and_(ev.observed_at < before, re_.event_id.is_(None)))))).rowcount
            removed += c.execute(delete(t.rejects).where(t.rejects.c.at < before)).rowcount
            removed += c.execute(delete(t.requests).where(and_(
                t.requests.c.handled_at.is_not(None), t.requests.c.created_at < before)))\
                .rowcount
            # keep the newest slot of each key: start-up compares with it to catch up a
            # scheduled check missed while down (a schedule may be sparser than retention)
            newest = t.slots.alias("newest")
            removed += c.execute(delete(t.slots).where(and_(
                t.slots.c.slot_at < before,
                select(newest.c.key).where(and_(newest.c.key == t.slots.c.key,
                                                newest.c.slot_at > t.slots.c.slot_at))
                .exists()))).rowcount
            removed += c.execute(delete(t.daemons).where(
                t.daemons.c.heartbeat_at < before)).rowcount
        return removed


def retention_cutoff(now: datetime, retention: timedelta) -> datetime:
    return now - retention
