"""Events into the store: the throughput path (`IngestStore.ingest`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
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

        Duplicates are found before matching (rescans and redeliveries need no matching).
        `classify` runs user-supplied code (globs, `where`, `group_by`), so it runs before any
        write lock is taken: however long it takes, no writer waits for it. On SQLite the
        check is a read of its own, made again once the write lock is held (BEGIN IMMEDIATE);
        an event stored in between (by the daemon's other work) is a duplicate, and one pruned
        in between is one too, for this batch. On PostgreSQL the check, the matching and the
        inserts are one transaction (its reads lock nothing), and the insert's ON CONFLICT
        settles a race with a replica: the event it stored first is a duplicate here.
        """
        result = IngestResult()
        if not events:
            return result
        unique: dict[str, Event] = {}
        for ev in events:
            unique.setdefault(ev.id, ev)  # the same fingerprint twice in one batch
        ids = list(unique)
        if self.dialect == "postgresql":
            # one transaction: a read takes no lock on PostgreSQL, and the insert's ON
            # CONFLICT says which events are new (a replica may have stored some since)
            with self.write() as c:
                by_id = _classified(unique, pgbulk.known_ids(c, ids), classify)
                # the groups' rows first: the insert adds to their pending summaries
                self._ensure_groups(c, {key for item in by_id.values()
                                        for key in item.pending}, now)
                new_ids = pgbulk.insert_events(c, by_id) if by_id else set()
                self._record(c, source, source_type, len(events), ids, by_id, new_ids, now,
                             rules, also, result, stored=True)
            return result
        with self.read() as c:
            seen = self._known_ids(c, ids)
        by_id = _classified(unique, seen, classify)
        with self.write() as c:
            # BEGIN IMMEDIATE has held the write lock since before this second duplicate
            # check, so nothing can insert these ids meanwhile: every row left is new
            seen = self._known_ids(c, list(by_id))
            fresh = {eid: item for eid, item in by_id.items() if eid not in seen}
            if fresh:
                sqlite_insert_many(c, t.events, _event_rows(fresh.values()))
            self._record(c, source, source_type, len(events), ids, by_id, set(fresh), now,
                         rules, also, result)
        return result

    def _record(self, c: Connection, source: str, source_type: str, n_events: int,
                ids: list[str], by_id: dict[str, Ingest], new_ids: set[str], now: datetime,
                rules: Collection[str], also: Callable[[Connection], None] | None,
                result: IngestResult, *, stored: bool = False) -> None:
        """The rest of a batch's transaction once its new events (`new_ids`) are inserted
        (`stored`: with their pending memberships, added to their groups' summaries): the
        memberships and summaries (unless `stored`), streaks and rejects, the groups to
        decide again, the source's counters, then `also`."""
        result.duplicates = n_events - len(new_ids)
        streaks: list[tuple[str, str, bool, datetime]] = []
        sums: dict[Key, list[Any]] = {}  # the groups' new pending: count, bytes, first, last
        for eid, item in by_id.items():
            if eid not in new_ids:
                continue
            result.new.append(eid)
            ev = item.event
            if item.pending and not stored:
                for key in item.pending:
                    tally_pending(sums, key, ev.size, ev.observed_at)
            result.touched.update(item.pending)
            for rule, grp, matched in item.streak:
                streaks.append((rule, grp, matched, ev.observed_at))
                result.touched.add((rule, grp))
        if result.duplicates and rules:
            # a batch retried after an ambiguous commit (stored, but the source was not
            # told) is all duplicates: its events' groups are decided again all the same
            result.touched |= self._pending_keys(
                c, sorted(rules), [eid for eid in ids if eid not in new_ids])
        self._ensure_groups(c, result.touched, now)
        if sums:
            sqlite_insert_many(c, t.rule_events, _pending_rows(
                item for eid, item in by_id.items() if eid in new_ids))
            self._add_pending(c, sums)
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

    def _add_pending(self, c: Connection, sums: dict[Key, list[Any]]) -> None:
        """SQLite: add to the groups' pending summaries (`sums`: per group, the new pending
        events' count, bytes, first and last observed_at), each computed by the database
        (PostgreSQL's are added by the insert itself: `pgbulk.insert_events`)."""
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


def tally_pending(sums: dict[Key, list[Any]], key: Key, size: int, at: datetime) -> None:
    """Count one new pending membership of group `key` into `sums` (per group: count,
    bytes, first and last observed_at), what a batch adds to the groups' summaries (also
    the replay's dict store: `simulate.dictstore`)."""
    s = sums.get(key)
    if s is None:
        sums[key] = [1, size, at, at]
        return
    s[0] += 1
    s[1] += size
    if at < s[2]:
        s[2] = at
    if at > s[3]:
        s[3] = at


def _classified(unique: dict[str, Event], seen: set[str],
                classify: Callable[[Sequence[Event]], list[Ingest]] | None
                ) -> dict[str, Ingest]:
    """The events not `seen` (stored already), matched by `classify`, by id."""
    candidates = [ev for eid, ev in unique.items() if eid not in seen]
    items = (classify(candidates) if classify is not None
             else [Ingest(ev) for ev in candidates])
    return {item.event.id: item for item in items}


def _event_rows(items: Iterable[Ingest]) -> list[dict[str, Any]]:
    """The `events` rows of `items` for SQLite's insert, in key order (PostgreSQL's are
    columns: `pgbulk.insert_events`)."""
    return [{"id": ev.id, "source": ev.source, "fingerprint": ev.fingerprint,
             "kind": ev.kind, "subject": ev.subject, "payload": ev.payload,
             "size": ev.size, "observed_at": ev.observed_at}
            for ev in sorted((item.event for item in items), key=lambda e: e.id)]


def _pending_rows(items: Iterable[Ingest]) -> list[dict[str, Any]]:
    """The `rule_events` rows (pending memberships) of `items` for SQLite's insert, in key
    order."""
    rows: list[dict[str, Any]] = []
    for item in items:
        ev = item.event
        eid, size, at = ev.id, ev.size, ev.observed_at
        rows.extend({"rule": rule, "event_id": eid, "grp": grp, "size": size, "observed_at": at}
                    for rule, grp in item.pending)
    rows.sort(key=lambda r: (r["rule"], r["event_id"]))
    return rows
