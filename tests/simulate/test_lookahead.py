"""The replay's fast lane (triggerd/simulate/lookahead.py) changes nothing but speed: on random
timelines and policies, a replay that batches arrivals gets exactly the triggers, events, job
starts and ends, and pending events of one that hands every arrival to the engine alone."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triggerd.config.loader import load_config
from triggerd.simulate.history import Arrival
from triggerd.simulate.jobs import Plan
from triggerd.simulate.replay import JobPlans, RunResult, Variant, run_variant

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
]
HEAD = """
state_dir: state
sources:
  landing: {type: filesystem, paths: [/data/landing], patterns: ["**/*.parquet"]}
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
        on = "[landing, hourly]" if draw(st.integers(0, 4)) == 0 else "[landing]"
        busy = draw(st.sampled_from(["coalesce", "queue", "skip"]))
        rules.append(f"  r{i}: {{on: {on}, when: {policy}{group}, "
                     f"dispatch: {{backend: train, on_busy: {busy}, "
                     f"retry: {{attempts: 2, backoff: 1m}}}}}}\n")
    return HEAD + "".join(rules)


@st.composite
def arrivals(draw: st.DrawFn) -> list[Arrival]:
    out, at = [], START
    for _ in range(draw(st.integers(min_value=1, max_value=60))):
        at += timedelta(seconds=draw(st.sampled_from([0, 1, 30, 59, 60, 61, 119, 120, 300,
                                                      600, 3600])))
        name = f"/data/landing/d{draw(st.integers(0, 2))}/{draw(st.integers(0, 12))}.parquet"
        kind = draw(st.sampled_from(["created", "created", "created", "modified", "deleted"]))
        fingerprint = draw(st.sampled_from([None, "same-bytes"]))
        out.append(Arrival(at, "landing", name, kind, draw(st.sampled_from([0, 1000, 4000])),
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


@given(configs(), arrivals(), job_plans(), st.sampled_from([timedelta(0), timedelta(hours=3)]))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_batching_arrivals_changes_nothing_the_engine_decides(
        config_text: str, log: list[Arrival], plans: JobPlans, tail: timedelta) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "triggerd.yaml"
        path.write_text(config_text)
        variant = Variant("current", load_config(path))
    until = log[-1].at + tail  # 0: the last arrivals fall on the replay's end itself
    fast = run_variant(variant, log, START, until, plans, fast=True)
    one_by_one = run_variant(variant, log, START, until, plans, fast=False)
    assert _facts(fast) == _facts(one_by_one)
