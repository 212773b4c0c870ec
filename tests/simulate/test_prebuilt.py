"""A replay's events built once for all its variants (triggerd/simulate/prebuilt.py): they are
the events the simulator builds for itself from the inputs (`timeline_inputs`), a variant
replayed after others over the same built events gets what it gets alone, those events are
left as they were built, and a config with other sources gets events of its own."""

from __future__ import annotations

import copy
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from simtest import config_from_text

from triggerd.config.loader import Config
from triggerd.simulate.history import Arrival, _under, timeline_inputs
from triggerd.simulate.inputs import Builder
from triggerd.simulate.prebuilt import Prebuilt, Prepared, prepare
from triggerd.simulate.replay import JobPlans, RunResult, Variant, run_variant
from triggerd.sources._fsoptions import FilesystemOptions

START = datetime(2026, 11, 2, tzinfo=UTC)
SOURCES = """
state_dir: state
sources:
  landing: {type: filesystem, paths: [/data/landing], patterns: ["**/*.parquet"], settle: 5s}
  metrics: {type: kafka, brokers: ["k:9092"], topic: m, group: g, format: json,
            subject: "{value.model}"}
  raw: {type: bucket, url: "s3://data/landing/", poll: 5m, patterns: ["**/*.parquet"]}
  nightly: {type: cron, schedule: "0 2 * * *"}
backends:
  train: {type: command, argv: [echo]}
rules:
"""
POLICIES = ["{min_events: 3}", "{debounce: 5m}", "{min_events: 1, cooldown: 30m}",
            "{min_events: 5, at_least_every: 2h}", "{schedule: nightly}",
            "{min_bytes: 5000, cooldown: 15m}", "{sustained: 2, debounce: 30s}"]
ON = ["[landing]", "[landing, metrics]", "[raw]", "[landing, raw, metrics]"]
MATCHES = ["", ', match: {subject: "/data/landing/d0/**"}', ', match: {where: "size > 1500"}']


@st.composite
def configs(draw: st.DrawFn, head: str = SOURCES) -> Config:
    rules = []
    for i in range(draw(st.integers(min_value=1, max_value=3))):
        group = ', group_by: "{payload.dir}"' if draw(st.booleans()) else ""
        rules.append(f"  r{i}: {{on: {draw(st.sampled_from(ON))}"
                     f"{draw(st.sampled_from(MATCHES))}, when: {draw(st.sampled_from(POLICIES))}"
                     f"{group}, dispatch: {{backend: train}}}}\n")
    return config_from_text(head + "".join(rules))


@st.composite
def logs(draw: st.DrawFn) -> list[Arrival]:
    out, at = [], START
    for _ in range(draw(st.integers(min_value=1, max_value=40))):
        at += timedelta(seconds=draw(st.sampled_from([0, 1, 30, 60, 600, 3600])))
        source = draw(st.sampled_from(["landing", "landing", "metrics", "raw", "nightly"]))
        n = draw(st.integers(0, 6))
        subject = {"landing": f"/data/landing/d{n % 3}/{n}.parquet", "metrics": f"m{n % 2}",
                   "raw": f"dt={n % 2}/{n}.parquet", "nightly": "tick"}[source]
        kind = draw(st.sampled_from(["created", "created", "modified", "deleted", "moved"]))
        out.append(Arrival(at, source, subject, kind if source != "metrics" else "message",
                           draw(st.sampled_from([0, 1000, 4000])),
                           draw(st.sampled_from([None, "same-bytes"])),
                           {"model": f"m{n % 2}"} if source == "metrics" else {}))
    return out


def _facts(result: RunResult) -> Any:
    return ([(f.rule, f.group, f.at, f.kind, f.reason, f.events, f.started, f.ended, f.status)
             for f in result.triggers],
            {rule: sorted(times) for rule, times in result.pending.items()},
            result.left_out, result.rejected, result.events)


def _contents(prepared: Prepared) -> Any:
    """Everything the built inputs hold, as plain values copied (a payload written later
    shows)."""
    return copy.deepcopy([(at, b.source, [(n.event.id, n.event.to_dict(), n.shown, n.names)
                                          for n in b.named]) for at, b in prepared.items])


def test_the_built_events_are_those_the_simulator_builds_from_the_inputs() -> None:
    config = config_from_text(SOURCES + "  r0: {on: [landing], when: {min_events: 2}, "
                     "dispatch: {backend: train}}\n")
    at = [START + timedelta(minutes=m) for m in range(8)]
    log = [Arrival(at[0], "landing", "/data/landing/a.parquet", size=10),
           Arrival(at[1], "landing", "b.parquet", "created", 20, "x"),  # relative to the root
           Arrival(at[1], "landing", "/data/landing/b.parquet", "created", 20, "x"),  # dup
           Arrival(at[2], "landing", "/data/landing/a.parquet", "modified", 11),
           Arrival(at[3], "landing", "/data/landing/a.tmp"),  # not watched: no event
           Arrival(at[3], "landing", "/elsewhere/c.parquet"),  # left out
           Arrival(at[4], "landing", "/data/landing/a.parquet", "deleted"),
           Arrival(at[5], "metrics", "m1", "message", payload={"model": "m1"}),
           Arrival(at[5], "raw", "dt=1/b.parquet", size=7),
           Arrival(at[6], "nightly", "tick"),  # left out: the replay ticks by itself
           Arrival(at[7], "landing", "/data/landing/d/e.parquet", "moved", 5)]
    prepared = prepare(config, log, START)
    inputs = timeline_inputs(config, log)
    builder = Builder(config.sources, START, datetime.isoformat)
    assert [(at, b.source) for at, b in prepared.items] == [
        (at, builder.build(item, at)[0]) for at, item in inputs.items]
    builder = Builder(config.sources, START, datetime.isoformat)
    expected = [(at, *builder.build(item, at)) for at, item in inputs.items]
    assert _contents(prepared) == [
        (at, source, [(n.event.id, n.event.to_dict(), n.shown, n.names) for n in named])
        for at, source, named in expected]
    assert prepared.left_out == inputs.left_out == {
        "paths outside filesystem source landing's paths": 1,
        "ticks of cron source nightly (the replay makes its own)": 1}
    # a deletion makes no event: `events` leaves it out by default
    assert [len(b.named) for _at, b in prepared.items] == [1, 1, 1, 1, 0, 0, 1, 1, 1]


@given(configs(), configs(), logs())
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_a_variant_replayed_after_another_on_the_same_events_gets_what_it_gets_alone(
        first: Config, second: Config, log: list[Arrival]) -> None:
    plans = JobPlans(timedelta(minutes=7), {})
    until = log[-1].at + timedelta(hours=2)
    built = Prebuilt(log, START)
    before = _contents(built.prepared(first))
    assert built.prepared(second) is built.prepared(first)  # the same sources: shared
    run_variant(Variant("first", first), log, START, until, plans, built=built)
    shared = run_variant(Variant("second", second), log, START, until, plans, built=built)
    alone = run_variant(Variant("second", second), log, START, until, plans)
    assert _facts(shared) == _facts(alone)
    again = run_variant(Variant("second", second), log, START, until, plans, fast=False,
                        built=built)
    assert _facts(again) == _facts(alone)
    assert _contents(built.prepared(second)) == before  # nothing written into the events


def test_a_config_with_other_sources_gets_events_of_its_own() -> None:
    parquet = config_from_text(SOURCES + "  r0: {on: [landing], when: {min_events: 1}, "
                      "dispatch: {backend: train}}\n")
    csv = config_from_text(SOURCES.replace('patterns: ["**/*.parquet"], settle',
                                  'patterns: ["**/*.csv"], settle')
                  + "  r0: {on: [landing], when: {min_events: 1}, dispatch: {backend: train}}\n")
    log = [Arrival(START, "landing", "/data/landing/a.parquet", size=1),
           Arrival(START + timedelta(minutes=1), "landing", "/data/landing/b.csv", size=2)]
    built = Prebuilt(log, START)
    plans = JobPlans(timedelta(0), {})
    until = START + timedelta(hours=1)
    for config in (parquet, csv, parquet):
        shared = run_variant(Variant("v", config), log, START, until, plans, built=built)
        assert _facts(shared) == _facts(run_variant(Variant("v", config), log, START, until,
                                                    plans))
    assert built.prepared(parquet) is not built.prepared(csv)
    assert [len(b.named) for _at, b in built.prepared(csv).items] == [0, 1]
    assert [len(b.named) for _at, b in built.prepared(parquet).items] == [1, 0]


def test_events_built_for_other_arrivals_are_refused() -> None:
    config = config_from_text(SOURCES + "  r0: {on: [landing], when: {min_events: 1}, "
                     "dispatch: {backend: train}}\n")
    log = [Arrival(START, "landing", "/data/landing/a.parquet", size=1)]
    other = Prebuilt(list(log), START)
    with pytest.raises(ValueError, match="other arrivals"):
        run_variant(Variant("v", config), log, START, START + timedelta(hours=1),
                    JobPlans(None, {}), built=other)


@given(st.lists(st.sampled_from(["/data/landing", "/", ".", "..", ".x", "a.parquet", "//",
                                 "X", "d0"]), max_size=7).map("".join))
@example("/data/landing/./a.parquet")
@example("/data/landing/d0/../a.parquet")
@example("/data/landing//a.parquet")
@example("//data/landing/a.parquet")
@example("/data/landing/d0/")
@example("/data/landing/.x")
@example("/data/landingX/a.parquet")
@example("d0/a.parquet")
@settings(max_examples=500)
def test_a_file_rows_path_is_the_normalised_path_under_the_sources_paths(subject: str) -> None:
    """`history._under`, which skips normpath for a path already normal, as normpath has it
    (the watched directory itself is not a file under it)."""
    options = config_from_text(SOURCES).sources["landing"]
    assert isinstance(options, FilesystemOptions)
    path = os.path.normpath(os.path.join("/data/landing", subject))
    expected = path if path.startswith("/data/landing/") else None
    assert _under(options, subject) == expected
