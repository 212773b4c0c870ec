"""The engine end to end over a real store (SQLite and PostgreSQL), with a manual clock.

Time never passes by itself here: `advance` moves the clock from one due timer to the next,
exactly as the daemon's timer loop would, so hours of policy run in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from faults import fail_first
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from store_helpers import claim_job

from triggerd.clock import ManualClock
from triggerd.config.loader import Config
from triggerd.config.schema import RuleSpec
from triggerd.engine.engine import Engine
from triggerd.engine.rounds import Round
from triggerd.errors import StoreError
from triggerd.model import Event, JobStatus, Trigger
from triggerd.sources.cron import CronOptions
from triggerd.store import Store, queries
from triggerd.store import tables as t
from triggerd.store.sql import NewTrigger

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def call(fn: Callable[[], Any]) -> Any:
    return fn()


def make_config(rules: dict[str, dict[str, Any]], url: str = "sqlite://") -> Config:
    sources: dict[str, Any] = {
        "landing": CronOptions(type="cron", every="1h"),  # any source type: only names matter
        "metrics": CronOptions(type="cron", every="1h"),
        "nightly": CronOptions(type="cron", schedule="0 2 * * *"),
    }
    specs = {name: RuleSpec.model_validate({"dispatch": {"backend": "b"}, **r})
             for name, r in rules.items()}
    return Config(path=Path("x.yaml"), store_url=url, state_dir=Path("/tmp"),
                  retention=timedelta(days=30), sources=sources, backends={}, rules=specs)


class Harness:
    def __init__(self, store: Store, rules: dict[str, dict[str, Any]]) -> None:
        self.clock = ManualClock(T0)
        self.store = store
        self.fired: list[Trigger] = []
        self.engine = Engine(make_config(rules), store, self.clock, call,
                             lambda done: self.fired.extend(done.fired))
        self.n = 0
        self.done = 0

    async def start(self) -> None:
        await self.engine.start()

    def event(self, source: str = "landing", subject: str = "/data/a.parquet",
              fingerprint: str | None = None, **payload: Any) -> Event:
        self.n += 1
        return Event(source=source, kind=payload.pop("kind", "created"), subject=subject,
                     fingerprint=fingerprint or f"fp{self.n}",
                     payload={"size": 100, "path": subject, **payload},
                     observed_at=self.clock.now())

    async def submit(self, *events: Event) -> None:
        await self.engine.submit(events[0].source, list(events))
        await self.run_jobs()

    async def run_jobs(self) -> None:
        """Jobs succeed at once (as the dispatcher would report), then the rule is re-decided."""
        while self.done < len(self.fired):
            trig = self.fired[self.done]
            self.done += 1
            job = claim_job(self.store, trig.id, "test", 100, self.clock.now())
            if job is not None:
                self.store.finish_attempt(trig.id, "test", JobStatus.SUCCEEDED,
                                          self.clock.now(), attempt=job.attempts)
            await self.engine.evaluate({(trig.rule, trig.group)})

    async def advance(self, delta: timedelta) -> None:
        """Move time forward, running every timer that falls due on the way, in order."""
        target = self.clock.now() + delta
        while True:
            times = list(self.engine.due.values()) + list(self.engine.slot_due.values())
            due = min(times, default=None)
            if due is None or due > target:
                break
            self.clock.set(max(due, self.clock.now()))
            now = self.clock.now()
            for rule, slot in [(r, s) for r, s in self.engine.slot_due.items() if s <= now]:
                await self.engine.scheduled_check(rule, slot)
            keys = {k for k, v in self.engine.due.items() if v <= now}
            for k in keys:
                self.engine.due.pop(k)
            if keys:
                await self.engine.evaluate(keys)
            await self.run_jobs()
        self.clock.set(target)


async def test_batch_with_debounce_fires_once_with_all_events(store: Store) -> None:
    h = Harness(store, {"r": {"on": ["landing"], "when": {"min_events": 3, "debounce": "2m"}}})
    await h.start()
    for _ in range(5):
        await h.submit(h.event())
        await h.advance(timedelta(seconds=30))
    assert h.fired == []
    await h.advance(timedelta(minutes=2))
    assert len(h.fired) == 1
    trig = h.fired[0]
    assert trig.events == 5 and trig.reason == "5 new events (≥3), quiet for 2m"
    assert h.clock.now() - T0 >= timedelta(minutes=2, seconds=30)


async def test_duplicates_are_not_counted(store: Store) -> None:
    h = Harness(store, {"r": {"on": ["landing"], "when": {"min_events": 3}}})
    await h.start()
    await h.submit(h.event(fingerprint="same"), h.event(fingerprint="same"))
    await h.submit(h.event(fingerprint="same"))
    assert h.fired == []
    await h.submit(h.event(fingerprint="b"), h.event(fingerprint="c"))
    assert [t.events for t in h.fired] == [3]


async def test_match_kinds_subject_and_where(store: Store) -> None:
    h = Harness(store, {"r": {"on": ["landing"], "match": {
        "kinds": ["created"], "subject": "/data/churn/**", "where": "payload.size > 0"}}})
    await h.start()
    await h.submit(h.event(subject="/data/other/a.parquet"))
    await h.submit(h.event(subject="/data/churn/x/a.parquet", size=0))
    await h.submit(h.event(subject="/data/churn/x/b.parquet", kind="deleted"))
    assert h.fired == []
    await h.submit(h.event(subject="/data/churn/x/c.parquet"))
    assert len(h.fired) == 1 and h.fired[0].events == 1


async def test_group_by_gives_each_group_its_own_batch(store: Store) -> None:
    h = Harness(store, {"r": {"on": ["landing"], "group_by": "{payload.dir}",
                              "when": {"min_events": 2}}})
    await h.start()
    await h.submit(h.event(dir="a"), h.event(dir="b"))
    assert h.fired == []
    await h.submit(h.event(dir="a"))
    assert [(t.group, t.events) for t in h.fired] == [("a", 2)]
    pending = store.pending(["r"])
    assert pending[("r", "b")].count == 1


async def test_cooldown_then_pending_events_fire_when_it_ends(store: Store) -> None:
    h = Harness(store, {"r": {"on": ["landing"], "when": {"cooldown": "1h"}}})
    await h.start()
    await h.submit(h.event())
    assert len(h.fired) == 1
    await h.advance(timedelta(minutes=10))
    await h.submit(h.event(), h.event())
    assert len(h.fired) == 1
    await h.advance(timedelta(minutes=50))
    assert len(h.fired) == 2 and h.fired[1].events == 2
    assert h.fired[1].fired_at - h.fired[0].fired_at == timedelta(hours=1)


async def test_sustained_drift_needs_consecutive_matches(store: Store) -> None:
    h = Harness(store, {"drift": {"on": ["metrics"],
                                  "match": {"where": "value.score > 0.25"},
                                  "when": {"sustained": 3, "cooldown": "1d"}}})
    await h.start()

    async def report(score: float) -> None:
        await h.submit(h.event(source="metrics", subject="churn", kind="message",
                               value={"metric": "psi", "score": score}))

    for score in (0.3, 0.4, 0.1, 0.3, 0.5):  # the 0.1 breaks the streak
        await report(score)
    assert h.fired == []
    await report(0.6)
    assert len(h.fired) == 1 and "3 consecutive matches" in h.fired[0].reason
    for score in (0.3, 0.3, 0.3):  # within the cooldown: waits
        await report(score)
    assert len(h.fired) == 1


async def test_periodic_floor_fires_without_events(store: Store) -> None:
    h = Harness(store, {"r": {"on": ["landing"], "when": {"min_events": 100,
                                                          "at_least_every": "7d"}}})
    await h.start()
    await h.advance(timedelta(days=7))
    assert len(h.fired) == 1
    assert h.fired[0].reason.startswith("periodic floor")
    await h.advance(timedelta(days=1))
    assert len(h.fired) == 1


async def test_scheduled_check_fires_only_with_new_data(store: Store) -> None:
    h = Harness(store, {"r": {"on": ["landing"], "when": {"schedule": "0 2 * * *"}}})
    await h.start()
    await h.advance(timedelta(days=1))  # a 02:00 check with nothing new
    assert h.fired == []
    await h.submit(h.event())
    assert h.fired == []  # not between checks
    await h.advance(timedelta(days=1))
    assert len(h.fired) == 1 and h.fired[0].fired_at.hour == 2
    assert "scheduled check at" in h.fired[0].reason


async def test_a_rule_on_a_cron_source_fires_per_tick(store: Store) -> None:
    h = Harness(store, {"nightly-train": {"on": ["nightly"]}})
    await h.start()
    tick = h.event(source="nightly", subject="nightly", kind="tick",
                   fingerprint="nightly@2026-03-02T02:00:00+00:00")
    await h.submit(tick)
    await h.submit(tick)  # a replica or a restart emitting the same tick
    assert len(h.fired) == 1


async def test_manual_fire_ignores_cooldown_and_pause(store: Store) -> None:
    h = Harness(store, {"r": {"on": ["landing"], "when": {"cooldown": "1d"}}})
    await h.start()
    await h.submit(h.event())
    await h.submit(h.event())
    store.set_paused("r", True, None, None, h.clock.now())
    fired = await h.engine.fire("r", "manual: retrain now")
    assert len(fired) == 1 and fired[0].manual and fired[0].reason == "manual: retrain now"
    assert fired[0].events == 1  # the event that waited out the cooldown


@pytest.mark.parametrize(("on_busy", "first_left"), [
    ("coalesce", JobStatus.CANCELLED), ("queue", JobStatus.QUEUED), ("skip", JobStatus.QUEUED)])
async def test_a_manual_fire_behind_a_running_job_supersedes_a_waiting_one_under_coalesce(
        store: Store, on_busy: str, first_left: JobStatus) -> None:
    """`triggerd fire` twice while the rule's one job slot is taken: under coalesce the second
    request replaces the first one still waiting (one retrain, not two in a row); under queue
    both wait their turn; under skip a manual fire is never skipped."""
    h = Harness(store, {"r": {"on": ["landing"],
                              "dispatch": {"backend": "b", "on_busy": on_busy}}})
    await h.start()
    (running,) = await h.engine.fire("r", "manual: first")
    assert claim_job(store, running.id, "d1", 1, h.clock.now()) is not None
    (waiting,) = await h.engine.fire("r", "manual: second")
    (latest,) = await h.engine.fire("r", "manual: third")
    jobs = {j.id: j for j in queries.list_jobs(store, rule="r")}
    assert jobs[running.id].status == JobStatus.RUNNING
    assert jobs[waiting.id].status == first_left
    assert jobs[latest.id].status == JobStatus.QUEUED
    if first_left == JobStatus.CANCELLED:
        assert f"superseded by trigger {latest.id} (manual fire)" in (jobs[waiting.id].detail
                                                                      or "")


async def test_an_event_a_where_or_a_group_by_fails_on_is_rejected_under_that_name(
        store: Store) -> None:
    """`triggerd events --rejected` and the reject counts say which part of the rule failed:
    kind `where` for the expression, `group_by` for the template."""
    from triggerd.store.rejects import count_rejects

    h = Harness(store, {"w": {"on": ["landing"], "match": {"where": "payload.score > 1"}},
                        "g": {"on": ["metrics"], "group_by": "{payload.model}"}})
    await h.start()
    await h.submit(h.event())  # no payload.score
    await h.submit(h.event(source="metrics"))  # no payload.model
    assert count_rejects(store) == {"landing": {"where": 1}, "metrics": {"group_by": 1}}
    # `events --rejected --rule R`: its sources' rejects that are about R (or no rule at all)
    from triggerd.model import Reject
    from triggerd.store.rejects import list_rejects, save_rejects

    save_rejects(store, [Reject("landing", "x.csv", "not_regular", "a FIFO", None,
                                h.clock.now())])
    assert [r.kind for r in list_rejects(store, rule=("w", ["landing"]))] == [
        "not_regular", "where"]
    assert [r.kind for r in list_rejects(store, rule=("g", ["metrics"]))] == ["group_by"]
    assert list_rejects(store, rule=("g_", ["landing"])) == [r for r in list_rejects(
        store, source="landing") if not r.error.startswith("rule ")]


async def test_pause_keeps_events_pending_and_resume_fires(store: Store) -> None:
    h = Harness(store, {"r": {"on": ["landing"]}})
    await h.start()
    store.set_paused("r", True, h.clock.now() + timedelta(hours=1), "maintenance",
                     h.clock.now())
    await h.submit(h.event(), h.event())
    assert h.fired == []
    await h.advance(timedelta(hours=1))  # the pause ends by itself
    assert len(h.fired) == 1 and h.fired[0].events == 2


async def test_where_errors_count_as_no_match_and_keep_going(store: Store) -> None:
    h = Harness(store, {"r": {"on": ["metrics"], "match": {"where": "value.score > 0.25"}}})
    await h.start()
    await h.submit(h.event(source="metrics", kind="message", value={"other": 1}),
                   h.event(source="metrics", kind="message", value={"score": 0.9}))
    assert len(h.fired) == 1 and h.fired[0].events == 1
    assert h.engine.rules["r"].errors == 1


# -- properties ------------------------------------------------------------------------------
policies = st.fixed_dictionaries({}, optional={
    "min_events": st.integers(1, 4),
    "debounce": st.sampled_from(["10s", "1m", "5m"]),
    "cooldown": st.sampled_from(["30s", "2m", "1h"]),
})
arrivals = st.lists(st.tuples(st.integers(0, 400), st.integers(0, 12)), min_size=1,
                    max_size=25)


@pytest.fixture(scope="module")
def prop_store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = Store(f"sqlite:///{tmp_path_factory.mktemp('prop') / 'state.db'}")
    s.upgrade()
    yield s
    s.close()


_example = iter(range(10**9))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(when=policies, events=arrivals)
async def test_policy_properties(prop_store: Store, when: dict[str, Any],
                                 events: list[tuple[int, int]]) -> None:
    """For any policy and arrival pattern: an event is in at most one trigger, no two triggers
    are closer than the cooldown, and every pending event is consumed once the conditions can
    hold (here: after enough quiet time, if at least min_events distinct events arrived)."""
    rule = f"r{next(_example)}"
    h = Harness(prop_store, {rule: {"on": ["landing"], "when": when}})
    await h.start()
    for gap, fp in events:
        await h.advance(timedelta(seconds=gap))
        await h.submit(h.event(fingerprint=f"{rule}-{fp}"))  # small alphabet: duplicates
    await h.advance(timedelta(days=1))

    with prop_store.read() as c:
        rows = c.execute(select(t.rule_events.c.event_id, t.rule_events.c.trigger_id)
                         .where(t.rule_events.c.rule == rule)).all()
    distinct = len({fp for _, fp in events})
    assert len(rows) == distinct  # duplicates never counted
    consumed = [r for r in rows if r.trigger_id is not None]
    assert sum(tr.events for tr in h.fired) == len(consumed)  # each event in one trigger
    assert len({r.event_id for r in consumed}) == len(consumed)
    cooldown = {"30s": 30, "2m": 120, "1h": 3600}.get(when.get("cooldown", ""), 0)
    times = [tr.fired_at for tr in h.fired]
    assert all(b - a >= timedelta(seconds=cooldown) for a, b in pairwise(times))
    assert all(tr.events >= when.get("min_events", 1) for tr in h.fired)
    leftover = len(rows) - len(consumed)
    assert leftover < when.get("min_events", 1)  # liveness: nothing that could fire is left


async def test_a_store_error_after_ingest_retries_the_decision(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The events were committed, so the source will not send them again: the engine must
    still decide for them once the store answers."""
    h = Harness(store, {"r": {"on": ["landing"], "when": {"min_events": 2}}})
    await h.start()
    fail_first(monkeypatch, store, "snapshot")
    await h.submit(h.event(), h.event())
    assert h.fired == []
    await h.advance(timedelta(seconds=2))
    assert len(h.fired) == 1 and h.fired[0].events == 2


async def test_a_scheduled_check_hit_by_a_store_error_is_retried_not_skipped(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(store, {"r": {"on": ["landing"], "when": {"schedule": "0 2 * * *"}}})
    await h.start()
    await h.submit(h.event())
    fail_first(monkeypatch, store, "snapshot")
    with pytest.raises(StoreError):
        await h.advance(timedelta(hours=15))  # the 02:00 check claims its slot, then fails
    assert h.fired == []
    await h.advance(timedelta(seconds=1))  # still due, and still ours: retried at once
    assert len(h.fired) == 1 and "scheduled check at" in h.fired[0].reason


async def test_a_scheduled_check_interrupted_by_a_crash_is_redone_at_start(
        store: Store) -> None:
    h = Harness(store, {"r": {"on": ["landing"], "when": {"schedule": "0 2 * * *"}}})
    await h.start()
    await h.submit(h.event())
    slot = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    assert store.claim_slot("rule:r", slot, slot)  # claimed, then the daemon died
    h.clock.set(slot + timedelta(minutes=5))
    restarted = Harness(store, {"r": {"on": ["landing"], "when": {"schedule": "0 2 * * *"}}})
    restarted.clock.set(h.clock.now())
    await restarted.start()
    await restarted.advance(timedelta(seconds=1))
    assert len(restarted.fired) == 1
    assert f"scheduled check at {slot.isoformat()}" in restarted.fired[0].reason
    assert store.unfinished_slot("rule:r") is None


async def test_a_retried_manual_fire_request_fires_once(store: Store) -> None:
    h = Harness(store, {"r": {"on": ["landing"]}})
    await h.start()
    first = await h.engine.fire("r", "manual: now", request_id=7)
    again = await h.engine.fire("r", "manual: now", request_id=7)  # after a crash, say
    assert [t.id for t in first] == ["r.1"] and again == []
    assert store.triggers_of_request(7) == ["r.1"]
    assert [t.id for t in await h.engine.fire("r", "manual: other", request_id=8)] == ["r.2"]


class RecordingClaimer:
    """The dispatcher's side of claiming with the trigger: claims for real (on the store
    thread, in the engine's trip), records the attempts started (on the loop)."""

    def __init__(self, store: Store, clock: ManualClock) -> None:
        self.store, self.clock = store, clock
        self.started: list[str] = []

    def claim(self, done: Round) -> Round:
        return replace(done, claims={t.id: self.store.claim(t.id, "test", lambda _rule: 10,
                                                            self.clock.now())
                                     for t in done.fired})

    def claimed(self, done: Round) -> None:
        self.started += [c.job.id for c in done.claims.values() if c.job is not None]


async def test_a_job_claimed_before_a_store_error_in_the_same_round_still_starts(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two groups fire in one round; the store fails writing the second trigger. The first
    trigger's job was claimed (running, owned by this daemon) in that round: it must be
    started, or it would stay `running` with nothing running it until the daemon stops."""
    h = Harness(store, {"r": {"on": ["landing"], "group_by": "{payload.dir}",
                              "dispatch": {"backend": "b", "concurrency": 10}}})
    claimer = RecordingClaimer(store, h.clock)
    h.engine.then = claimer.claim

    def on_round(done: Round) -> None:
        claimer.claimed(done)
        h.fired.extend(done.fired)
    h.engine.on_round = on_round
    await h.start()
    real = store.create_trigger
    calls = {"n": 0}

    def second_fails(nt: NewTrigger) -> Trigger | None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise StoreError("connection refused (simulated)")
        return real(nt)
    monkeypatch.setattr(store, "create_trigger", second_fails)
    await h.engine.submit("landing", [h.event(subject="/d/a/1", dir="a"),
                                      h.event(subject="/d/b/1", dir="b")])
    assert [t.id for t in h.fired] and claimer.started == [h.fired[0].id]
    running = {j.id for j in queries.list_jobs(store) if str(j.status) == "running"}
    assert running == set(claimer.started)  # no claimed job left without an attempt
    monkeypatch.setattr(store, "create_trigger", real)
    await h.advance(timedelta(seconds=2))  # the failed group is decided again
    assert len(h.fired) == 2
