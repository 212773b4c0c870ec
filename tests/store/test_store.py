"""The SQL state store, on SQLite and PostgreSQL (the `store` fixture runs each test on both).

Everything here is what a user of the daemon would notice: an event stored once, a trigger
consuming exactly its group's pending events, one dispatch per trigger even between replicas,
jobs claimed once, old rows pruned without touching anything still pending or running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy import Table, func, select
from sqlalchemy.exc import OperationalError, StatementError
from store_helpers import (
    active_jobs_by_rule,
    claim_job,
    rule_flags,
    trigger_context,
    trigger_params,
)

from triggerd.errors import StoreError
from triggerd.model import Event, JobStatus, Trigger, trigger_id
from triggerd.store import Store
from triggerd.store import queries as q
from triggerd.store import tables as t
from triggerd.store.files import FileRow, load_files, write_files
from triggerd.store.sql import Ingest, IngestResult, NewTrigger

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)
M = timedelta(minutes=1)
H = timedelta(hours=1)
D = timedelta(days=1)

R = TypeVar("R")


# -- helpers --------------------------------------------------------------------------------------
def ev(fp: str, at: datetime = T0, *, source: str = "src", size: int = 0,
       payload: dict[str, Any] | None = None, kind: str = "created") -> Event:
    data = dict(payload) if payload is not None else {"path": f"/data/{fp}"}
    if size:
        data["size"] = size
    return Event(source=source, kind=kind, subject=f"/data/{fp}", fingerprint=fp,
                 payload=data, observed_at=at)


def item(event: Event, *keys: tuple[str, str],
         streak: Iterable[tuple[str, str, bool]] = ()) -> Ingest:
    return Ingest(event, pending=list(keys), streak=list(streak))


def ingest(store: Store, *items: Ingest, source: str = "src",
           now: datetime = T0) -> IngestResult:
    """Ingest with a classifier that returns the given (precomputed) matches per event."""
    by_event = {id(i.event): i for i in items}

    def classify(events: Sequence[Event]) -> list[Ingest]:
        return [by_event[id(ev)] for ev in events]

    return store.ingest(source, "filesystem", [i.event for i in items], now, classify)


def add(store: Store, rule: str, group: str, *fps: str, at: datetime = T0,
        source: str = "src") -> IngestResult:
    """Ingest events pending for one (rule, group), one second apart from `at`."""
    return ingest(store, *(item(ev(fp, at + i * S, source=source), (rule, group))
                           for i, fp in enumerate(fps)), source=source, now=at)


def new_trigger(rule: str, group: str = "", expected_seq: int = 0, at: datetime = T0,
                **kw: Any) -> NewTrigger:
    values: dict[str, Any] = {"reason": "3 new events (≥3)", "kind": "events",
                              "backend": "train", "params": {"epochs": 3}, "max_attempts": 3}
    values.update(kw)
    return NewTrigger(rule=rule, group=group, expected_seq=expected_seq, fired_at=at, **values)


def seq(store: Store, rule: str, group: str = "") -> int:
    st = store.group_states([rule]).get((rule, group))
    return st.seq if st else 0


def fire(store: Store, rule: str, group: str = "", at: datetime = T0, **kw: Any) -> Trigger:
    trig = store.create_trigger(new_trigger(rule, group, seq(store, rule, group), at, **kw))
    assert trig is not None
    return trig


def rows(store: Store, table: Table, *where: Any) -> list[Any]:
    with store.read() as c:
        return list(c.execute(select(table).where(*where)).all())


def count(store: Store, table: Table) -> int:
    with store.read() as c:
        return int(c.execute(select(func.count()).select_from(table)).scalar_one())


def counts(store: Store) -> dict[str, int]:
    return {tb.name: count(store, tb) for tb in t.metadata.sorted_tables}


def pending_ids(store: Store, rule: str) -> set[str]:
    re_ = t.rule_events.c
    return {r.event_id for r in rows(store, t.rule_events, re_.rule == rule,
                                     re_.trigger_id.is_(None))}


def is_utc(value: datetime | None) -> bool:
    return value is not None and value.utcoffset() == timedelta(0)


def race(store_a: Store, store_b: Store, call: Callable[[Store], R]) -> list[R]:
    """Run `call` on both stores at the same moment, from two threads."""
    barrier = threading.Barrier(2)

    def run(s: Store) -> R:
        barrier.wait(timeout=10)
        return call(s)

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run, s) for s in (store_a, store_b)]
        return [f.result(timeout=30) for f in futures]


# -- ingest ---------------------------------------------------------------------------------------
def test_new_events_are_stored_with_pending_membership_per_rule_group(store: Store) -> None:
    e1, e2 = ev("a", T0, size=100), ev("b", T0 + S, size=50)
    res = ingest(store, item(e1, ("r1", ""), ("r2", "gpu")), item(e2, ("r1", "")))

    assert res.new == [e1.id, e2.id]
    assert res.duplicates == 0
    assert {r.id for r in rows(store, t.events)} == {e1.id, e2.id}
    members = {(r.rule, r.grp, r.event_id) for r in rows(store, t.rule_events)}
    assert members == {("r1", "", e1.id), ("r2", "gpu", e1.id), ("r1", "", e2.id)}
    pend = store.pending()
    assert pend[("r1", "")].count == 2 and pend[("r1", "")].bytes == 150
    assert pend[("r2", "gpu")].count == 1 and pend[("r2", "gpu")].bytes == 100
    # the groups exist from now on, at sequence 0
    states = store.group_states()
    assert set(states) == {("r1", ""), ("r2", "gpu")}
    assert states[("r1", "")].seq == 0 and states[("r1", "")].created_at == T0


def test_duplicate_in_a_later_batch_is_not_stored_again_and_counted(store: Store) -> None:
    add(store, "r", "", "a", "b")
    res = ingest(store, item(ev("a", T0 + H), ("r", "")), item(ev("c", T0 + H), ("r", "")),
                 now=T0 + H)

    assert res.new == [ev("c").id]
    assert res.duplicates == 1
    assert count(store, t.events) == 3
    assert count(store, t.rule_events) == 3
    assert store.pending()[("r", "")].count == 3
    # the stored copy is the first one seen
    (first,) = rows(store, t.events, t.events.c.fingerprint == "a")
    assert first.observed_at == T0
    src = q.sources(store)["src"]
    assert (src["events"], src["duplicates"]) == (3, 1)


def test_duplicate_within_one_batch_is_stored_once_and_counted(store: Store) -> None:
    res = ingest(store, item(ev("a", T0), ("r", "")), item(ev("a", T0 + S), ("r", "")),
                 item(ev("b", T0 + S), ("r", "")), item(ev("a", T0 + 2 * S), ("r", "")))

    assert res.new == [ev("a").id, ev("b").id]
    assert res.duplicates == 2
    assert count(store, t.events) == 2
    assert store.pending()[("r", "")].count == 2
    src = q.sources(store)["src"]
    assert (src["events"], src["duplicates"]) == (2, 2)


def test_replicas_storing_the_same_events_at_once_store_each_exactly_once(
        store: Store, store_url: str) -> None:
    """Two stores pass the duplicate check for overlapping batches at the same moment (both
    match them: `classify` waits for the other), then insert: each event is stored once, by
    one of them, with its memberships once; the other counts it as a duplicate."""
    other = Store(store_url)
    barrier = threading.Barrier(2)
    batches = {id(store): ["a", "b", "c"], id(other): ["b", "c", "d"]}

    def step(s: Store) -> IngestResult:
        def classify(events: Sequence[Event]) -> list[Ingest]:
            barrier.wait(timeout=10)  # both checked for duplicates before either inserts
            return [item(e, ("r", "g"), ("q", "")) for e in events]
        return s.ingest("src", "filesystem", [ev(fp, size=10) for fp in batches[id(s)]], T0,
                        classify)
    try:
        results = race(store, other, step)
    finally:
        other.close()

    assert sorted(eid for r in results for eid in r.new) == sorted(
        ev(fp).id for fp in "abcd")
    assert sum(r.duplicates for r in results) == 2
    assert count(store, t.events) == 4
    members = [(r.rule, r.event_id) for r in rows(store, t.rule_events)]
    assert sorted(members) == sorted({(rule, ev(fp).id) for rule in "rq" for fp in "abcd"})
    summary = {k: (p.count, p.bytes, p.first_at, p.last_at) for k, p in store.pending().items()}
    assert summary == pending_from_rows(store)
    assert summary[("r", "g")][:2] == (4, 40)
    src = q.sources(store)["src"]
    assert (src["events"], src["duplicates"]) == (4, 2)


def test_same_fingerprint_from_another_source_is_a_new_event(store: Store) -> None:
    a = ev("same", source="lake")
    b = ev("same", source="bucket")
    assert a.id != b.id
    assert ingest(store, item(a, ("r", "")), source="lake").new == [a.id]
    assert ingest(store, item(b, ("r", "")), source="bucket").new == [b.id]
    assert count(store, t.events) == 2
    assert store.pending()[("r", "")].count == 2
    srcs = q.sources(store)
    assert srcs["lake"]["events"] == 1 and srcs["bucket"]["events"] == 1
    assert srcs["lake"]["duplicates"] == 0 and srcs["bucket"]["duplicates"] == 0


def test_touched_names_the_groups_of_new_events_only(store: Store) -> None:
    add(store, "old", "", "dup")
    res = ingest(store,
                 item(ev("dup"), ("old", "")),                          # duplicate: not touched
                 item(ev("x"), ("r1", "a"), ("r2", "")),
                 item(ev("y"), streak=[("psi", "model-a", False)]))     # streak only
    assert res.touched == {("r1", "a"), ("r2", ""), ("psi", "model-a")}
    assert ingest(store, item(ev("x"), ("r1", "a"))).touched == set()
    assert ingest(store).touched == set()  # an empty batch is a no-op
    # an event matching no rule touches nothing but is stored, for dedup
    lonely = ev("lonely")
    res = ingest(store, item(lonely))
    assert res.new == [lonely.id] and res.touched == set()
    assert ingest(store, item(lonely)).duplicates == 1


def test_source_counters_and_last_event_at(store: Store) -> None:
    ingest(store, item(ev("a")), item(ev("b")), now=T0 + M)
    src = q.sources(store)["src"]
    assert src["type"] == "filesystem" and src["healthy"] is True
    assert (src["events"], src["duplicates"], src["errors"]) == (2, 0, 0)
    assert src["last_event_at"] == T0 + M

    # a batch of duplicates only counts, and does not move last_event_at
    ingest(store, item(ev("a")), item(ev("b")), now=T0 + H)
    src = q.sources(store)["src"]
    assert (src["events"], src["duplicates"]) == (2, 2)
    assert src["last_event_at"] == T0 + M

    ingest(store, item(ev("c")), now=T0 + 2 * H)
    src = q.sources(store)["src"]
    assert (src["events"], src["duplicates"]) == (3, 2)
    assert src["last_event_at"] == T0 + 2 * H


def test_a_batch_that_failed_half_way_can_be_retried(store: Store,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection lost in the middle of an ingest rolls it back; retrying it must then give
    the new groups their state rows, so they can stream and fire like any other."""
    def lost(*_args: Any, **_kw: Any) -> None:
        raise OperationalError("UPDATE sources", {}, Exception("server closed the connection"))

    batch = [item(ev("a"), ("r", "new")), report("m", T0, True, rule="psi", group="new")]
    with monkeypatch.context() as m:
        m.setattr(store, "_count_source", lost)
        with pytest.raises(StoreError, match="server closed the connection"):
            ingest(store, *batch)
    assert count(store, t.events) == 0 and count(store, t.rule_groups) == 0

    res = ingest(store, *batch)
    assert len(res.new) == 2
    assert set(store.group_states()) == {("r", "new"), ("psi", "new")}
    assert streak_of(store, "psi", "new") == (1, T0)
    trig = store.create_trigger(new_trigger("r", "new", 0, T0 + M))
    assert trig is not None and trig.events == 1



def test_work_given_to_ingest_is_stored_with_the_events_or_not_at_all(store: Store) -> None:
    """The filesystem source's file rows ride in the transaction of the events they cover: a
    failure in either leaves neither (a crash can no longer store one without the other)."""
    row = FileRow("/data/a.csv", inode=7, size=3, mtime_ns=1, fingerprint="a.csv:3:1:7")

    def broken(c: Any) -> None:
        write_files(store, c, "src", [row], ())
        raise OperationalError("INSERT files", {}, Exception("disk I/O error"))
    with pytest.raises(StoreError, match="disk I/O error"):
        store.ingest("src", "filesystem", [ev("a")], T0, also=broken)
    assert count(store, t.events) == 0 and load_files(store, "src") == {}

    store.ingest("src", "filesystem", [ev("a")], T0,
                 also=lambda c: write_files(store, c, "src", [row], ()))
    assert count(store, t.events) == 1
    assert load_files(store, "src")["/data/a.csv"].sig == (3, 1, 7)
    store.ingest("src", "filesystem", [ev("b")], T0,
                 also=lambda c: write_files(store, c, "src", [], ["/data/a.csv"]))
    assert count(store, t.events) == 2 and load_files(store, "src") == {}

PAYLOAD: dict[str, Any] = {
    "path": "/data/größe/日本語 file ✓.parquet",
    "name": "日本語 file ✓.parquet",
    "emoji": "🚀 done",
    "quote": "it's \"quoted\" \\ back",
    "nested": {"metrics": {"psi": 0.31, "ks": [0.1, 0.2, None]}, "ok": True, "n": None},
    "list": [1, "two", {"three": 3}],
    "big": 2**53,
    "size": 1234,
}


def test_payload_with_unicode_and_nesting_round_trips(store: Store) -> None:
    e = Event(source="src", kind="message", subject="clé/ключ", fingerprint="fp-ü-✓",
              payload=PAYLOAD, observed_at=T0)
    ingest(store, item(e, ("r", "")))

    (listed,) = q.list_events(store)
    assert listed["payload"] == PAYLOAD
    assert listed["subject"] == "clé/ключ" and listed["fingerprint"] == "fp-ü-✓"
    assert listed["kind"] == "message"
    assert store.pending()[("r", "")].bytes == 1234

    trig = fire(store, "r")
    ctx = trigger_context(store, trig.id)
    assert ctx is not None
    assert ctx[1][0]["payload"] == PAYLOAD
    assert ctx[1] == [e.to_dict()]
    # duplicates are recognised by their unicode fingerprint too
    assert ingest(store, item(e, ("r", ""))).duplicates == 1


# -- streaks (`sustained`) ------------------------------------------------------------------------
def streak_of(store: Store, rule: str, group: str = "") -> tuple[int, datetime | None]:
    st = store.group_states([rule])[(rule, group)]
    return st.sustained_count, st.sustained_since


def report(fp: str, at: datetime, matched: bool, rule: str = "psi", group: str = "") -> Ingest:
    keys = [(rule, group)] if matched else []
    return item(ev(fp, at, kind="message"), *keys, streak=[(rule, group, matched)])


def test_streak_counts_consecutive_matches_and_resets_on_a_miss(store: Store) -> None:
    ingest(store, report("m1", T0, True))
    assert streak_of(store, "psi") == (1, T0)
    ingest(store, report("m2", T0 + M, True))
    assert streak_of(store, "psi") == (2, T0)          # since = the first match of the streak
    ingest(store, report("m3", T0 + 2 * M, False))
    assert streak_of(store, "psi") == (0, None)
    ingest(store, report("m4", T0 + 3 * M, True))
    assert streak_of(store, "psi") == (1, T0 + 3 * M)
    # a trigger resets it; the next match starts a new streak
    ingest(store, report("m5", T0 + 4 * M, True))
    fire(store, "psi", at=T0 + 5 * M)
    assert streak_of(store, "psi") == (0, None)
    ingest(store, report("m6", T0 + 6 * M, True))
    assert streak_of(store, "psi") == (1, T0 + 6 * M)


def test_streak_respects_the_order_within_a_batch(store: Store) -> None:
    ingest(store, report("a", T0, True), report("b", T0 + M, False),
           report("c", T0 + 2 * M, True), report("d", T0 + 3 * M, True))
    assert streak_of(store, "psi") == (2, T0 + 2 * M)

    ingest(store, report("e", T0 + 4 * M, True), report("f", T0 + 5 * M, False))
    assert streak_of(store, "psi") == (0, None)

    # per rule group
    ingest(store, report("g1", T0, True, group="m1"), report("g2", T0 + M, False, group="m2"),
           report("g3", T0 + 2 * M, True, group="m1"))
    assert streak_of(store, "psi", "m1") == (2, T0)
    assert streak_of(store, "psi", "m2") == (0, None)


def test_duplicates_do_not_move_the_streak(store: Store) -> None:
    ingest(store, report("a", T0, True), report("b", T0 + M, True))
    # a redelivered miss must not reset, a redelivered match must not count twice
    ingest(store, report("a", T0 + 2 * M, False), report("b", T0 + 2 * M, True))
    assert streak_of(store, "psi") == (2, T0)
    # within one batch too
    ingest(store, report("c", T0 + 3 * M, True), report("c", T0 + 4 * M, False))
    assert streak_of(store, "psi") == (3, T0)


# -- pending --------------------------------------------------------------------------------------
def test_pending_summarises_each_group(store: Store) -> None:
    ingest(store, item(ev("a", T0 + 5 * S, size=10), ("r", "x")),
           item(ev("b", T0, size=20), ("r", "x")),
           item(ev("c", T0 + 9 * S), ("r", "x")),
           item(ev("d", T0 + H, size=7), ("r", "y"), ("other", "")))

    pend = store.pending()
    x = pend[("r", "x")]
    assert (x.count, x.bytes, x.first_at, x.last_at) == (3, 30, T0, T0 + 9 * S)
    y = pend[("r", "y")]
    assert (y.count, y.bytes, y.first_at, y.last_at) == (1, 7, T0 + H, T0 + H)
    assert set(store.pending(["r"])) == {("r", "x"), ("r", "y")}
    assert set(store.pending(["other"])) == {("other", "")}
    assert store.pending(["nothing"]) == {}


def test_consumed_events_are_no_longer_pending(store: Store) -> None:
    add(store, "r", "x", "a", "b")
    add(store, "r", "y", "c")
    fire(store, "r", "x", at=T0 + M)
    pend = store.pending()
    assert ("r", "x") not in pend
    assert pend[("r", "y")].count == 1

    add(store, "r", "x", "d", at=T0 + H)
    assert store.pending()[("r", "x")].count == 1
    assert store.pending()[("r", "x")].first_at == T0 + H


def pending_from_rows(store: Store) -> dict[tuple[str, str], tuple[int, int, Any, Any]]:
    """The pending summary recomputed from every pending row (what the store keeps)."""
    re_ = t.rule_events.c
    with store.read() as c:
        return {(r[0], r[1]): (int(r[2]), int(r[3]), r[4], r[5]) for r in c.execute(
            select(re_.rule, re_.grp, func.count(), func.coalesce(func.sum(re_.size), 0),
                   func.min(re_.observed_at), func.max(re_.observed_at))
            .where(re_.trigger_id.is_(None)).group_by(re_.rule, re_.grp))}


def test_pending_summary_stays_exact_while_replicas_ingest_and_fire_at_once(
        store: Store, store_url: str) -> None:
    """The summary is kept by ingest and create_trigger, not recomputed: two stores adding to
    one group and firing it at the same moment must leave it equal to the pending rows."""
    other = Store(store_url)
    try:
        for n in range(12):
            at = T0 + n * M

            def step(s: Store, n: int = n, at: datetime = at) -> Any:
                if s is other and n % 3 == 2:  # a trigger racing the other's ingest
                    return s.create_trigger(new_trigger("r", "g", seq(s, "r", "g"), at))
                fps = [f"{'a' if s is store else 'b'}{n}-{i}" for i in range(3)]
                return ingest(s, *(item(ev(fp, at - i * S, size=10 + i, source="src"),
                                        ("r", "g"), ("q", f"g{i % 2}")) for i, fp in
                                   enumerate(fps)), now=at)
            race(store, other, step)
            summary = {k: (p.count, p.bytes, p.first_at, p.last_at)
                       for k, p in store.pending().items()}
            assert summary == pending_from_rows(store), n
        assert count(store, t.triggers) >= 1
    finally:
        other.close()


# -- create_trigger -------------------------------------------------------------------------------
def test_create_trigger_consumes_its_group_only_and_queues_a_job(store: Store) -> None:
    add(store, "r", "a", "a1", "a2", "a3")
    add(store, "r", "b", "b1")
    ingest(store, item(ev("both"), ("r", "a"), ("other", "a")))
    ingest(store, report("s1", T0, True, rule="r", group="a"))

    trig = store.create_trigger(new_trigger("r", "a", 0, T0 + M))

    assert trig is not None
    assert trig.id == trigger_id("r", "a", 1)
    assert (trig.rule, trig.group, trig.seq, trig.events, trig.manual) == ("r", "a", 1, 5, False)
    assert trig.fired_at == T0 + M and trig.reason == "3 new events (≥3)"
    # all pending of r/a consumed; r/b and rule `other` untouched (even for a shared event)
    pend = store.pending()
    assert ("r", "a") not in pend
    assert pend[("r", "b")].count == 1
    assert pend[("other", "a")].count == 1
    consumed = {r.event_id
                for r in rows(store, t.rule_events, t.rule_events.c.trigger_id == trig.id)}
    assert consumed == {ev(f).id for f in ("a1", "a2", "a3", "both", "s1")}
    # the job: queued, same id as the trigger
    job = q.job(store, trig.id)
    assert job is not None
    assert (job.id, job.trigger_id, job.status, job.attempts) == (trig.id, trig.id,
                                                                  JobStatus.QUEUED, 0)
    assert (job.rule, job.group, job.backend, job.created_at) == ("r", "a", "train", T0 + M)
    assert job.finished_at is None and job.started_at is None
    assert trigger_params(store, trig.id) == {"epochs": 3}
    # the group state moved on
    st = store.group_states()[("r", "a")]
    assert (st.seq, st.last_trigger_at, st.sustained_count, st.sustained_since) == (
        1, T0 + M, 0, None)
    assert st.last_floor_at is None
    assert store.group_states()[("r", "b")].seq == 0
    (stored,) = rows(store, t.triggers)
    assert (stored.kind, stored.events, stored.params) == ("events", 5, {"epochs": 3})


def test_trigger_ids_are_deterministic_per_rule_group_and_sequence(store: Store) -> None:
    ids = [fire(store, "r", at=T0 + i * M).id for i in range(3)]
    assert ids == ["r.1", "r.2", "r.3"] == [trigger_id("r", "", n) for n in (1, 2, 3)]
    grouped = fire(store, "r", "model/a b")
    assert grouped.id == trigger_id("r", "model/a b", 1)
    assert grouped.id != fire(store, "r", "model/a c").id
    assert all(ch.isalnum() or ch in "._-" for ch in grouped.id)


def test_a_trigger_without_events_is_allowed_and_manual_and_floor_are_recorded(
        store: Store) -> None:
    manual = fire(store, "r", kind="manual", reason="requested by alice")
    assert manual.events == 0 and manual.manual is True
    floor = fire(store, "r", at=T0 + D, kind="floor", reason="no retrain for 7d")
    assert floor.manual is False
    st = store.group_states()[("r", "")]
    assert (st.seq, st.last_floor_at, st.last_trigger_at) == (2, T0 + D, T0 + D)


def test_a_stale_expected_seq_creates_nothing(store: Store) -> None:
    add(store, "r", "", "a", "b")
    first = store.create_trigger(new_trigger("r", "", 0, T0 + M))
    assert first is not None
    add(store, "r", "", "c", at=T0 + 2 * M)

    # the other replica decided on the same (now stale) state
    assert store.create_trigger(new_trigger("r", "", 0, T0 + 3 * M)) is None
    assert store.create_trigger(new_trigger("r", "", 5, T0 + 3 * M)) is None
    assert count(store, t.triggers) == 1
    assert count(store, t.jobs) == 1
    assert store.pending()[("r", "")].count == 1
    assert seq(store, "r") == 1
    assert store.group_states()[("r", "")].last_trigger_at == T0 + M


def test_an_event_is_never_in_two_triggers(store: Store) -> None:
    add(store, "r", "", "a", "b")
    t1 = fire(store, "r", at=T0 + M)
    add(store, "r", "", "b", "c", at=T0 + 2 * M)   # "b" again: a duplicate
    t2 = fire(store, "r", at=T0 + 3 * M)
    t3 = fire(store, "r", at=T0 + 4 * M)

    assert (t1.events, t2.events, t3.events) == (2, 1, 0)
    ctx = {tr.id: trigger_context(store, tr.id) for tr in (t1, t2, t3)}
    subjects = {tid: [e["subject"] for e in c[1]] for tid, c in ctx.items() if c}
    assert subjects == {t1.id: ["/data/a", "/data/b"], t2.id: ["/data/c"], t3.id: []}
    re_ = rows(store, t.rule_events)
    assert len(re_) == 3 and len({r.event_id for r in re_}) == 3


def test_a_skipped_trigger_writes_its_job_cancelled_with_the_reason(store: Store) -> None:
    """The mechanism of on_busy: skip (the engine's policy says when: engine/policy.on_busy)."""
    add(store, "r", "", "a")
    running = fire(store, "r", at=T0 + M)
    assert claim_job(store, running.id, "d1", 1, T0 + M) is not None
    add(store, "r", "", "b", at=T0 + 2 * M)

    skipped = fire(store, "r", at=T0 + 3 * M,
                   skipped="skipped: the rule was busy (on_busy: skip)")

    job = q.job(store, skipped.id)
    assert job is not None
    assert job.status == JobStatus.CANCELLED
    assert job.finished_at == T0 + 3 * M
    assert job.detail and "skip" in job.detail and "busy" in job.detail
    # the events were consumed by the skipped trigger: they do not fire again
    assert store.pending() == {}
    assert skipped.events == 1
    assert q.job(store, running.id).status == JobStatus.RUNNING  # type: ignore[union-attr]
    # not skipped: queued behind the others
    third = fire(store, "r", at=T0 + 4 * M)
    fourth = fire(store, "r", at=T0 + 5 * M)
    assert [j.id for j in q.active_jobs(store, "r")] == [running.id, third.id, fourth.id]
    assert [j.status for j in q.active_jobs(store, "r")] == [
        JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.QUEUED]
    assert active_jobs_by_rule(store) == {"r": 3}


def test_a_superseding_trigger_cancels_the_older_queued_job_of_the_group(store: Store) -> None:
    """The mechanism of on_busy: coalesce (engine/policy.on_busy asks for it)."""
    running = fire(store, "r", "g", at=T0)
    claim_job(store, running.id, "d1", 1, T0)
    older = fire(store, "r", "g", at=T0 + M)
    other_group = fire(store, "r", "h", at=T0 + M)
    other_rule = fire(store, "q", "g", at=T0 + M)

    newer = fire(store, "r", "g", at=T0 + 2 * M, supersede="on_busy: coalesce")

    old_job = q.job(store, older.id)
    assert old_job is not None
    assert old_job.status == JobStatus.CANCELLED
    assert old_job.finished_at == T0 + 2 * M
    assert old_job.detail and "superseded" in old_job.detail and newer.id in old_job.detail
    assert q.job(store, newer.id).status == JobStatus.QUEUED  # type: ignore[union-attr]
    # a running job, and queued jobs of other groups and rules, are left alone
    assert q.job(store, running.id).status == JobStatus.RUNNING  # type: ignore[union-attr]
    assert q.job(store, other_group.id).status == JobStatus.QUEUED  # type: ignore[union-attr]
    assert q.job(store, other_rule.id).status == JobStatus.QUEUED  # type: ignore[union-attr]


def test_replicas_racing_for_the_same_trigger_create_exactly_one(
        store: Store, store_url: str) -> None:
    other = Store(store_url)
    try:
        for n in range(20):
            add(store, "r", "", f"e{n}", at=T0 + n * M)
            results = race(store, other, lambda s, n=n: s.create_trigger(
                new_trigger("r", "", n, T0 + n * M + S)))
            won = [r for r in results if r is not None]
            assert len(won) == 1, results
            assert won[0].id == trigger_id("r", "", n + 1) and won[0].events == 1
        # a brand-new group each time: the group row itself is created in the race
        for n in range(10):
            results = race(store, other, lambda s, n=n: s.create_trigger(
                new_trigger("fresh", f"g{n}", 0, T0 + n * M, kind="schedule")))
            assert len([r for r in results if r is not None]) == 1, results
    finally:
        other.close()
    assert seq(store, "r") == 20
    assert count(store, t.triggers) == 30
    assert count(store, t.jobs) == 30
    assert store.pending() == {}
    assert all(r.trigger_id is not None for r in rows(store, t.rule_events))


# -- jobs -----------------------------------------------------------------------------------------
def queued(store: Store, rule: str = "r", group: str = "", at: datetime = T0, *,
           max_attempts: int = 3) -> str:
    return fire(store, rule, group, at, max_attempts=max_attempts).id


def attempts(store: Store, job_id: str) -> list[Any]:
    a = t.job_attempts.c
    with store.read() as c:
        return list(c.execute(select(t.job_attempts).where(a.job_id == job_id)
                              .order_by(a.n)).all())


def test_claim_job_is_a_compare_and_set(store: Store) -> None:
    jid = queued(store)
    job = claim_job(store, jid, "d1", 5, T0 + S)
    assert job is not None
    assert (job.status, job.attempts, job.started_at) == (JobStatus.RUNNING, 1, T0 + S)
    assert claim_job(store, jid, "d2", 5, T0 + 2 * S) is None
    assert claim_job(store, "no-such-job", "d2", 5, T0) is None
    (att,) = attempts(store, jid)
    assert (att.n, att.owner, att.started_at, att.finished_at) == (1, "d1", T0 + S, None)


def test_daemons_claiming_at_once_respect_cas_and_concurrency(
        store: Store, store_url: str) -> None:
    other = Store(store_url)
    try:
        for n in range(10):
            jid = queued(store, at=T0 + n * M)
            results = race(store, other, lambda s, jid=jid, n=n: claim_job(s, 
                jid, f"d{id(s)}", 100, T0 + n * M))
            assert len([r for r in results if r is not None]) == 1, results
            assert len(attempts(store, jid)) == 1
        # two different jobs of a rule with concurrency 1, claimed at once: one runs
        for n in range(10):
            a, b = queued(store, "c", f"a{n}"), queued(store, "c", f"b{n}")
            results = race(store, other, lambda s, a=a, b=b: claim_job(s, 
                a if s is store else b, "d", 1, T0))
            assert len([r for r in results if r is not None]) == 1, results
            (running,) = [r for r in results if r is not None]
            # the loser stays queued; finishing the winner frees the rule for the next round
            loser = q.job(store, b if running.id == a else a)
            assert loser is not None and loser.status == JobStatus.QUEUED
            assert store.finish_attempt(running.id, "d", JobStatus.SUCCEEDED, T0, attempt=1)
    finally:
        other.close()


def test_claim_respects_the_rules_concurrency(store: Store) -> None:
    first, second = queued(store, "r", "a"), queued(store, "r", "b")
    elsewhere = queued(store, "q")
    assert claim_job(store, first, "d1", 1, T0) is not None
    assert claim_job(store, second, "d1", 1, T0) is None
    assert q.job(store, second).status == JobStatus.QUEUED  # type: ignore[union-attr]
    assert claim_job(store, elsewhere, "d1", 1, T0) is not None
    assert claim_job(store, second, "d1", 2, T0) is not None   # a higher limit lets it run
    # when the running one finishes, the slot is free again
    third = queued(store, "r", "c")
    assert claim_job(store, third, "d1", 2, T0) is None
    assert store.finish_attempt(first, "d1", JobStatus.SUCCEEDED, T0 + M, attempt=1)
    assert claim_job(store, third, "d1", 2, T0 + M) is not None


def test_finish_attempt_succeeded(store: Store) -> None:
    jid = queued(store, "r", "g")
    claim_job(store, jid, "d1", 1, T0 + S)
    store.set_external_id(jid, "d1", 1, "airflow-run-42")
    assert q.job(store, jid).external_id == "airflow-run-42"  # type: ignore[union-attr]

    assert store.finish_attempt(jid, "d1", JobStatus.SUCCEEDED, T0 + M, attempt=1, exit_code=0,
                                detail="trained")
    job = q.job(store, jid)
    assert job is not None
    assert (job.status, job.finished_at, job.exit_code, job.detail) == (
        JobStatus.SUCCEEDED, T0 + M, 0, "trained")
    assert job.external_id == "airflow-run-42"
    # the periodic floor counts from the trigger whose job succeeded, not from the job's end
    assert store.group_states()[("r", "g")].last_success_at == job.created_at == T0
    (att,) = attempts(store, jid)
    assert (att.finished_at, att.outcome, att.exit_code, att.detail) == (
        T0 + M, "succeeded", 0, "trained")
    assert q.active_jobs(store) == []
    # finishing twice is refused
    assert not store.finish_attempt(jid, "d1", JobStatus.FAILED, T0 + H, attempt=1)
    assert q.job(store, jid).status == JobStatus.SUCCEEDED  # type: ignore[union-attr]


def test_finish_attempt_by_another_owner_is_refused(store: Store) -> None:
    jid = queued(store)
    # not running yet
    assert not store.finish_attempt(jid, "d1", JobStatus.SUCCEEDED, T0, attempt=1)
    claim_job(store, jid, "d1", 1, T0)
    assert not store.finish_attempt(jid, "d2", JobStatus.SUCCEEDED, T0 + M, attempt=1)
    assert not store.finish_attempt("no-such-job", "d1", JobStatus.SUCCEEDED, T0 + M,
                                    attempt=1)
    job = q.job(store, jid)
    assert job is not None and job.status == JobStatus.RUNNING and job.finished_at is None
    assert attempts(store, jid)[0].finished_at is None
    assert store.finish_attempt(jid, "d1", JobStatus.FAILED, T0 + M, attempt=1, exit_code=3,
                                external_id="pid-77")
    job = q.job(store, jid)
    assert job is not None
    assert (job.status, job.exit_code, job.external_id, job.finished_at) == (
        JobStatus.FAILED, 3, "pid-77", T0 + M)
    assert store.group_states()[("r", "")].last_success_at is None


def test_a_taken_over_claim_writes_nothing_even_when_its_owner_claims_again(
        store: Store) -> None:
    """Fencing: daemon d1 claims attempt 1, is paused past the takeover cutoff, d2 gives the
    job back (recover_jobs) and d1 itself, awake again, claims attempt 2. What d1's first
    attempt then writes (its outcome, its external id) must not land on attempt 2: every
    write carries the claim it was made under (owner and attempt number)."""
    jid = queued(store)
    store.register_daemon("d1", T0)
    store.register_daemon("d2", T0)
    assert claim_job(store, jid, "d1", 1, T0) is not None
    assert store.holds(jid, "d1", 1)
    store.heartbeat("d2", T0 + H)  # d1 silent for an hour: dead to d2
    store.recover_jobs("d2", T0 + H - M, T0 + H)
    assert not store.holds(jid, "d1", 1)
    assert not store.finish_attempt(jid, "d1", JobStatus.SUCCEEDED, T0 + H, attempt=1)
    again = claim_job(store, jid, "d1", 1, T0 + H)
    assert again is not None and again.attempts == 2
    # the stale attempt 1 wakes and reports: refused, nothing written
    assert not store.set_external_id(jid, "d1", 1, "stale-run")
    assert not store.finish_attempt(jid, "d1", JobStatus.FAILED, T0 + H + M, attempt=1,
                                    detail="stale")
    job = q.job(store, jid)
    assert job is not None
    assert (job.status, job.attempts, job.external_id) == (JobStatus.RUNNING, 2, None)
    assert job.detail != "stale" and attempts(store, jid)[1].finished_at is None
    # the current claim writes as usual
    assert store.set_external_id(jid, "d1", 2, "run-2")
    assert store.finish_attempt(jid, "d1", JobStatus.SUCCEEDED, T0 + H + M, attempt=2)
    assert [(a.n, a.outcome) for a in attempts(store, jid)] == [
        (1, "interrupted"), (2, "succeeded")]


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_takeover_never_undoes_a_newer_claim_made_while_it_looked(
        store: Store, store_url: str) -> None:
    """Two replicas find the same dead daemon's running job. Replica A reads it as orphaned;
    before A gives it back, replica B has already given it back and claimed it again
    (attempt 2, B alive). A's give-back must not touch B's claim (it would fence B's
    attempt out and run the job once more): it is made under the claim A saw (owner and
    attempt), so it changes nothing, and A does not report the job as taken over.
    PostgreSQL only: on SQLite one daemon holds the store, and its write lock would keep B
    out of A's transaction anyway."""
    from sqlalchemy import event

    jid = queued(store)
    for d in ("dead", "a", "b"):
        store.register_daemon(d, T0)
    assert claim_job(store, jid, "dead", 1, T0) is not None
    now = T0 + H
    store.heartbeat("a", now)
    store.heartbeat("b", now)
    replica_b = Store(store_url)
    interleaved = []

    def b_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not interleaved and statement.lstrip().upper().startswith("UPDATE JOBS"):
            interleaved.append(True)  # A has read the orphan and is about to give it back
            assert replica_b.recover_jobs("b", now - M, now)[0].taken_over
            assert claim_job(replica_b, jid, "b", 1, now) is not None

    event.listen(store.engine, "before_cursor_execute", b_first)
    try:
        found = store.recover_jobs("a", now - M, now)
    finally:
        event.remove(store.engine, "before_cursor_execute", b_first)
        replica_b.close()
    assert interleaved
    assert [r for r in found if r.job_id == jid] == []  # running again: not A's to dispatch
    job = q.job(store, jid)
    assert job is not None
    assert (job.status, job.attempts) == (JobStatus.RUNNING, 2)
    assert store.holds(jid, "b", 2)  # B's claim stands
    assert [(a.n, a.outcome) for a in attempts(store, jid)] == [(1, "interrupted"), (2, None)]


def test_retrying_job_waits_for_next_attempt_at(store: Store) -> None:
    jid = queued(store)
    claim_job(store, jid, "d1", 1, T0)
    retry_at = T0 + 10 * M
    assert store.finish_attempt(jid, "d1", JobStatus.RETRYING, T0 + M, attempt=1, exit_code=1,
                                detail="connection refused", next_attempt_at=retry_at)
    job = q.job(store, jid)
    assert job is not None
    assert (job.status, job.next_attempt_at, job.finished_at) == (
        JobStatus.RETRYING, retry_at, None)

    assert claim_job(store, jid, "d1", 1, retry_at - S) is None
    again = claim_job(store, jid, "d1", 1, retry_at)
    assert again is not None
    assert (again.status, again.attempts, again.next_attempt_at) == (JobStatus.RUNNING, 2, None)
    assert again.started_at == T0   # the job started with its first attempt
    assert store.finish_attempt(jid, "d1", JobStatus.SUCCEEDED, retry_at + M, attempt=2)

    att = attempts(store, jid)
    assert [(a.n, a.outcome, a.exit_code, a.detail) for a in att] == [
        (1, "retrying", 1, "connection refused"), (2, "succeeded", None, None)]
    assert [(a.started_at, a.finished_at) for a in att] == [
        (T0, T0 + M), (retry_at, retry_at + M)]


def test_trigger_context_lists_the_consumed_events_in_order(store: Store) -> None:
    ingest(store, item(ev("late", T0 + 2 * S, payload={"n": 2}), ("r", "")),
           item(ev("early", T0, payload={"n": 0, "tags": ["a"]}), ("r", "")),
           item(ev("mid", T0 + S, payload={"n": 1}), ("r", "")),
           item(ev("elsewhere", T0), ("q", "")))
    trig = fire(store, "r", at=T0 + M, reason="3 new events", kind="events")

    ctx = trigger_context(store, trig.id)
    assert ctx is not None
    got, events = ctx
    assert got == trig
    assert [e["subject"] for e in events] == ["/data/early", "/data/mid", "/data/late"]
    assert [e["payload"]["n"] for e in events] == [0, 1, 2]
    assert events[0]["payload"]["tags"] == ["a"]
    assert events[0]["observed_at"] == T0.isoformat()
    assert events[0]["id"] == ev("early").id and events[0]["source"] == "src"
    assert trigger_context(store, "no-such-job") is None


# -- recovery after restart -----------------------------------------------------------------------
def test_recover_jobs_resumes_queued_retrying_and_orphaned_jobs(store: Store) -> None:
    now = T0 + D
    stale_before = now - 3 * M
    store.register_daemon("dead", T0)                  # last heartbeat long ago
    store.register_daemon("stopped", T0)
    store.register_daemon("alive", T0)
    store.heartbeat("alive", now - M)
    store.heartbeat("stopped", now - M)
    store.daemon_stopped("stopped", now - M)

    q_ = queued(store, "r", "q", T0)
    retry = queued(store, "r", "retry", T0 + 1 * S)
    claim_job(store, retry, "dead", 9, T0)
    store.finish_attempt(retry, "dead", JobStatus.RETRYING, T0, attempt=1,
                         next_attempt_at=now + H)
    orphan = queued(store, "r", "orphan", T0 + 2 * S)
    claim_job(store, orphan, "dead", 9, T0)
    exhausted = queued(store, "r", "exhausted", T0 + 3 * S, max_attempts=1)
    claim_job(store, exhausted, "dead", 9, T0)
    of_stopped = queued(store, "r", "stopped", T0 + 4 * S)
    claim_job(store, of_stopped, "stopped", 9, T0)
    live = queued(store, "r", "live", T0 + 5 * S)
    claim_job(store, live, "alive", 9, T0)
    done = queued(store, "r", "done", T0 + 6 * S)
    claim_job(store, done, "dead", 9, T0)
    store.finish_attempt(done, "dead", JobStatus.SUCCEEDED, T0 + M, attempt=1)

    mine = queued(store, "r", "mine", T0 + 7 * S)
    claim_job(store, mine, "me", 9, T0)  # a periodic recovery never touches its own jobs

    found = store.recover_jobs("me", stale_before, now)
    ids = [r.job_id for r in found]

    assert ids == [q_, retry, orphan, exhausted, of_stopped]
    assert {r.job_id: r.not_before for r in found}[retry] == now + H  # keeps its not-before
    # taken over: the running attempts this call gave back (what the daemon logs as such)
    assert [r.job_id for r in found if r.taken_over] == [orphan, exhausted, of_stopped]
    again_found = store.recover_jobs("me", stale_before, now)   # idempotent; taken once
    assert again_found == [r._replace(taken_over=False) for r in found]
    assert q.job(store, mine).status == JobStatus.RUNNING  # type: ignore[union-attr]
    job = q.job(store, orphan)
    assert job is not None
    assert (job.status, job.attempts) == (JobStatus.RETRYING, 1)
    assert job.detail and "interrupted" in job.detail
    (att,) = attempts(store, orphan)
    assert (att.outcome, att.finished_at) == ("interrupted", now)
    # a crash gives the interrupted attempt back: even a single-attempt job is resumed
    given_back = q.job(store, exhausted)
    assert given_back is not None
    assert (given_back.status, given_back.attempts, given_back.max_attempts) == \
        (JobStatus.RETRYING, 1, 2)
    assert q.job(store, live).status == JobStatus.RUNNING  # type: ignore[union-attr]
    assert q.job(store, done).status == JobStatus.SUCCEEDED  # type: ignore[union-attr]
    # the recovered job can be claimed again by the new daemon
    again = claim_job(store, orphan, "me", 9, now)
    assert again is not None and again.attempts == 2
    assert [a.n for a in attempts(store, orphan)] == [1, 2]


def test_a_job_that_keeps_crashing_its_daemon_fails_when_its_attempts_run_out(
        store: Store) -> None:
    """Interruptions are given back only MAX_INTERRUPTED times: a job whose attempt takes the
    daemon down every time must not loop forever."""
    from triggerd.store.sql import MAX_INTERRUPTED

    job = queued(store, "r", "crashy", T0, max_attempts=1)
    now = T0
    for n in range(1, MAX_INTERRUPTED + 2):
        now += M
        store.register_daemon(f"d{n}", now)
        assert claim_job(store, job, f"d{n}", 9, now) is not None
        found = store.recover_jobs("me", now - 3 * M, now, exclusive=True)
        state = q.job(store, job)
        assert state is not None
        if n <= MAX_INTERRUPTED:
            assert found == [(job, None, True)] and state.status == JobStatus.RETRYING
        else:
            assert found == [] and (state.status, state.finished_at) == (JobStatus.FAILED, now)
            assert state.detail and "no attempts left" in state.detail
            assert state.attempts == MAX_INTERRUPTED + 1


def test_clean_stops_never_use_up_a_jobs_attempts(store: Store) -> None:
    """Deploys (SIGTERM) during a long job: each restart resumes it, however many."""
    from triggerd.store.sql import MAX_INTERRUPTED

    job = queued(store, "r", "long", T0, max_attempts=1)
    now = T0
    for n in range(MAX_INTERRUPTED + 2):
        now += M
        store.register_daemon(f"d{n}", now)
        assert claim_job(store, job, f"d{n}", 9, now) is not None
        store.daemon_stopped(f"d{n}", now)
        assert store.recover_jobs("me", now - 3 * M, now) == [(job, None, True)]
    assert {a.outcome for a in attempts(store, job)} == {"stopped"}


def test_recover_jobs_exclusive_treats_every_other_daemon_as_gone(store: Store) -> None:
    """On SQLite the daemon lock proves no other daemon lives: a job of a daemon killed a
    moment ago (fresh heartbeat) is recovered at once instead of after the heartbeat ages."""
    now = T0 + M
    store.register_daemon("killed", now)
    job = queued(store, "r", "x", T0)
    claim_job(store, job, "killed", 9, T0)
    assert store.recover_jobs("me", now - 3 * M, now) == []
    assert store.recover_jobs("me", now - 3 * M, now, exclusive=True) == [(job, None, True)]


# -- CLI requests ---------------------------------------------------------------------------------
def test_requests_are_taken_once_and_answered(store: Store) -> None:
    r1 = store.add_request("fire", "r", {"params": {"lr": 0.1}, "by": "ålice"}, T0)
    r2 = store.add_request("pause", "q", {}, T0 + S)
    assert r2 != r1
    assert q.request_result(store, r1) == (None, None)

    taken = store.take_requests("d1", T0 + M)
    assert taken == [(r1, "fire", "r", {"params": {"lr": 0.1}, "by": "ålice"}),
                     (r2, "pause", "q", {})]
    assert store.take_requests("d1", T0 + M) == []
    assert store.take_requests("d2", T0 + M) == []

    store.finish_request(r1, "fired trigger r.1")
    assert q.request_result(store, r1) == (T0 + M, "fired trigger r.1")
    handled, result = q.request_result(store, r2)
    assert handled == T0 + M and result is None
    assert q.request_result(store, 999) == (None, None)
    r3 = store.add_request("fire", "r", {}, T0 + H)
    assert [r[0] for r in store.take_requests("d2", T0 + H)] == [r3]


def test_two_daemons_taking_requests_at_once_take_each_once(
        store: Store, store_url: str) -> None:
    other = Store(store_url)
    try:
        ids = {store.add_request("fire", "r", {"n": n}, T0) for n in range(20)}
        results = race(store, other, lambda s: s.take_requests(f"d{id(s)}", T0 + M))
    finally:
        other.close()
    taken = [r[0] for batch in results for r in batch]
    assert sorted(taken) == sorted(ids)


# -- pause, slots, checkpoints, health ------------------------------------------------------------
def test_pause_flags(store: Store) -> None:
    assert rule_flags(store) == {}
    store.ensure_rules(["r", "q"], ["q"], T0)
    assert rule_flags(store)["r"].is_paused(T0) is False

    store.set_paused("r", True, T0 + H, "data migration", T0)
    flags = rule_flags(store)["r"]
    assert (flags.paused, flags.paused_until, flags.paused_reason) == (
        True, T0 + H, "data migration")
    assert flags.is_paused(T0 + H - S)
    assert not flags.is_paused(T0 + H)
    assert not rule_flags(store)["q"].paused

    store.set_paused("unknown-yet", True, None, None, T0)   # creates the rule row
    assert rule_flags(store)["unknown-yet"].is_paused(T0 + 1000 * D)

    store.set_paused("r", False, T0 + D, "ignored", T0 + M)
    flags = rule_flags(store)["r"]
    assert (flags.paused, flags.paused_until, flags.paused_reason) == (False, None, None)
    assert not flags.is_paused(T0)
    # ensure_rules again keeps the flags
    store.ensure_rules(["unknown-yet"], [], T0)
    assert rule_flags(store)["unknown-yet"].paused
    assert store.group_states(["q"])[("q", "")].seq == 0


def test_claim_slot_once_per_key_and_slot(store: Store) -> None:
    assert store.last_slot("rule:r") is None
    assert store.claim_slot("rule:r", T0, T0 + S)
    assert not store.claim_slot("rule:r", T0, T0 + 2 * S)
    assert store.claim_slot("rule:q", T0, T0 + S)
    assert store.claim_slot("rule:r", T0 + D, T0 + D)
    assert store.claim_slot("rule:r", T0 + H, T0 + D)   # out of order: last_slot is the max
    assert store.last_slot("rule:r") == T0 + D
    assert store.last_slot("rule:q") == T0


def test_checkpoints_and_source_health_round_trip(store: Store) -> None:
    assert store.load_checkpoint("kafka") is None
    data = {"offsets": {"metrics:0": 41, "metrics:1": 7}, "last_slot": T0.isoformat(),
            "files": ["/data/ä.parquet"]}
    store.save_checkpoint("kafka", "kafka", data, T0)
    assert store.load_checkpoint("kafka") == data
    store.save_checkpoint("kafka", "kafka", {"offsets": {}}, T0 + M)
    assert store.load_checkpoint("kafka") == {"offsets": {}}
    # a checkpoint does not touch the counters, ingest does not touch the checkpoint
    ingest(store, item(ev("a", source="kafka")), source="kafka")
    assert store.load_checkpoint("kafka") == {"offsets": {}}
    assert q.sources(store)["kafka"]["events"] == 1

    # source health
    store.set_source_health("lake", "filesystem", False, "permission denied: /data", T0,
                            errors=2)
    src = q.sources(store)["lake"]
    assert (src["healthy"], src["error"], src["errors"]) == (False, "permission denied: /data", 2)
    store.set_source_health("lake", "filesystem", False, "still denied", T0 + M, errors=1)
    assert q.sources(store)["lake"]["errors"] == 3
    store.set_source_health("lake", "filesystem", True, None, T0 + H)
    src = q.sources(store)["lake"]
    assert (src["healthy"], src["error"], src["errors"]) == (True, None, 3)


# -- retention ------------------------------------------------------------------------------------
def test_prune_deletes_old_history_and_keeps_what_is_still_needed(store: Store) -> None:
    cutoff = T0 + 30 * D
    # old and done: consumed events, trigger, succeeded job, attempts
    add(store, "done", "", "d1", "d2", at=T0)
    done = fire(store, "done", at=T0 + H)
    claim_job(store, done.id, "d", 9, T0 + H)
    store.finish_attempt(done.id, "d", JobStatus.SUCCEEDED, T0 + 2 * H, attempt=1)
    # old but still pending
    add(store, "waiting", "", "p1", at=T0)
    # old trigger whose job is still queued / running
    add(store, "slow", "", "s1", at=T0)
    slow = fire(store, "slow", at=T0 + H)
    add(store, "busy", "", "b1", at=T0)
    busy = fire(store, "busy", at=T0 + H)
    claim_job(store, busy.id, "d", 9, T0 + H)
    # an old event consumed by one rule and still pending for another
    ingest(store, item(ev("shared", T0), ("done", ""), ("waiting", "")))
    shared_done = fire(store, "done", at=T0 + 2 * H)
    claim_job(store, shared_done.id, "d", 9, T0 + 2 * H)
    store.finish_attempt(shared_done.id, "d", JobStatus.CANCELLED, T0 + 3 * H,
                         attempt=1)
    # recent history
    add(store, "done", "", "n1", at=cutoff + D)
    recent = fire(store, "done", at=cutoff + D)
    claim_job(store, recent.id, "d", 9, cutoff + D)
    store.finish_attempt(recent.id, "d", JobStatus.FAILED, cutoff + D, attempt=1)
    # requests: old handled, old open, recent handled
    old_req = store.add_request("fire", "done", {}, T0)
    store.take_requests("d", T0)
    open_req = store.add_request("fire", "done", {}, T0 + S)
    new_req = store.add_request("fire", "done", {}, cutoff + D)
    with store.write() as c:
        c.execute(t.requests.update().where(t.requests.c.id == new_req)
                  .values(handled_at=cutoff + D, handled_by="d"))

    # scheduled slots: old ones go, but the last one of each schedule is what start-up
    # compares with to catch up a check missed while down, so it stays
    for slot in (T0, T0 + 7 * D, T0 + 14 * D):
        store.claim_slot("rule:weekly", slot, slot)
    store.claim_slot("rule:daily", T0 + 29 * D, T0 + 29 * D)
    store.claim_slot("rule:daily", cutoff + D, cutoff + D)

    removed = store.prune(cutoff)

    assert store.last_slot("rule:weekly") == T0 + 14 * D
    assert store.last_slot("rule:daily") == cutoff + D
    assert count(store, t.slots) == 2
    assert removed > 0
    event_fps = {r.fingerprint for r in rows(store, t.events)}
    assert event_fps == {"p1", "s1", "b1", "shared", "n1"}
    trig_ids = {r.id for r in rows(store, t.triggers)}
    assert trig_ids == {slow.id, busy.id, recent.id}
    assert done.id not in trig_ids and shared_done.id not in trig_ids
    assert {r.id for r in rows(store, t.jobs)} == {slow.id, busy.id, recent.id}
    assert {r.job_id for r in rows(store, t.job_attempts)} == {busy.id, recent.id}
    assert {r.id for r in rows(store, t.requests)} == {open_req, new_req}
    assert old_req not in {r.id for r in rows(store, t.requests)}
    # what is kept still works
    assert store.pending()[("waiting", "")].count == 2
    ctx = trigger_context(store, slow.id)
    assert ctx is not None and [e["subject"] for e in ctx[1]] == ["/data/s1"]
    assert claim_job(store, slow.id, "d", 9, cutoff + 2 * D) is not None
    # a kept event is still recognised as a duplicate
    assert ingest(store, item(ev("p1")), now=cutoff + 2 * D).duplicates == 1
    # pruning again removes nothing more
    assert store.prune(cutoff) == 0


def test_prune_keeps_the_tables_bounded(store: Store) -> None:
    retention = 3 * D
    sizes = []
    for day in range(9):
        now = T0 + day * D
        add(store, "r", "", *(f"e{day}-{i}" for i in range(4)), at=now)
        ingest(store, report(f"m{day}", now, True, rule="psi"), now=now)
        trig = fire(store, "r", at=now + H)
        psi = fire(store, "psi", at=now + H)
        for jid in (trig.id, psi.id):
            assert claim_job(store, jid, "d", 9, now + H) is not None
            store.finish_attempt(jid, "d", JobStatus.SUCCEEDED, now + 2 * H, attempt=1)
        rid = store.add_request("fire", "r", {}, now)
        store.take_requests("d", now)
        store.finish_request(rid, "ok")
        store.claim_slot("rule:r", now, now)
        store.prune(now + 2 * H - retention)
        sizes.append(counts(store))

    # after the warm-up every table stays the same size
    assert all(s == sizes[3] for s in sizes[3:]), sizes
    final = sizes[-1]
    assert final["events"] == 3 * 5
    assert final["triggers"] == 3 * 2
    assert final["jobs"] == final["triggers"] and final["job_attempts"] == final["triggers"]
    assert final["requests"] <= 3 and final["slots"] <= 3
    assert final["rule_groups"] == 2


def test_prune_reads_the_memberships_once_not_once_per_old_event(store: Store) -> None:
    """Pruning old events keeps those still in a membership. Asked per old event (a
    correlated NOT EXISTS: rule_events has no index by event id), SQLite scanned every
    membership for each old event: 4,000 old events beside 400,000 pending memberships held
    the store's one write lock for 84 s (the daemon's ingest, dispatch and heartbeat with
    it; now 0.13 s). The plan of the statement prune runs must join the memberships once."""
    from sqlalchemy import event

    add(store, "r", "", "kept", at=T0)
    ingest(store, item(ev("orphan", T0)), now=T0)  # an event no rule took: prunable
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM EVENTS"):
            seen.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        assert store.prune(T0 + D) == 1
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    assert count(store, t.events) == 1
    ((statement, params),) = seen
    explain = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
    with store.read() as c:
        plan = "\n".join(str(row) for row in c.exec_driver_sql(explain + statement, params))
    assert "CORRELATED" not in plan and "SubPlan" not in plan, plan


# -- queries (the CLI) ----------------------------------------------------------------------------
def test_list_events_filters_and_orders_newest_first(store: Store) -> None:
    ingest(store, item(ev("a", T0), ("r", "")), item(ev("b", T0 + 2 * M), ("q", "")),
           item(ev("c", T0 + M), ("r", ""), ("q", "")), source="src")
    ingest(store, item(ev("d", T0 + 3 * M, source="other"), ("q", "")), source="other")

    def subjects(**kw: Any) -> list[str]:
        return [e["fingerprint"] for e in q.list_events(store, **kw)]

    assert subjects() == ["d", "b", "c", "a"]
    assert subjects(rule="r") == ["c", "a"]
    assert subjects(rule="q") == ["d", "b", "c"]
    assert subjects(source="src") == ["b", "c", "a"]
    assert subjects(rule="q", source="src") == ["b", "c"]
    assert subjects(since=T0 + M) == ["d", "b", "c"]
    assert subjects(since=T0 + M + S) == ["d", "b"]
    assert subjects(limit=2) == ["d", "b"]
    assert subjects(rule="nope") == []
    # consumed events are still listed for their rule
    fire(store, "r")
    assert subjects(rule="r") == ["c", "a"]
    first = q.list_events(store, limit=1)[0]
    assert first["observed_at"] == (T0 + 3 * M).isoformat() and first["source"] == "other"


def test_list_triggers_filters_and_orders_newest_first(store: Store) -> None:
    a1 = fire(store, "a", at=T0)
    b1 = fire(store, "b", at=T0 + M)
    a2 = fire(store, "a", at=T0 + 2 * M)
    a3 = fire(store, "a", "g", at=T0 + 2 * M)

    def ids(**kw: Any) -> list[str]:
        return [tr.id for tr in q.list_triggers(store, **kw)]

    # newest first; at the same instant the later sequence number first
    assert ids() == [a2.id, a3.id, b1.id, a1.id]
    assert ids(rule="b") == [b1.id]
    assert ids(rule="a") == [a2.id, a3.id, a1.id]
    assert ids(since=T0 + M) == [a2.id, a3.id, b1.id]
    assert ids(rule="a", since=T0 + M) == [a2.id, a3.id]
    assert ids(limit=2) == [a2.id, a3.id]
    assert q.list_triggers(store, rule="b") == [b1]
    counts_ = q.trigger_counts(store)
    assert counts_ == {"a": (3, T0 + 2 * M), "b": (1, T0 + M)}
    assert q.last_trigger_times(store) == {"a": T0 + 2 * M, "b": T0 + M}


def test_list_jobs_filters_and_orders_newest_first(store: Store) -> None:
    a1 = queued(store, "a", at=T0)
    b1 = queued(store, "b", at=T0 + M)
    a2 = queued(store, "a", at=T0 + 2 * M)
    claim_job(store, a1, "d", 9, T0 + 3 * M)
    store.finish_attempt(a1, "d", JobStatus.FAILED, T0 + 4 * M, attempt=1, exit_code=2)

    def ids(**kw: Any) -> list[str]:
        return [j.id for j in q.list_jobs(store, **kw)]

    assert ids() == [a2, b1, a1]
    assert ids(rule="a") == [a2, a1]
    assert ids(status="failed") == [a1]
    assert ids(status="queued") == [a2, b1]
    assert ids(rule="b", status="failed") == []
    assert ids(limit=1) == [a2]
    (failed,) = q.list_jobs(store, status="failed")
    assert (failed.exit_code, failed.attempts) == (2, 1)


# -- time -----------------------------------------------------------------------------------------
def test_datetimes_come_back_timezone_aware_utc(store: Store) -> None:
    paris = timezone(timedelta(hours=1))
    local = datetime(2026, 1, 1, 13, 30, tzinfo=paris)     # 12:30 UTC
    store.register_daemon("d", local)
    ingest(store, item(ev("a", local), ("r", "")), report("m", local, True, rule="psi"),
           now=local)
    pend = store.pending()[("r", "")]
    trig = fire(store, "r", at=local)
    claim_job(store, trig.id, "d", 1, local)
    store.finish_attempt(trig.id, "d", JobStatus.RETRYING, local, attempt=1,
                         next_attempt_at=local + H)
    store.set_paused("r", True, local + H, None, local)
    store.claim_slot("rule:r", local, local)
    rid = store.add_request("fire", "r", {}, local)
    store.take_requests("d", local)

    utc = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
    assert trig.fired_at == utc   # echoed from the caller; the same instant
    values: list[datetime | None] = [pend.first_at, pend.last_at]
    job = q.job(store, trig.id)
    assert job is not None
    values += [job.created_at, job.started_at, job.next_attempt_at]
    gs = store.group_states()
    values += [gs[("r", "")].created_at, gs[("r", "")].last_trigger_at,
               gs[("psi", "")].sustained_since]
    values += [rule_flags(store)["r"].paused_until, store.last_slot("rule:r"),
               q.sources(store)["src"]["last_event_at"], q.request_result(store, rid)[0],
               q.list_triggers(store)[0].fired_at, q.list_jobs(store)[0].created_at]
    daemon = q.latest_daemon(store)
    assert daemon is not None
    values += [daemon["started_at"], daemon["heartbeat_at"]]
    for value in values:
        assert value is not None and is_utc(value), value
        assert value.tzinfo == UTC
        assert value in (utc, utc + H)
    assert q.list_events(store)[0]["observed_at"] == "2026-01-01T12:30:00+00:00"
    ctx = trigger_context(store, trig.id)
    assert ctx is not None and ctx[1][0]["observed_at"] == "2026-01-01T12:30:00+00:00"
    # comparisons use the instant, not the wall clock of the caller's zone
    assert len(q.list_events(store, since=datetime(2026, 1, 1, 7, 30,
                                                   tzinfo=timezone(timedelta(hours=-5))))) == 2
    assert q.list_events(store, since=utc + S) == []
    # a naive datetime is refused rather than guessed
    with pytest.raises(StatementError, match="naive datetime"):
        store.claim_slot("rule:naive", datetime(2026, 1, 1), T0)
    assert store.last_slot("rule:naive") is None


def test_requests_of_a_dead_daemon_are_given_back(store: Store) -> None:
    now = T0 + D
    store.register_daemon("dead", T0)
    store.register_daemon("alive", now)
    r1 = store.add_request("fire", "r", {}, T0)
    r2 = store.add_request("fire", "r", {}, T0)
    assert [x[0] for x in store.take_requests("dead", T0)] == [r1, r2]
    store.finish_request(r1, "fired r.1")  # answered: stays handled
    assert store.requeue_requests("me", now - 3 * M) == 1
    assert [x[0] for x in store.take_requests("alive", now)] == [r2]
    assert store.requeue_requests("me", now - 3 * M) == 0  # alive's request is left alone
    assert store.requeue_requests("me", now - 3 * M, exclusive=True) == 1


def test_a_nul_in_a_detail_or_external_id_is_stored_escaped(store: Store) -> None:
    """A command may print NUL, a server may answer with one; PostgreSQL text refuses it (found
    in review: the outcome could not be recorded and the job stayed `running`)."""
    jid = queued(store)
    claim_job(store, jid, "d1", 1, T0)
    store.set_external_id(jid, "d1", 1, "run\x00id")
    assert store.finish_attempt(jid, "d1", JobStatus.SUCCEEDED, T0 + M, attempt=1,
                                detail="out\x00put")
    job = q.job(store, jid)
    assert job is not None and job.status == JobStatus.SUCCEEDED
    assert (job.detail, job.external_id) == ("out\\x00put", "run\\x00id")
