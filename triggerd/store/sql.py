"""The Store: every read and write the daemon makes, each one short transaction.

The store is synchronous (SQLAlchemy Core); the daemon calls it from one worker thread so the
event loop never blocks on SQL and a daemon never contends with itself for SQLite's write lock.
Every method is safe to call concurrently from several daemons sharing one PostgreSQL database:
decisions are settled by keys and compare-and-set updates, never by "check then write".
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Executable,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError

from triggerd import __version__
from triggerd.errors import StoreError
from triggerd.model import (
    ACTIVE_JOB_STATUSES,
    Event,
    GroupState,
    Job,
    JobStatus,
    Pending,
    RuleFlags,
    Trigger,
    event_ref,
    trigger_id,
)
from triggerd.store import tables as t
from triggerd.store.connect import READ_ONLY, DaemonLock, make_engine, sqlite_path
from triggerd.store.fast import Fast, sqlite_executemany

Key = tuple[str, str]  # (rule, group)
MAX_INTERRUPTED = 3  # daemon crashes a job's attempt budget absorbs (see recover_jobs)
_TS = t.UTCDateTime()  # the type of a bound timestamp that no column gives its type to


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


@dataclass(frozen=True, slots=True)
class NewTrigger:
    rule: str
    group: str
    expected_seq: int
    fired_at: datetime
    reason: str
    kind: str  # events | floor | schedule | manual
    backend: str
    params: dict[str, Any]
    max_attempts: int
    on_busy: str = "queue"  # coalesce cancels queued jobs of the group; skip cancels this one
    busy: bool = False
    request_id: int | None = None  # the CLI request behind a manual fire


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a backend is given for a job: its trigger, the consumed events, the rule's params."""

    trigger: Trigger
    events: list[dict[str, Any]]
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Claim:
    job: Job | None  # claimed: now running, attempts incremented
    found: Job | None  # not claimed: the job as it is (None: there is no such job)
    context: JobContext | None  # with a claimed job (None if its trigger is gone)
    # set by the dispatcher, not the store: the backend's launch of the claimed attempt
    launched: Future[Any] | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state a decision reads for some rules (`Store.snapshot`)."""
    states: dict[Key, GroupState]
    pending: dict[Key, Pending]
    flags: dict[str, RuleFlags]
    active: dict[str, int]  # queued, running and retrying jobs per rule


class Store:
    def __init__(self, url: str, *, create_dir: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url, create_dir=create_dir)
        self.dialect = self.engine.dialect.name
        self._lock: DaemonLock | None = None
        self._known_groups: set[Key] = set()
        self._known_sources: set[str] = set()  # rows known to exist (saves a statement)
        self._stmts: dict[str, Fast] = {}  # hot-path statements, built once (see _q)
        self._pinned: tuple[int, Connection] | None = None  # see pin

    # -- lifecycle ------------------------------------------------------------------------------
    def upgrade(self) -> None:
        """Apply pending migrations (a no-op, without loading alembic, when at the head)."""
        from triggerd.store.migrate import at_head, upgrade

        try:
            if at_head(self.engine):
                return
            upgrade(self.engine)
        except OperationalError as exc:
            raise StoreError(f"cannot migrate the store {self.safe_url}: {exc.orig}") from exc

    def lock(self) -> None:
        """Take the one-daemon-per-file lock (SQLite only; PostgreSQL allows replicas)."""
        path = sqlite_path(self.url)
        if path is not None:
            self._lock = DaemonLock(path)
            self._lock.acquire()

    @property
    def exclusive(self) -> bool:
        """True while this process holds the one-daemon lock (SQLite): no other daemon lives."""
        return self._lock is not None

    def close(self) -> None:
        if self._pinned is not None:
            self._pinned[1].close()
            self._pinned = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.engine.dispose()

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def pin(self) -> None:
        """Keep one SQLite connection open for this thread's transactions, reads and writes
        (the daemon's store thread): taking a connection from the pool and giving it back cost
        ~50 of the ~65 us of an empty transaction here, and the hot path runs four. One, not
        one per kind: each connection keeps its own page cache (up to 64 MiB). No-op on other
        databases."""
        if self.dialect == "sqlite" and self._pinned is None:
            self._pinned = (threading.get_ident(), self.engine.connect())

    def _pinned_conn(self) -> Connection | None:
        """This thread's pinned connection, if it has one and it is not in a transaction
        already (a transaction within another takes a pooled connection, as without pin)."""
        pinned = self._pinned
        if pinned is None or pinned[0] != threading.get_ident() or pinned[1].in_transaction():
            return None
        return pinned[1]

    @contextmanager
    def write(self) -> Iterator[Connection]:
        try:
            pinned = self._pinned_conn()
            if pinned is not None:
                with pinned.begin():
                    yield pinned
            else:
                with self.engine.begin() as conn:
                    yield conn
        except BaseException as exc:
            # the rollback also undid any group rows this transaction inserted: forget them
            self._known_groups.clear()
            self._known_sources.clear()
            if isinstance(exc, OperationalError):
                raise StoreError(f"store {self.safe_url}: {exc.orig}") from exc
            raise

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            pinned = self._pinned_conn()
            if pinned is not None:
                pinned.execution_options(**{READ_ONLY: True})  # a deferred BEGIN (connect.py)
                try:
                    with pinned.begin():
                        yield pinned
                finally:
                    pinned.execution_options(**{READ_ONLY: False})
            else:
                with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn, \
                        conn.begin():
                    yield conn
        except OperationalError as exc:
            raise StoreError(f"store {self.safe_url}: {exc.orig}") from exc

    def _q(self, name: str, build: Callable[[], Executable]) -> Fast:
        """The statement `name`, built and compiled on first use (`Fast`: on SQLite it runs
        on sqlite3 directly). Building a SQLAlchemy statement costs ~5x executing a built one
        (358 vs 70 us here), and executing one ~10x running it on sqlite3 (35 vs 3 us warm);
        the hot path from an event to its backend runs ~20 of them."""
        stmt = self._stmts.get(name)
        if stmt is None:
            stmt = self._stmts[name] = Fast(build(), self.engine.dialect)
        return stmt

    def _insert(self, table: Table) -> Any:
        mod = postgresql if self.dialect == "postgresql" else sqlite
        return mod.insert(table)

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

    # -- rules ----------------------------------------------------------------------------------
    def ensure_rules(self, names: Iterable[str], ungrouped: Iterable[str], now: datetime) -> None:
        """Make sure every configured rule has its row, and ungrouped rules their group row."""
        with self.write() as c:
            rows = [{"name": n, "created_at": now, "paused": False} for n in names]
            if rows:
                c.execute(self._insert(t.rules).values(rows).on_conflict_do_nothing())
            self._ensure_groups(c, [(r, "") for r in ungrouped], now)

    def _ensure_groups(self, c: Connection, keys: Iterable[Key], now: datetime) -> None:
        missing = [k for k in set(keys) if k not in self._known_groups]
        if not missing:
            return
        self._q("groups.ensure", lambda: self._insert(t.rule_groups).on_conflict_do_nothing()
                ).run(c, [{"rule": r, "grp": g, "seq": 0, "created_at": now,
                           "sustained_count": 0, "pending_count": 0, "pending_bytes": 0}
                          for r, g in missing])
        self._known_groups.update(missing)

    def rule_flags(self) -> dict[str, RuleFlags]:
        with self.read() as c:
            return self._flags(c, None)

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

    def active_jobs_by_rule(self, rules: Iterable[str] | None = None) -> dict[str, int]:
        """Queued, running and retrying jobs per rule (what `concurrency` is measured by)."""
        with self.read() as c:
            return self._active(c, rules)

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

    def record_check(self, key: Key, at: datetime, verdict: str) -> None:
        with self.write() as c:
            c.execute(update(t.rule_groups).where(
                and_(t.rule_groups.c.rule == key[0], t.rule_groups.c.grp == key[1]))
                .values(last_check_at=at, last_verdict=verdict[:500]))

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
                _sqlite_executemany(c, t.events, rows)
                new_ids = {ev.id for ev in fresh}
            elif rows:  # replicas may race: the database says which rows were new
                stmt = self._insert(t.events).on_conflict_do_nothing().returning(t.events.c.id)
                new_ids = set(c.execute(stmt, rows).scalars().all())
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
                    _sqlite_executemany(c, t.rule_events, pending_rows)
                else:
                    c.execute(self._insert(t.rule_events).on_conflict_do_nothing(),
                              pending_rows)
                self._add_pending(c, pending_rows)
            if streaks:
                self._update_streaks(c, streaks)
            self.write_rejects(c, [
                {"source": item.event.source, "ref": event_ref(item.event), "kind": "where",
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

        def build() -> Executable:
            g = t.rule_groups.c
            first, last = bindparam("b_first", type_=_TS), bindparam("b_last", type_=_TS)
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
        for (rule, grp), (reset, n, since) in runs.items():
            where = and_(g.rule == rule, g.grp == grp)
            if reset:
                values: dict[str, Any] = {"sustained_count": n, "sustained_since": since}
            else:
                values = {"sustained_count": g.sustained_count + n,
                          "sustained_since": func.coalesce(g.sustained_since, since)}
            c.execute(update(t.rule_groups).where(where).values(**values))

    def _count_source(self, c: Connection, source: str, source_type: str, new: int, dups: int,
                      now: datetime) -> None:
        s = t.sources.c
        self._ensure_source(c, source, source_type)
        # last_event_at moves only when something new came
        def build() -> Executable:
            n, at = bindparam("b_new", type_=Integer()), bindparam("b_now", type_=_TS)
            return update(t.sources).where(s.name == bindparam("b_name")).values(
                events=s.events + n, duplicates=s.duplicates + bindparam("b_dups"),
                updated_at=at, last_event_at=case((n > 0, at), else_=s.last_event_at))
        self._q("sources.count", build).run(
            c, {"b_name": source, "b_new": new, "b_dups": dups, "b_now": now})

    def _ensure_source(self, c: Connection, source: str, source_type: str) -> None:
        if source in self._known_sources:
            return
        c.execute(self._insert(t.sources).values(
            name=source, type=source_type, healthy=True, events=0, duplicates=0, errors=0)
            .on_conflict_do_nothing())
        self._known_sources.add(source)

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

    # -- triggers and jobs ----------------------------------------------------------------------
    def create_trigger(self, nt: NewTrigger) -> Trigger | None:
        """Write a trigger, consume the group's pending events and queue its job, atomically.

        Returns None when the group's sequence moved on (another replica, or a stale decision):
        the caller re-reads and decides again. The trigger id is deterministic in (rule, group,
        sequence), so the primary key settles any race.
        """
        g, re_, j = t.rule_groups.c, t.rule_events.c, t.jobs.c
        seq = nt.expected_seq + 1
        tid = trigger_id(nt.rule, nt.group, seq)
        key = {"b_rule": nt.rule, "b_grp": nt.group}
        try:
            with self.write() as c:
                self._ensure_groups(c, [(nt.rule, nt.group)], nt.fired_at)
                res = self._q("trigger.seq", lambda: update(t.rule_groups).where(and_(
                    g.rule == bindparam("b_rule"), g.grp == bindparam("b_grp"),
                    g.seq == bindparam("b_expected"))).values(
                        seq=bindparam("b_seq"), last_trigger_at=bindparam("b_at", type_=_TS),
                        sustained_count=0, sustained_since=None,
                        # every pending event is consumed just below, in this transaction
                        pending_count=0, pending_bytes=0, pending_first_at=None,
                        pending_last_at=None,
                        # a periodic floor's trigger also restarts the floor
                        last_floor_at=case((bindparam("b_floor", type_=Integer()) == 1,
                                            bindparam("b_at", type_=_TS)),
                                           else_=g.last_floor_at))).run(
                    c, {**key, "b_expected": nt.expected_seq, "b_seq": seq, "b_at": nt.fired_at,
                        "b_floor": int(nt.kind == "floor")})
                if res.rowcount != 1:
                    return None
                consumed = self._q("trigger.consume", lambda: update(t.rule_events)
                                   .where(and_(re_.rule == bindparam("b_rule"),
                                               re_.grp == bindparam("b_grp"),
                                               re_.trigger_id.is_(None)))
                                   .values(trigger_id=bindparam("b_tid"))
                                   ).run(c, {**key, "b_tid": tid}).rowcount
                self._q("trigger.insert", lambda: insert(t.triggers)).run(c, dict(
                    id=tid, rule=nt.rule, grp=nt.group, seq=seq, fired_at=nt.fired_at,
                    reason=nt.reason, kind=nt.kind, manual=nt.kind == "manual",
                    events=consumed, params=nt.params, request_id=nt.request_id))
                status = JobStatus.QUEUED
                detail = None
                if nt.busy and nt.on_busy == "skip":
                    status = JobStatus.CANCELLED
                    detail = "skipped: the rule was busy (on_busy: skip)"
                elif nt.on_busy == "coalesce":
                    self._q("trigger.coalesce", lambda: update(t.jobs).where(and_(
                        j.rule == bindparam("b_rule"), j.grp == bindparam("b_grp"),
                        j.status == JobStatus.QUEUED)).values(
                        status=JobStatus.CANCELLED, finished_at=bindparam("b_at", type_=_TS),
                        detail=bindparam("b_detail"))).run(
                        c, {**key, "b_at": nt.fired_at,
                            "b_detail": f"superseded by trigger {tid} (on_busy: coalesce)"})
                self._q("trigger.job", lambda: insert(t.jobs)).run(c, dict(
                    id=tid, trigger_id=tid, rule=nt.rule, grp=nt.group, backend=nt.backend,
                    status=status, attempts=0, max_attempts=nt.max_attempts,
                    created_at=nt.fired_at, detail=detail,
                    finished_at=nt.fired_at if status == JobStatus.CANCELLED else None))
        except IntegrityError:
            return None
        self._known_groups.add((nt.rule, nt.group))
        return Trigger(id=tid, rule=nt.rule, group=nt.group, seq=seq, fired_at=nt.fired_at,
                       reason=nt.reason, manual=nt.kind == "manual", events=consumed,
                       kind=nt.kind)

    def claim_job(self, job_id: str, owner: str, concurrency: int, now: datetime) -> Job | None:
        """Start an attempt of a queued/retrying job if its rule has a free slot; CAS on status."""
        return self.claim(job_id, owner, lambda _rule: concurrency, now).job

    def claim(self, job_id: str, owner: str, concurrency: Callable[[str], int],
              now: datetime) -> Claim:
        """`claim_job` for the dispatcher, in one transaction: the claimed job with the context
        its backend needs, or (when not claimed) the job as found, so the caller can tell "not
        due yet / no free slot" from "gone"."""
        j = t.jobs.c
        by_id = self._q("job.by_id", lambda: select(t.jobs).where(j.id == bindparam("b_id")))
        with self.write() as c:
            row = by_id.run(c, {"b_id": job_id}).first()
            if row is None:
                return Claim(None, None, None)
            found = _job(row)
            if row.status not in (JobStatus.QUEUED, JobStatus.RETRYING):
                return Claim(None, found, None)
            if row.next_attempt_at is not None and row.next_attempt_at > now:
                return Claim(None, found, None)
            if self.dialect == "postgresql":
                # Serialise the claims of one rule (released at commit): under READ COMMITTED
                # two replicas would otherwise both count no running job and both start one.
                c.execute(select(func.pg_advisory_xact_lock(
                    func.hashtext(f"triggerd.claim:{row.rule}"))))
            busy = self._q("claim.running", lambda: select(func.count())
                           .select_from(t.jobs).where(and_(
                               j.rule == bindparam("b_rule"),
                               j.status == JobStatus.RUNNING))
                           ).run(c, {"b_rule": row.rule}).scalar_one()
            if busy >= concurrency(row.rule):
                return Claim(None, found, None)
            res = self._q("claim.update", lambda: update(t.jobs).where(and_(
                j.id == bindparam("b_id"), j.status == bindparam("b_status"))).values(
                    status=JobStatus.RUNNING, owner=bindparam("b_owner"),
                    attempts=j.attempts + 1, next_attempt_at=None,
                    started_at=func.coalesce(j.started_at, bindparam(
                        "b_now", type_=_TS)))).run(
                c, {"b_id": job_id, "b_status": row.status, "b_owner": owner, "b_now": now})
            if res.rowcount != 1:
                return Claim(None, found, None)
            self._q("claim.attempt", lambda: insert(t.job_attempts)).run(
                c, dict(job_id=job_id, n=row.attempts + 1, owner=owner, started_at=now))
            fresh = by_id.run(c, {"b_id": job_id}).one()
            context = self._trigger_context(c, job_id)
        return Claim(_job(fresh), None, context)

    def set_external_id(self, job_id: str, external_id: str) -> None:
        with self.write() as c:
            c.execute(update(t.jobs).where(t.jobs.c.id == job_id)
                      .values(external_id=_no_nul(external_id)))

    def finish_attempt(self, job_id: str, owner: str, status: JobStatus, now: datetime, *,
                       exit_code: int | None = None, detail: str | None = None,
                       external_id: str | None = None,
                       next_attempt_at: datetime | None = None) -> bool:
        """Record the outcome of the running attempt (CAS on owner); False if not ours."""
        j = t.jobs.c
        detail = _no_nul(detail) if detail is not None else None  # output, answers: anything
        values: dict[str, Any] = {"status": status, "exit_code": exit_code, "detail": detail,
                                  "next_attempt_at": next_attempt_at}
        if external_id is not None:
            values["external_id"] = _no_nul(external_id)
        if status.final:
            values["finished_at"] = now
        with self.write() as c:
            row = self._q("job.by_id", lambda: select(t.jobs).where(
                j.id == bindparam("b_id"))).run(c, {"b_id": job_id}).first()
            res = c.execute(update(t.jobs).where(and_(
                j.id == job_id, j.status == JobStatus.RUNNING, j.owner == owner)).values(**values))
            if res.rowcount != 1 or row is None:
                return False
            a = t.job_attempts.c
            self._q("finish.attempt", lambda: update(t.job_attempts).where(and_(
                a.job_id == bindparam("b_id"), a.n == bindparam("b_n"))).values(
                    finished_at=bindparam("b_now"), outcome=bindparam("b_outcome"),
                    exit_code=bindparam("b_code"), detail=bindparam("b_detail"))).run(
                c, {"b_id": job_id, "b_n": row.attempts, "b_now": now, "b_outcome": status,
                    "b_code": exit_code, "b_detail": detail})
            if status == JobStatus.SUCCEEDED:
                # the periodic floor counts from the trigger whose job succeeded (its fired_at,
                # which is the job's created_at), never moving backwards
                g = t.rule_groups.c

                def success() -> Executable:
                    fired = bindparam("b_fired", type_=_TS)
                    return update(t.rule_groups).where(and_(
                        g.rule == bindparam("b_rule"), g.grp == bindparam("b_grp"))).values(
                        last_success_at=case((or_(g.last_success_at.is_(None),
                                                  g.last_success_at < fired), fired),
                                             else_=g.last_success_at))
                self._q("finish.success", success).run(
                    c, {"b_rule": row.rule, "b_grp": row.grp, "b_fired": row.created_at})
        return True

    def recover_jobs(self, owner: str, stale_before: datetime, now: datetime, *,
                     exclusive: bool = False) -> list[tuple[str, datetime | None]]:
        """Jobs to (re)dispatch: queued and retrying ones, and running ones whose daemon is
        gone. Called at start-up and periodically, so a replica picks up the work of one that
        died. A daemon is gone when it stopped, when its heartbeat is older than
        `stale_before`, or — with `exclusive` (this daemon holds the SQLite lock, so no other
        can be alive) — whenever it is not `owner`. Running jobs of a gone daemon go back to
        `retrying`: the interrupted attempt is given back (the job's `max_attempts` grows by
        one), so a restart never fails a job the backend can resume or reattach to. A clean
        stop (SIGTERM: a deploy) always gives it back (outcome `stopped`); a crash (outcome
        `interrupted`) up to `MAX_INTERRUPTED` times: a job whose attempt takes its daemon
        down each time keeps its budget and fails when no attempt is left.
        Returns (job id, not before) pairs."""
        j = t.jobs.c
        a = t.job_attempts.c
        d = t.daemons.c
        gone = or_(j.owner.is_(None), _gone(j.owner, owner, stale_before, exclusive))
        with self.write() as c:
            orphans = c.execute(select(j.id, j.attempts, j.max_attempts, d.stopped_at)
                                .select_from(t.jobs.outerjoin(t.daemons, d.id == j.owner))
                                .where(and_(j.status == JobStatus.RUNNING, gone))).all()
            for job_id, attempts, max_attempts, stopped_at in orphans:
                detail = "interrupted: the daemon running it stopped"
                outcome = "stopped" if stopped_at is not None else "interrupted"
                earlier = c.execute(select(func.count()).select_from(t.job_attempts).where(
                    and_(a.job_id == job_id, a.outcome == "interrupted"))).scalar_one()
                if outcome == "stopped" or earlier < MAX_INTERRUPTED:
                    max_attempts += 1
                left = attempts < max_attempts
                c.execute(update(t.jobs).where(and_(j.id == job_id,
                                                    j.status == JobStatus.RUNNING)).values(
                    status=JobStatus.RETRYING if left else JobStatus.FAILED, owner=None,
                    max_attempts=max_attempts,
                    detail=detail + ("" if left else "; no attempts left"),
                    finished_at=None if left else now))
                c.execute(update(t.job_attempts).where(and_(
                    a.job_id == job_id, a.n == attempts, a.finished_at.is_(None)))
                    .values(finished_at=now, outcome=outcome, detail=detail))
            rows = c.execute(select(j.id, j.next_attempt_at).where(
                j.status.in_([JobStatus.QUEUED, JobStatus.RETRYING]))
                .order_by(j.created_at)).all()
        return [(r[0], r[1]) for r in rows]

    def job(self, job_id: str) -> Job | None:
        with self.read() as c:
            row = c.execute(select(t.jobs).where(t.jobs.c.id == job_id)).first()
        return _job(row) if row else None

    def active_jobs(self, rule: str | None = None) -> list[Job]:
        q = select(t.jobs).where(t.jobs.c.status.in_(list(ACTIVE_JOB_STATUSES)))
        if rule is not None:
            q = q.where(t.jobs.c.rule == rule)
        with self.read() as c:
            return [_job(r) for r in c.execute(q.order_by(t.jobs.c.created_at))]

    def trigger_context(self, job_id: str) -> tuple[Trigger, list[dict[str, Any]]] | None:
        """The trigger behind a job and the events it consumed (for the backend's context)."""
        with self.read() as c:
            found = self._trigger_context(c, job_id)
        return None if found is None else (found.trigger, found.events)

    def _trigger_context(self, c: Connection, job_id: str) -> JobContext | None:
        tr, ev, re_ = t.triggers.c, t.events.c, t.rule_events.c
        return _context(
            c, job_id,
            self._q("context.trigger", lambda: select(t.triggers).join(
                t.jobs, t.jobs.c.trigger_id == tr.id).where(t.jobs.c.id == bindparam("b_id"))),
            self._q("context.events", lambda: select(t.events).join(
                t.rule_events, re_.event_id == ev.id).where(re_.trigger_id == bindparam("b_tid"))
                .order_by(ev.observed_at, ev.id)))

    def trigger_params(self, tid: str) -> dict[str, Any]:
        with self.read() as c:
            value = c.execute(select(t.triggers.c.params).where(t.triggers.c.id == tid)).scalar()
        return dict(value or {})

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
        gone = _gone(r.handled_by, owner, stale_before, exclusive)
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
            removed += c.execute(delete(t.events).where(and_(
                ev.observed_at < before,
                ~select(re_.event_id).where(re_.event_id == ev.id).exists()))).rowcount
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


def _gone(daemon: Any, owner: str, stale_before: datetime, exclusive: bool) -> Any:
    """SQL condition: the daemon in column `daemon` is another one, and gone — stopped, or
    silent since `stale_before`; with `exclusive` (we hold the SQLite lock) any other one."""
    if exclusive:
        return daemon != owner
    d = t.daemons.c
    alive = select(d.id).where(and_(d.heartbeat_at >= stale_before, d.stopped_at.is_(None)))
    return and_(daemon != owner, daemon.not_in(alive))


def sqlite_value(value: Any) -> Any:
    """A value as SQLAlchemy stores it in SQLite (JSON text, naive-UTC datetime text)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def _sqlite_executemany(c: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """`INSERT OR IGNORE` straight to sqlite3's executemany: the ingest hot path.

    SQLAlchemy's per-row parameter processing was a quarter of ingest time (bench/); the
    values are converted exactly as its JSON and UTCDateTime types would store them, and
    test_store.py reads them back through SQLAlchemy on every run."""
    keys = list(rows[0])
    cols = [table.c[k].name for k in keys]  # names from tables.py; values stay bound
    sql = (f"INSERT OR IGNORE INTO {table.name} ({', '.join(cols)}) "  # noqa: S608
           f"VALUES ({', '.join('?' * len(cols))})")
    stamps: dict[datetime, str] = {}  # the timestamps of a batch repeat: each converted once

    def stamp(value: Any) -> Any:
        text = stamps.get(value)
        if text is None:
            text = stamps[value] = sqlite_value(value)
        return text

    def convert(k: str) -> Callable[[Any], Any] | None:
        kind = table.c[k].type
        return stamp if isinstance(kind, t.UTCDateTime) else \
            sqlite_value if isinstance(kind, JSON) else None
    conv = [(k, convert(k)) for k in keys]
    sqlite_executemany(c, sql, [tuple(r[k] if f is None or r[k] is None else f(r[k])
                                      for k, f in conv) for r in rows])


def _group(r: Any) -> GroupState:
    return GroupState(rule=r.rule, group=r.grp, seq=r.seq, created_at=r.created_at,
                      last_trigger_at=r.last_trigger_at, last_success_at=r.last_success_at,
                      last_floor_at=r.last_floor_at, sustained_count=r.sustained_count,
                      sustained_since=r.sustained_since, last_check_at=r.last_check_at)


def _context(c: Connection, job_id: str, q_trigger: Fast, q_events: Fast) -> JobContext | None:
    row = q_trigger.run(c, {"b_id": job_id}).first()
    if row is None:
        return None
    evs = q_events.run(c, {"b_tid": row.id}).all()
    trig = Trigger(id=row.id, rule=row.rule, group=row.grp, seq=row.seq,
                   fired_at=row.fired_at, reason=row.reason, manual=row.manual,
                   events=row.events, kind=row.kind)
    return JobContext(trig, [{"id": e.id, "source": e.source, "kind": e.kind,
                              "subject": e.subject, "fingerprint": e.fingerprint,
                              "observed_at": e.observed_at.isoformat(), "payload": e.payload}
                             for e in evs], dict(row.params or {}))


def _no_nul(text: str) -> str:
    """PostgreSQL text cannot hold NUL: a command's output or a server's answer may."""
    return text.replace("\x00", "\\x00") if "\x00" in text else text


def _job(r: Any) -> Job:
    return Job(id=r.id, trigger_id=r.trigger_id, rule=r.rule, group=r.grp, backend=r.backend,
               status=JobStatus(r.status), attempts=r.attempts, external_id=r.external_id,
               created_at=r.created_at, started_at=r.started_at, finished_at=r.finished_at,
               exit_code=r.exit_code, detail=r.detail, next_attempt_at=r.next_attempt_at,
               max_attempts=r.max_attempts)


def retention_cutoff(now: datetime, retention: timedelta) -> datetime:
    return now - retention
