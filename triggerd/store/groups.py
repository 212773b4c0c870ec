"""Rules and groups in the store: state, pending events, flags, snapshots, checks and slots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    and_,
    bindparam,
    func,
    select,
    update,
)

from triggerd.model import (
    ACTIVE_JOB_STATUSES,
    GroupState,
    Pending,
    RuleFlags,
)
from triggerd.store import tables as t
from triggerd.store.base import Key, StoreBase


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state a decision reads for some rules (`Store.snapshot`)."""
    states: dict[Key, GroupState]
    pending: dict[Key, Pending]
    flags: dict[str, RuleFlags]
    active: dict[str, int]  # queued, running and retrying jobs per rule


class GroupStore(StoreBase):
    """Rules and their groups: state, pending summaries, flags, decisions' snapshots, the
    records of scheduled checks and their slots."""

    # -- rules ----------------------------------------------------------------------------------
    def ensure_rules(self, names: Iterable[str], ungrouped: Iterable[str], now: datetime) -> None:
        """Make sure every configured rule has its row, and ungrouped rules their group row."""
        with self.write() as c:
            rows = [{"name": n, "created_at": now, "paused": False} for n in names]
            if rows:
                c.execute(self._insert(t.rules).values(rows).on_conflict_do_nothing())
            self._ensure_groups(c, [(r, "") for r in ungrouped], now)
    def set_paused(self, rule: str, paused: bool, until: datetime | None, reason: str | None,
                   now: datetime) -> None:
        with self.write() as c:
            c.execute(self._insert(t.rules).values(name=rule, created_at=now, paused=False)
                      .on_conflict_do_nothing())
            c.execute(update(t.rules).where(t.rules.c.name == rule).values(
                paused=paused, paused_until=until if paused else None,
                paused_reason=reason if paused else None))

    def group_states(self, rules: Iterable[str] | None = None) -> dict[Key, GroupState]:
        with self.read() as c:
            return self._groups(c, rules)[0]

    def pending(self, rules: Iterable[str] | None = None) -> dict[Key, Pending]:
        with self.read() as c:
            return self._groups(c, rules)[1]

    def snapshot(self, rules: Iterable[str]) -> Snapshot:
        """What a decision about `rules` reads (group states with their pending summaries,
        pause flags, active jobs), in one read transaction: one trip on the hot path."""
        rules = list(rules)
        with self.read() as c:
            states, pending = self._groups(c, rules)
            return Snapshot(states, pending, self._flags(c, rules), self._active(c, rules))

    def _rows(self, c: Connection, name: str, build: Callable[[], Select[Any]],
              rule_column: Any, rules: Iterable[str] | None) -> Any:
        """Run the built-once query `name` for every rule, or only for `rules`."""
        if rules is None:
            return self._q(f"{name}.all", build).run(c)
        return self._q(f"{name}.rules", lambda: build().where(
            rule_column.in_(bindparam("rules", expanding=True)))).run(c, {"rules": list(rules)})

    def _groups(self, c: Connection, rules: Iterable[str] | None
                ) -> tuple[dict[Key, GroupState], dict[Key, Pending]]:
        """The groups' states, and the summary of the pending events of those that have any
        (the `pending_*` columns: see tables.py)."""
        states: dict[Key, GroupState] = {}
        pending: dict[Key, Pending] = {}
        for r in self._rows(c, "states", lambda: select(t.rule_groups), t.rule_groups.c.rule,
                            rules):
            states[(r.rule, r.grp)] = _group(r)
            if r.pending_count:
                pending[(r.rule, r.grp)] = Pending(int(r.pending_count), int(r.pending_bytes),
                                                   r.pending_first_at, r.pending_last_at)
        return states, pending

    def _flags(self, c: Connection, rules: Iterable[str] | None) -> dict[str, RuleFlags]:
        return {r.name: RuleFlags(bool(r.paused), r.paused_until, r.paused_reason)
                for r in self._rows(c, "flags", lambda: select(t.rules), t.rules.c.name, rules)}

    def _active(self, c: Connection, rules: Iterable[str] | None) -> dict[str, int]:
        j = t.jobs.c
        return {r: int(n) for r, n in self._rows(
            c, "active", lambda: select(j.rule, func.count())
            .where(j.status.in_(list(ACTIVE_JOB_STATUSES))).group_by(j.rule), j.rule, rules)}

    def rule_keys(self, rule: str) -> set[Key]:
        """Every group of a rule (a group with pending events has its row: ingest writes it
        before the events)."""
        g = t.rule_groups.c
        with self.read() as c:
            return {(r, k) for r, k in self._q("keys.groups", lambda: select(
                g.rule, g.grp).where(g.rule == bindparam("rule"))).run(c, {"rule": rule})}

    def job_counts(self, rules: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """Active jobs per rule and status (queued, running, retrying)."""
        j = t.jobs.c
        q = (select(j.rule, j.status, func.count()).where(
            j.status.in_(list(ACTIVE_JOB_STATUSES))).group_by(j.rule, j.status))
        if rules is not None:
            q = q.where(j.rule.in_(list(rules)))
        out: dict[str, dict[str, int]] = {}
        with self.read() as c:
            for rule, status, n in c.execute(q):
                out.setdefault(rule, {})[status] = int(n)
        return out

    def claim_slot(self, key: str, slot_at: datetime, now: datetime) -> bool:
        """Record that the scheduled slot `key@slot_at` is handled; False if already claimed."""
        with self.write() as c:
            # RETURNING, not rowcount: SQLAlchemy only guarantees rowcount for UPDATE/DELETE
            # (with psycopg it is -1 here, which made every claim look won)
            res = c.execute(self._insert(t.slots).values(key=key, slot_at=slot_at, claimed_at=now)
                            .on_conflict_do_nothing().returning(t.slots.c.key))
            return res.first() is not None

    def finish_slot(self, key: str, slot_at: datetime, now: datetime) -> None:
        """Mark a claimed slot's check as done (a claimed, unfinished slot is redone)."""
        with self.write() as c:
            c.execute(update(t.slots).where(and_(t.slots.c.key == key,
                                                 t.slots.c.slot_at == slot_at))
                      .values(done_at=now))

    def last_slot(self, key: str) -> datetime | None:
        with self.read() as c:
            value: datetime | None = c.execute(select(func.max(t.slots.c.slot_at))
                                               .where(t.slots.c.key == key)).scalar()
        return value

    def unfinished_slot(self, key: str) -> datetime | None:
        """The newest slot claimed but never marked done (its daemon died mid-check)."""
        s_ = t.slots.c
        with self.read() as c:
            row = c.execute(select(s_.slot_at, s_.done_at).where(s_.key == key)
                            .order_by(s_.slot_at.desc()).limit(1)).first()
        return row[0] if row is not None and row[1] is None else None


def _group(r: Any) -> GroupState:
    return GroupState(rule=r.rule, group=r.grp, seq=r.seq, created_at=r.created_at,
                      last_trigger_at=r.last_trigger_at, last_success_at=r.last_success_at,
                      last_floor_at=r.last_floor_at, sustained_count=r.sustained_count,
                      sustained_since=r.sustained_since, last_check_at=r.last_check_at)
