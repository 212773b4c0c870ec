"""The replay's fast lane (triggerd/simulate/lookahead.py) changes nothing but speed: on random
timelines and policies, a replay that batches arrivals (and decides the timers that fall due
meanwhile without a trip) gets exactly the triggers, events, job starts and ends, pending
events and engine timers of one that hands every arrival to the engine alone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from simtest import config_from_text

from triggerd.config.loader import Config
from triggerd.simulate.dictstore import DictStore
from triggerd.simulate.driver import Simulation, Timeline
from triggerd.simulate.history import Arrival, timeline_inputs
from triggerd.simulate.jobs import Plan
from triggerd.simulate.replay import JobPlans, RunResult, Variant, run_variant
from triggerd.simulate.spec import Jobs

START = datetime(2026, 11, 2, tzinfo=UTC)
POLICIES = [
    "{min_events: 3}",
    "{debounce: 5m}",
    "{debounce: 2m, max_delay: 10m, min_events: 2}",
    "{min_events: 1, cooldown: 30m}",
    "{min_events: 5, at_least_every: 2h}",
    "{debounce: 10m, cooldown: 1h, at_least_every: 6h}",
    "{schedule: hourly}",
    "{min_bytes: 5000, cooldown: 15m}",
    "{sustained: 2, debounce: 30s}",
    "{debounce: 1s, max_delay: 3s}",
]
HEAD = """
state_dir: state
sources:
  landing: {type: filesystem, paths: [/data/landing], patterns: ["**/*.parquet"]}
  other: {type: filesystem, paths: [/data/other]}
  hourly: {type: cron, schedule: "0 * * * *"}
backends:
  train: {type: command, argv: [echo]}
rules:
"""


@st.composite
def configs(draw: st.DrawFn) -> str:
    rules = []
    for i in range(draw(st.integers(min_value=1, max_value=4))):
        policy = draw(st.sampled_from(POLICIES))
        group = ', group_by: "{payload.dir}"' if draw(st.booleans()) else ""
        on = draw(st.sampled_from(["[landing]", "[landing]", "[landing, hourly]", "[other]",
                                   "[landing, other]"]))
        busy = draw(st.sampled_from(["coalesce", "queue", "skip"]))
        rules.append(f"  r{i}: {{on: {on}, when: {policy}{group}, "
                     f"dispatch: {{backend: train, on_busy: {busy}, "
                     f"retry: {{attempts: 2, backoff: 1m}}}}}}\n")
    return HEAD + "".join(rules)


@st.composite
def arrivals(draw: st.DrawFn) -> list[Arrival]:
    out, at = [], START
    for _ in range(draw(st.integers(min_value=1, max_value=60))):
        # whole seconds, and fractions: timers 200 ms after a decision (the engine's least)
        at += timedelta(seconds=draw(st.sampled_from([0, 0.1, 0.15, 0.3, 1, 2.9, 30, 59, 60,
                                                      61, 119, 120, 300, 600, 3600])))
        source = draw(st.sampled_from(["landing", "landing", "other"]))
        name = f"/data/{source}/d{draw(st.integers(0, 2))}/{draw(st.integers(0, 12))}.parquet"
        kind = draw(st.sampled_from(["created", "created", "created", "modified", "deleted"]))
        fingerprint = draw(st.sampled_from([None, "same-bytes"]))
        out.append(Arrival(at, source, name, kind, draw(st.sampled_from([0, 1000, 4000])),
                           fingerprint))
    return out


@st.composite
def job_plans(draw: st.DrawFn) -> JobPlans:
    if draw(st.booleans()):
        return JobPlans(draw(st.sampled_from([timedelta(0), timedelta(seconds=90),
                                              timedelta(minutes=20)])), {})
    plans = [Plan(draw(st.sampled_from(["succeeded", "failed"])),
                  timedelta(seconds=draw(st.sampled_from([0, 45, 600]))))
             for _ in range(draw(st.integers(1, 4)))]
    return JobPlans(None, {f"r{i}": plans for i in range(4)})


def _facts(result: RunResult) -> Any:
    return ([(f.rule, f.group, f.at, f.kind, f.reason, f.events, f.started, f.ended, f.status)
             for f in result.triggers],
            {rule: sorted(times) for rule, times in result.pending.items()})


NEAR_A_TIMER = (  # a group's timer (1s) falls due within 200 ms of another group's arrival
    HEAD + '  r0: {on: [landing], group_by: "{payload.dir}", when: {debounce: 1s}, '
    "dispatch: {backend: train}}\n",
    [Arrival(START, "landing", "/data/landing/d0/a.parquet"),
     Arrival(START, "landing", "/data/landing/d1/a.parquet"),
     Arrival(START + timedelta(hours=1), "landing", "/data/landing/d0/b.parquet"),
     Arrival(START + timedelta(hours=1, seconds=0.9), "landing", "/data/landing/d1/b.parquet"),
     Arrival(START + timedelta(hours=1, seconds=5), "landing", "/data/landing/d0/c.parquet")],
    JobPlans(timedelta(0), {}), timedelta(hours=3))


@given(configs(), arrivals(), job_plans(), st.sampled_from([timedelta(0), timedelta(hours=3)]))
@example(*NEAR_A_TIMER)
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_batching_arrivals_changes_nothing_the_engine_decides(
        config_text: str, log: list[Arrival], plans: JobPlans, tail: timedelta) -> None:
    variant = Variant("current", config_from_text(config_text))
    until = log[-1].at + tail  # 0: the last arrivals fall on the replay's end itself
    fast = run_variant(variant, log, START, until, plans, fast=True)
    one_by_one = run_variant(variant, log, START, until, plans, fast=False)
    assert _facts(fast) == _facts(one_by_one)


def _timers(config: Config, log: list[Arrival], until: datetime, fast: bool) -> Any:
    """The engine's timers (and scheduled checks) where the replay ends."""
    sim = Simulation(config, DictStore(), START, Jobs(), auto_ticks=True,
                     show=lambda at: at.isoformat(), batches=True, fast=fast)
    asyncio.run(sim.run(Timeline(timeline_inputs(config, log).items, [], until)))
    return sim.engine.due, sim.engine.slot_due


@given(configs(), arrivals(), st.sampled_from([timedelta(0), timedelta(minutes=7)]))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_the_engine_is_left_with_the_timers_of_the_one_by_one_run(
        config_text: str, log: list[Arrival], tail: timedelta) -> None:
    """The timers that fell due within a batch and were decided there are armed as the
    engine arms them (a group the batch touched, by the engine's own decision at its end)."""
    config = config_from_text(config_text)
    until = log[-1].at + tail
    assert _timers(config, log, until, fast=True) == _timers(config, log, until, fast=False)
