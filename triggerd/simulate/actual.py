"""What actually happened, read from the store in the replay's shape (`TriggerFact`), so that
`figures` measures the live history and a replay the same way."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import and_, select

from triggerd.simulate.replay import RunResult, TriggerFact
from triggerd.store import tables as t
from triggerd.store.sql import Store


def actual(store: Store, start: datetime, until: datetime) -> RunResult:
    """The triggers fired in [start, until) with their events and jobs, and the events still
    pending now that were observed in that span."""
    tr, j, re_, ev = t.triggers.c, t.jobs.c, t.rule_events.c, t.events.c
    out = RunResult("actual")
    with store.read() as c:
        events: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
        for trigger_id, event_id, at in c.execute(
                select(re_.trigger_id, re_.event_id, ev.observed_at)
                .join(t.events, ev.id == re_.event_id)
                .join(t.triggers, tr.id == re_.trigger_id)
                .where(and_(tr.fired_at >= start, tr.fired_at < until))
                .order_by(ev.observed_at, ev.id)):
            events[trigger_id].append((event_id, at))
        for r in c.execute(select(tr.id, tr.rule, tr.grp, tr.fired_at, tr.kind, tr.reason,
                                  j.started_at, j.finished_at, j.status)
                           .join(t.jobs, j.trigger_id == tr.id, isouter=True)
                           .where(and_(tr.fired_at >= start, tr.fired_at < until))
                           .order_by(tr.fired_at, tr.seq)):
            out.triggers.append(TriggerFact(
                r.id, r.rule, r.grp, r.fired_at, r.kind, r.reason, events.get(r.id, []),
                r.started_at, r.finished_at, str(r.status) if r.status else "none"))
        pending: dict[str, list[datetime]] = defaultdict(list)
        for rule, at in c.execute(select(re_.rule, re_.observed_at).where(and_(
                re_.trigger_id.is_(None), re_.observed_at >= start, re_.observed_at < until))):
            pending[rule].append(at)
    out.pending = dict(pending)
    return out
