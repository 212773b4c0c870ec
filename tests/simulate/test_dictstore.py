"""The replay's store in dicts (triggerd/simulate/dictstore.py) is the SQL store as far as a
simulation can tell: random timelines of every `when` policy, with groups, `on_busy`,
concurrency, failing and retried jobs, manual fires, pauses, duplicates, deletions and rules
whose `where` fails, run through the daemon's engine on each store, fire the same triggers at
the same times with the same events and reasons, give the same `explain` verdicts and job
outcomes, and leave the same state behind."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from simtest import config_from_text

from triggerd.config.loader import Config
from triggerd.model import Event, JobStatus
from triggerd.simulate.dictstore import DictStore
from triggerd.simulate.driver import Simulation, Timeline
from triggerd.simulate.history import Arrival
from triggerd.simulate.memstore import fresh_store
from triggerd.simulate.replay import JobPlans, RunResult, Variant, run_variant
from triggerd.simulate.simstore import SimStore
from triggerd.simulate.spec import Input, Jobs
from triggerd.store.sql import Ingest, NewTrigger

START = datetime(2026, 11, 2, tzinfo=UTC)
POLICIES = [
    "{min_events: 3}",
    "{min_bytes: 5000}",
    "{debounce: 5m}",
    "{debounce: 2m, max_delay: 10m, min_events: 2}",
    "{min_events: 1, cooldown: 30m}",
    "{min_events: 5, at_least_every: 2h}",
    "{debounce: 10m, cooldown: 1h, at_least_every: 6h}",
    "{schedule: hourly}",
    "{schedule: '*/20 * * * *', min_events: 2}",
    "{sustained: 3}",
    "{sustained: 10m, cooldown: 20m}",
    "{min_events: 2, min_bytes: 2000, debounce: 1m}",
]
MATCHES = ["", ', match: {subject: "/data/landing/d0/**"}',
           ', match: {where: "size > 1500"}', ', match: {where: "payload.missing > 1"}']
HEAD = """
state_dir: state
sources:
  landing: {type: filesystem, paths: [/data/landing], patterns: ["**/*.parquet"], settle: 5s}
  hourly: {type: cron, schedule: "0 * * * *"}
backends:
  train: {type: command, argv: [echo]}
rules:
"""
OFFSETS = [0, 0, 1, 30, 59, 60, 61, 119, 120, 300, 600, 1800, 3600]


@st.composite
def configs(draw: st.DrawFn) -> tuple[Config, int]:
    rules = []
    n = draw(st.integers(min_value=1, max_value=4))
    for i in range(n):
        policy = draw(st.sampled_from(POLICIES))
        match = draw(st.sampled_from(MATCHES))
        group = ', group_by: "{payload.dir}"' if draw(st.booleans()) else ""
        on = "[landing, hourly]" if draw(st.integers(0, 5)) == 0 else "[landing]"
        busy = draw(st.sampled_from(["coalesce", "queue", "skip"]))
        slots = draw(st.sampled_from([1, 1, 2]))
        attempts = draw(st.sampled_from([1, 2, 3]))
        rules.append(f"  r{i}: {{on: {on}{match}, when: {policy}{group}, "
                     f"dispatch: {{backend: train, on_busy: {busy}, concurrency: {slots}, "
                     f"retry: {{attempts: {attempts}, backoff: 1m}}}}}}\n")
    return config_from_text(HEAD + "".join(rules)), n


def _file(draw: st.DrawFn) -> dict[str, Any]:
    path = f"/data/landing/d{draw(st.integers(0, 2))}/{draw(st.integers(0, 9))}" + \
        draw(st.sampled_from([".parquet", ".parquet", ".parquet", ".csv"]))
    return {"file": {"source": "landing", "path": path,
                     "kind": draw(st.sampled_from(["created", "created", "modified",
                                                   "moved", "deleted"])),
                     "size": draw(st.sampled_from([0, 1000, 4000])),
                     "content": draw(st.sampled_from([None, None, "same-bytes"]))}}


def _other(draw: st.DrawFn, rules: int) -> dict[str, Any]:
    rule = f"r{draw(st.integers(0, rules - 1))}"
    kind = draw(st.sampled_from(["fire", "job", "pause", "resume"]))
    if kind == "fire":
        return {"fire": {"rule": rule, "reason": "by hand"}}
    if kind == "job":
        return {"job": {"rule": rule,
                        "outcome": draw(st.sampled_from(["succeeded", "failed",
                                                         "failed_permanently"])),
                        "duration": draw(st.sampled_from(["0s", "45s", "10m", "2h"]))}}
    if kind == "pause":
        return {"pause": {"rule": rule, "for": draw(st.sampled_from([None, "30m"])),
                          "reason": "maintenance"}}
    return {"resume": {"rule": rule}}


@st.composite
def timelines(draw: st.DrawFn, rules: int) -> Timeline:
    inputs: list[tuple[datetime, Input]] = []
    checks: list[tuple[datetime, str, str]] = []
    at = START
    for _ in range(draw(st.integers(min_value=1, max_value=50))):
        at += timedelta(seconds=draw(st.sampled_from(OFFSETS)))
        one = _file(draw) if draw(st.integers(0, 5)) else _other(draw, rules)
        inputs.append((at, Input.model_validate({"at": at, **one})))
        if draw(st.integers(0, 6)) == 0:
            checks.append((at + timedelta(seconds=draw(st.sampled_from([0, 30, 600]))),
                           f"r{draw(st.integers(0, rules - 1))}",
                           draw(st.sampled_from(["", "d0", "d1"]))))
    return Timeline(inputs, checks, at + draw(st.sampled_from([timedelta(0),
                                                                timedelta(hours=3)])))


def _run(config: Config, store: SimStore, jobs: Jobs, timeline: Timeline, fast: bool) -> Any:
    """Everything a simulation shows, and the state it leaves in the store."""
    try:
        sim = Simulation(config, store, START, jobs, auto_ticks=True,
                         show=lambda at: at.isoformat(), batches=True, fast=fast)
        result = asyncio.run(sim.run(timeline))
        snap = store.snapshot(config.rules)
        return {
            "fired": [(f.trigger, [n.shown for n in f.events], f.job) for f in result.fired],
            "verdicts": result.verdicts,
            "notes": result.notes,
            "jobs": (sim.jobs.started, sim.jobs.ended, sim.jobs.waiting, sim.jobs.retry_at),
            "due": (sim.engine.due, sim.engine.slot_due),
            "groups": (snap.states, snap.pending, snap.flags, snap.active),
            "pending": {rule: sorted(times) for rule, times in store.pending_times().items()},
            "memberships": {t: sorted(ids) for t, ids in store.memberships().items()},
            "statuses": store.job_statuses(),
            "rejects": sorted(store.reject_errors()),
        }
    finally:
        store.close()


@given(configs(), st.data(), st.sampled_from(["0s", "45s", "20m"]),
       st.sampled_from(["succeeded", "failed"]), st.booleans())
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_the_dict_store_and_the_sql_store_decide_the_same(
        drawn: tuple[Config, int], data: st.DataObject, duration: str, outcome: str,
        fast: bool) -> None:
    config, rules = drawn
    timeline = data.draw(timelines(rules))
    jobs = Jobs.model_validate({"outcome": outcome, "duration": duration})
    on_sql = _run(config, fresh_store(), jobs, timeline, fast)
    on_dicts = _run(config, DictStore(), jobs, timeline, fast)
    assert on_dicts == on_sql


def _facts(result: RunResult) -> Any:
    return ([(f.id, f.rule, f.group, f.at, f.kind, f.reason, f.events, f.started, f.ended,
              f.status) for f in result.triggers], result.pending, result.rejected)


def test_two_replayed_days_are_the_same_on_either_store() -> None:
    """Two days of a file a minute into ten folders (some of them the same file again: a
    duplicate), through rules like the bench's per-dataset ones (bench/replay.py), with jobs
    that take 20 minutes."""
    rules = ["{min_events: 60}", "{min_events: 30, debounce: 5m, max_delay: 2h}",
             "{debounce: 10m, max_delay: 6h, cooldown: 1h}",
             "{min_events: 100, at_least_every: 1d}", "{min_events: 20, cooldown: 6h}",
             "{min_events: 1, cooldown: 12h}", "{sustained: 5}",
             "{debounce: 10m, max_delay: 2h, min_events: 50}", "{schedule: hourly}",
             "{min_events: 144, at_least_every: 12h}"]
    text = HEAD + "".join(
        f'  r{i}: {{on: [landing], match: {{subject: "/data/landing/d{i}/**"}}, '
        f'group_by: "{{payload.name}}", when: {policy}, dispatch: {{backend: train}}}}\n'
        if i == 4 else
        f'  r{i}: {{on: [landing], match: {{subject: "/data/landing/d{i}/**"}}, '
        f"when: {policy}, dispatch: {{backend: train}}}}\n" for i, policy in enumerate(rules))
    config = config_from_text(text)
    arrivals = [Arrival(START + timedelta(minutes=i), "landing",
                        f"/data/landing/d{i % 10}/f{i % 700}.parquet", "created", 1000,
                        f"v{i % 1400}") for i in range(2880)]
    until = arrivals[-1].at + timedelta(hours=1)
    plans = JobPlans(timedelta(minutes=20), {})
    variant = Variant("current", config)
    on_sql = run_variant(variant, arrivals, START, until, plans, new_store=fresh_store)
    on_dicts = run_variant(variant, arrivals, START, until, plans)
    assert len(on_sql.triggers) > 50
    assert _facts(on_dicts) == _facts(on_sql)


# -- the stores call by call ------------------------------------------------------------------

RULES = ["r0", "r1", "r2"]
GROUPS = ["", "g1", "g2"]
ZONES = [UTC, timezone(timedelta(hours=2))]


@st.composite
def moments(draw: st.DrawFn) -> datetime:
    """A time, not in order (a store takes them as given), in UTC or another zone."""
    at = START + timedelta(seconds=draw(st.integers(0, 7200)))
    return at.astimezone(draw(st.sampled_from(ZONES)))


@st.composite
def batches(draw: st.DrawFn) -> tuple[Any, ...]:
    events = []
    for _ in range(draw(st.integers(1, 5))):
        n = draw(st.integers(0, 12))  # a small range: duplicates, within and across batches
        events.append((f"f{n}", draw(st.sampled_from([0, 10, 700])), draw(moments()),
                       draw(st.lists(st.tuples(st.sampled_from(RULES), st.sampled_from(GROUPS)),
                                     max_size=2, unique_by=lambda k: k[0])),
                       draw(st.lists(st.tuples(st.sampled_from(RULES), st.sampled_from(GROUPS),
                                               st.booleans()), max_size=2)),
                       draw(st.lists(st.sampled_from(["where: no field x", "group_by: bad"]),
                                     max_size=1))))
    return ("ingest", events, draw(moments()), draw(st.sampled_from([(), RULES, ["r1"]])))


@st.composite
def operations(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["ingest", "ingest", "trigger", "trigger", "claim", "claim",
                                 "finish", "finish", "pause", "slot"]))
    if kind == "ingest":
        return draw(batches())
    if kind == "trigger":
        return ("trigger", draw(st.sampled_from(RULES)), draw(st.sampled_from(GROUPS)),
                draw(st.sampled_from([0, 0, 0, 1, -1])), draw(moments()),
                draw(st.sampled_from(["events", "floor", "schedule", "manual"])),
                draw(st.sampled_from([None, "on_busy: coalesce"])),
                draw(st.sampled_from([None, None, "skipped: busy"])),
                draw(st.sampled_from([None, 7])))
    if kind == "claim":
        return ("claim", draw(st.integers(0, 3)), draw(st.sampled_from([1, 2])), draw(moments()))
    if kind == "finish":
        return ("finish", draw(st.integers(0, 3)),
                draw(st.sampled_from(["succeeded", "failed", "retrying"])),
                draw(st.sampled_from(["me", "me", "another"])), draw(moments()),
                draw(st.sampled_from([None, START + timedelta(hours=3)])))
    if kind == "pause":
        return ("pause", draw(st.sampled_from(RULES)), draw(st.booleans()),
                draw(st.sampled_from([None, START + timedelta(hours=1)])), draw(moments()))
    return ("slot", draw(st.sampled_from(["rule:r0", "rule:r1"])), draw(moments()),
            draw(st.booleans()), draw(moments()))


def _apply(store: SimStore, op: tuple[Any, ...]) -> Any:
    """Run one operation on `store`; what it answers, and every read of the state after it."""
    kind = op[0]
    answer: Any = None
    if kind == "ingest":
        _, planned, now, rules = op
        made = [Event(source="landing", kind="created", subject=f"/data/{fp}",
                      fingerprint=fp, payload={"size": size}, observed_at=at)
                for fp, size, at, *_ in planned]
        plans = {Event(source="landing", kind="created", subject="", fingerprint=fp).id:
                 (pending, streak, errors) for fp, _s, _a, pending, streak, errors in planned}

        def classify(events: Sequence[Event]) -> list[Ingest]:
            out = []
            for ev in events:
                pending, streak, errors = plans[ev.id]
                out.append(Ingest(ev, list(pending), list(streak),
                                  [(rule, e) for (rule, _g), e in zip(pending, errors,
                                                                       strict=False)]))
            return out
        result = store.ingest("landing", "filesystem", made, now, classify, None, rules)
        answer = (result.new, result.duplicates, sorted(result.touched))
    elif kind == "trigger":
        _, rule, grp, delta, at, how, supersede, skipped, request = op
        state = store.group_states([rule]).get((rule, grp))
        answer = store.create_trigger(NewTrigger(
            rule=rule, group=grp, expected_seq=(state.seq if state else 0) + delta,
            fired_at=at, reason="why", kind=how, backend="train", params={}, max_attempts=2,
            supersede=supersede, skipped=skipped, request_id=request))
    elif kind == "claim":
        _, n, slots, now = op
        jobs = sorted(store.job_statuses())
        job = jobs[n % len(jobs)] if jobs else "none"
        answer = store.claim(job, "me", lambda _rule: slots, now, context=False)
    elif kind == "finish":
        _, n, status, owner, now, retry_at = op
        jobs = sorted(store.job_statuses())
        job = jobs[n % len(jobs)] if jobs else "none"
        answer = [store.finish_attempt(job, owner, JobStatus(status), now, attempt=attempt,
                                       detail="done", next_attempt_at=retry_at)
                  for attempt in (1, 2)]
    elif kind == "pause":
        _, rule, paused, until, now = op
        store.set_paused(rule, paused, until, "maintenance", now)
    else:
        _, key, slot, finish, now = op
        answer = store.claim_slot(key, slot, now)
        if finish:
            store.finish_slot(key, slot, now)
    return {
        "answer": answer,
        "snapshot": store.snapshot(RULES),
        "jobs": [store.claim(job, "reader", lambda _rule: 0, START, context=False)  # a read
                 for job in sorted(store.job_statuses())],
        "groups": store.group_states(),
        "pending": store.pending(),
        # in order: a manual fire takes a rule's groups in the order they are read
        "pending of two rules": list(store.pending(["r2", "r1"]).items()),
        "keys": [store.rule_keys(r) for r in RULES],
        "request": store.triggers_of_request(7),
        "memberships": {t: sorted(ids) for t, ids in store.memberships().items()},
        "statuses": store.job_statuses(),
        "pending times": {r: sorted(t) for r, t in store.pending_times().items()},
        "rejects": sorted(store.reject_errors()),
        "slots": [(store.last_slot(k), store.unfinished_slot(k)) for k in ("rule:r0", "rule:r1")],
    }


def _exact(value: Any) -> Any:
    """`value` to compare exactly: times with their zone (equal times in two zones are equal
    datetimes), dicts and sets in no set order."""
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__,
                [(f.name, _exact(getattr(value, f.name))) for f in fields(value)])
    if isinstance(value, dict):
        return sorted((repr(k), _exact(v)) for k, v in value.items())
    if isinstance(value, set | frozenset):
        return sorted(map(repr, value))
    if isinstance(value, list | tuple):
        return [_exact(v) for v in value]
    return value


RETRIED = [("trigger", "r0", "", 0, START, "events", None, None, None),
           ("claim", 0, 1, START + timedelta(minutes=1)),
           ("finish", 0, "retrying", "me", START + timedelta(minutes=2), None),
           ("claim", 0, 1, START + timedelta(minutes=3))]


@given(st.lists(operations(), min_size=1, max_size=30))
@example(RETRIED)  # a job claimed again keeps its first start
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_each_call_answers_the_same_on_either_store(ops: list[tuple[Any, ...]]) -> None:
    """Any sequence of the calls a simulation makes (batches with duplicates, out-of-order
    times and other time zones, triggers that lose their race or break a unique key, claims,
    attempts, pauses, scheduled slots) answers the same on both stores, and leaves the same
    state for every read."""
    sql, dicts = fresh_store(), DictStore()
    try:
        for store in (sql, dicts):
            store.ensure_rules(RULES, ["r0"], START)
        for op in ops:
            assert _exact(_apply(dicts, op)) == _exact(_apply(sql, op))
    finally:
        sql.close()
