"""Events into the store: the throughput path (`IngestStore.ingest`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Executable,
    Integer,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)

from triggerd.model import (
    Event,
    event_ref,
)
from triggerd.store import pgbulk
from triggerd.store import tables as t
from triggerd.store.base import TS, Key, StoreBase, sqlite_insert_many


@dataclass(slots=True)
class Ingest:
    """One event and what the engine found for it (computed before the transaction)."""

    event: Event
    pending: list[Key] = field(default_factory=list)
    # (rule, group, matched) for rules with `sustained`, in event order
    streak: list[tuple[str, str, bool]] = field(default_factory=list)
    # (rule, message) for each rule whose `where` or `group_by` failed on this event
    errors: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class IngestResult:
    new: list[str] = field(default_factory=list)
    duplicates: int = 0
    touched: set[Key] = field(default_factory=set)


class IngestStore(StoreBase):
    """Events in: deduplication, pending memberships, streaks, rejects, source counters."""

    # -- events ---------------------------------------------------------------------------------
    def ingest(self, source: str, source_type: str, events: Sequence[Event],
               now: datetime,
               classify: Callable[[Sequence[Event]], list[Ingest]] | None = None,
               also: Callable[[Connection], None] | None = None,
               rules: Collection[str] = ()) -> IngestResult:
        """Store a batch of events from one source in one transaction (the throughput path).

        Events already stored (same source and fingerprint) are duplicates: counted, nothing
        else. The new ones are handed to `classify` (the rule engine's matching), and get the
        pending memberships and streak updates it returns. `also` runs last, in the same
        transaction (e.g. the filesystem source's file rows for these events). `rules` are
        the rules listening to the source: the groups in which a duplicate is still pending
        are `touched` (decided again), as its first delivery may have been stored without the
        source learning it (a commit whose answer was lost).

        `classify` runs user-supplied code (globs, `where`, `group_by`), so it runs before the
        write transaction begins: however long it takes, no write lock is held meanwhile. The
        duplicate check is made twice, before matching (a read: rescans and redeliveries need
        no matching) and again under the write lock; an event stored in between (by a
        replica) is a duplicate, and one pruned in between is one too, for this batch.
        """
        result = IngestResult()
        if not events:
            return result
        unique: dict[str, Event] = {}
        for ev in events:
            unique.setdefault(ev.id, ev)  # the same fingerprint twice in one batch
        ids = list(unique)
        with self.read() as c:
            seen = self._known_ids(c, ids)
        candidates = [ev for eid, ev in unique.items() if eid not in seen]
        items = (classify(candidates) if classify is not None
                 else [Ingest(ev) for ev in candidates])
        by_id = {item.event.id: item for item in items}
        with self.write() as c:
            # the insert's ON CONFLICT still settles races between replicas on PostgreSQL
            seen = self._known_ids(c, list(by_id))
            fresh = [item.event for eid, item in by_id.items() if eid not in seen]
            # rows in key order: replicas inserting overlapping batches lock keys in the same
            # order, so PostgreSQL cannot deadlock them
            rows = [{"id": ev.id, "source": ev.source, "fingerprint": ev.fingerprint,
                     "kind": ev.kind, "subject": ev.subject, "payload": ev.payload,
                     "size": ev.size, "observed_at": ev.observed_at}
                    for ev in sorted(fresh, key=lambda e: e.id)]
            new_ids: set[str] = set()
            if rows and self.dialect == "sqlite":
                # BEGIN IMMEDIATE has held the write lock since before the duplicate check, so
                # nothing can have inserted these ids since: every row is new
                sqlite_insert_many(c, t.events, rows)
                new_ids = {ev.id for ev in fresh}
            elif rows:  # replicas may race: the database says which rows were new
                new_ids = pgbulk.insert_events(c, rows)
            result.duplicates = len(events) - len(new_ids)
            pending_rows = []
            streaks: list[tuple[str, str, bool, datetime]] = []
            for eid, item in by_id.items():
                if eid not in new_ids:
                    continue
                result.new.append(eid)
                ev = item.event
                for rule, grp in item.pending:
                    pending_rows.append({"rule": rule, "event_id": eid, "grp": grp,
                                         "size": ev.size, "observed_at": ev.observed_at})
                    result.touched.add((rule, grp))
                for rule, grp, matched in item.streak:
                    streaks.append((rule, grp, matched, ev.observed_at))
                    result.touched.add((rule, grp))
            if result.duplicates and rules:
                # a batch retried after an ambiguous commit (stored, but the source was not
                # told) is all duplicates: its events' groups are decided again all the same
                result.touched |= self._pending_keys(
                    c, sorted(rules), [eid for eid in ids if eid not in new_ids])
            self._ensure_groups(c, result.touched, now)
            if pending_rows:
                pending_rows.sort(key=lambda r: (r["rule"], r["event_id"]))
                if self.dialect == "sqlite":
                    sqlite_insert_many(c, t.rule_events, pending_rows)
                else:
                    pgbulk.insert_rule_events(c, pending_rows)
                self._add_pending(c, pending_rows)
            if streaks:
                self._update_streaks(c, streaks)
            self.write_rejects(c, [
                {"source": item.event.source, "ref": event_ref(item.event),
                 "kind": message.partition(":")[0],  # "where" or "group_by"
                 "error": f"rule {rule}: {message}", "head": None, "at": now}
                for eid, item in by_id.items() if eid in new_ids
                for rule, message in item.errors])
            self._count_source(c, source, source_type, len(new_ids), result.duplicates, now)
            if also is not None:
                also(c)
        return result

    def _add_pending(self, c: Connection, rows: list[dict[str, Any]]) -> None:
        """Add new pending rows to their groups' summaries (one UPDATE per group, computed by
        the database: replicas adding to one group at once cannot lose an addition)."""
        sums: dict[Key, list[Any]] = {}  # count, bytes, first, last
        for row in rows:
            at = row["observed_at"]
            s = sums.get((row["rule"], row["grp"]))
            if s is None:
                sums[(row["rule"], row["grp"])] = [1, row["size"], at, at]
            else:
                s[0] += 1
                s[1] += row["size"]
                s[2], s[3] = min(s[2], at), max(s[3], at)

        if self.dialect == "postgresql":
            pgbulk.add_pending(c, sorted(sums.items()))
            return

        def build() -> Executable:
            g = t.rule_groups.c
            first, last = bindparam("b_first", type_=TS), bindparam("b_last", type_=TS)
            return update(t.rule_groups).where(and_(
                g.rule == bindparam("b_rule"), g.grp == bindparam("b_grp"))).values(
                pending_count=g.pending_count + bindparam("b_n", type_=BigInteger()),
                pending_bytes=g.pending_bytes + bindparam("b_bytes", type_=BigInteger()),
                pending_first_at=case((or_(g.pending_first_at.is_(None),
                                           g.pending_first_at > first), first),
                                      else_=g.pending_first_at),
                pending_last_at=case((or_(g.pending_last_at.is_(None),
                                          g.pending_last_at < last), last),
                                     else_=g.pending_last_at))
        self._q("groups.pending_add", build).run(c, [
            {"b_rule": rule, "b_grp": grp, "b_n": n, "b_bytes": size, "b_first": first,
             "b_last": last} for (rule, grp), (n, size, first, last) in sorted(sums.items())])

    def _pending_keys(self, c: Connection, rules: list[str], ids: list[str]) -> set[Key]:
        """The (rule, group) pairs of `rules` in which any of the events `ids` is still
        pending (a lookup on the primary key, rule then event)."""
        if self.dialect == "postgresql":
            return pgbulk.pending_keys(c, rules, ids)
        keys: set[Key] = set()
        stmt = self._q("ingest.pending_keys", lambda: select(
            t.rule_events.c.rule, t.rule_events.c.grp).distinct().where(
            t.rule_events.c.rule.in_(bindparam("rules", expanding=True)),
            t.rule_events.c.event_id.in_(bindparam("ids", expanding=True)),
            t.rule_events.c.trigger_id.is_(None)))
        for i in range(0, len(ids), 500):
            keys.update((rule, grp) for rule, grp in stmt.run(
                c, {"rules": rules, "ids": ids[i:i + 500]}))
        return keys

    def _known_ids(self, c: Connection, ids: list[str]) -> set[str]:
        """Which of `ids` are stored events already."""
        seen: set[str] = set()
        if not ids:
            return seen
        if self.dialect == "postgresql":
            return pgbulk.known_ids(c, ids)
        known = self._q("ingest.known", lambda: select(t.events.c.id).where(
            t.events.c.id.in_(bindparam("ids", expanding=True))))
        for i in range(0, len(ids), 1000):
            seen.update(known.run(c, {"ids": ids[i:i + 1000]}).scalars())
        return seen

    def write_rejects(self, c: Connection, rows: list[dict[str, Any]]) -> None:
        """Record rejected input (`triggerd.store.rejects`); one already recorded is kept."""
        if not rows:
            return
        for row in rows:
            row["ref"], row["error"] = row["ref"][:400], row["error"][:2000]
        c.execute(self._insert(t.rejects).on_conflict_do_nothing(
            index_elements=["source", "ref", "kind"]), rows)

    def _update_streaks(self, c: Connection, streaks: list[tuple[str, str, bool, datetime]]
                        ) -> None:
        """Apply a batch's streak changes with one atomic UPDATE per group.

        Per group, the batch either ends in a run of matches after a non-match (the streak is
        *set* to that run) or holds only matches (the stored streak is *extended*). Either way
        the statement is computed by the database, so concurrent replicas cannot lose an update.
        """
        g = t.rule_groups.c
        runs: dict[Key, tuple[bool, int, datetime | None]] = {}  # reset?, run length, run start
        for rule, grp, matched, at in streaks:
            reset, n, since = runs.get((rule, grp), (False, 0, None))
            runs[(rule, grp)] = (reset, n + 1, since or at) if matched else (True, 0, None)
        group = and_(g.rule == bindparam("b_rule"), g.grp == bindparam("b_grp"))
        n_, since_ = bindparam("b_n", type_=Integer()), bindparam("b_since", type_=TS)
        restart = self._q("streak.restart", lambda: update(t.rule_groups).where(group).values(
            sustained_count=n_, sustained_since=since_))
        extend = self._q("streak.extend", lambda: update(t.rule_groups).where(group).values(
            sustained_count=g.sustained_count + n_,
            sustained_since=func.coalesce(g.sustained_since, since_)))
        for (rule, grp), (reset, n, since) in runs.items():
            (restart if reset else extend).run(
                c, {"b_rule": rule, "b_grp": grp, "b_n": n, "b_since": since})

    def _count_source(self, c: Connection, source: str, source_type: str, new: int, dups: int,
                      now: datetime) -> None:
        s = t.sources.c
        self._ensure_source(c, source, source_type)
        # last_event_at moves only when something new came
        def build() -> Executable:
            n, at = bindparam("b_new", type_=Integer()), bindparam("b_now", type_=TS)
            return update(t.sources).where(s.name == bindparam("b_name")).values(
                events=s.events + n, duplicates=s.duplicates + bindparam("b_dups"),
                updated_at=at, last_event_at=case((n > 0, at), else_=s.last_event_at))
        self._q("sources.count", build).run(
            c, {"b_name": source, "b_new": new, "b_dups": dups, "b_now": now})
