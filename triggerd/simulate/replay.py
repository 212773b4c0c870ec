"""`triggerd replay`: a config's rules run over real history, by the daemon's own engine.

Each `Variant` (the current config, a candidate config, a point of a `--sweep`) is simulated
on its own fresh store kept in dicts (`dictstore`) with `driver.Simulation` (the daemon's
`Engine` and policy, a manual clock), from the replay's start to its end, over the same arrivals
(`history.timeline_inputs`; their events built once for the variants with the same sources:
`prebuilt`). Jobs take the time and end the way `JobPlans` says: the stored jobs' attempts of
each rule in turn, or `--job-duration` (all succeed). What comes out is a `RunResult`: every
trigger with its events and its job's start and end (`TriggerFact`), and the events still
pending at the end; `figures` turns it into the numbers per rule.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import cycle

from pydantic import ValidationError
from sqlalchemy import select

from triggerd.config.loader import Config
from triggerd.config.schema import WhenSpec
from triggerd.errors import ConfigError
from triggerd.language.units import format_duration
from triggerd.model import JobStatus
from triggerd.simulate.dictstore import DictStore
from triggerd.simulate.driver import Simulation, Timeline, consumed_events
from triggerd.simulate.history import Arrival
from triggerd.simulate.jobs import Plan
from triggerd.simulate.prebuilt import Prebuilt
from triggerd.simulate.simstore import SimStore
from triggerd.simulate.spec import Jobs
from triggerd.store import tables as t
from triggerd.store.sql import Store

STEPS_PER_INPUT = 8  # moments a replay may take per input (timers, ticks, job ends), plus:
BASE_STEPS = 200_000


@dataclass(frozen=True)
class Variant:
    """One configuration to replay: `name` as the report shows it."""

    name: str
    config: Config


@dataclass(frozen=True)
class TriggerFact:
    """A trigger, the events it consumed (id, observed at), and what its job did."""

    id: str
    rule: str
    group: str
    at: datetime
    kind: str
    reason: str
    events: list[tuple[str, datetime]]
    started: datetime | None  # the job's first attempt (None: never started)
    ended: datetime | None
    status: str


@dataclass
class RunResult:
    name: str
    triggers: list[TriggerFact] = field(default_factory=list)
    pending: dict[str, list[datetime]] = field(default_factory=dict)  # rule: observed times
    left_out: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # error: count (`where`, group_by)
    events: int = 0  # inputs replayed
    seconds: float = 0.0  # wall time of the simulation


class JobPlans:
    """How long each replayed job takes and how it ends: `--job-duration` for all, or each
    rule's stored attempts in turn (repeated when a replay starts more), else instant success."""

    def __init__(self, fixed: timedelta | None, stored: dict[str, list[Plan]]) -> None:
        self.fixed = fixed
        self.stored = stored

    def source(self) -> str:
        if self.fixed is not None:
            return f"--job-duration {format_duration(self.fixed)} (every job succeeds)"
        if self.stored:
            n = sum(len(p) for p in self.stored.values())
            return f"the stored jobs' attempts ({n}, in turn per rule; 0s for other rules)"
        return "none stored and no --job-duration: every job succeeds at once"

    def planner(self) -> Callable[[str], Plan]:
        turns = {rule: cycle(plans) for rule, plans in self.stored.items() if plans}
        instant = Plan("succeeded", self.fixed or timedelta(0))

        def next_plan(rule: str) -> Plan:
            if self.fixed is None and rule in turns:
                return next(turns[rule])
            return instant
        return next_plan


def stored_plans(store: Store, since: datetime | None, until: datetime | None
                 ) -> dict[str, list[Plan]]:
    """Each rule's finished job attempts in [since, until), oldest first, as plans."""
    a, j = t.job_attempts.c, t.jobs.c
    query = (select(j.rule, a.started_at, a.finished_at, a.outcome)
             .join(t.jobs, j.id == a.job_id).where(a.finished_at.is_not(None))
             .order_by(a.started_at, a.job_id, a.n))
    if since is not None:
        query = query.where(a.started_at >= since)
    if until is not None:
        query = query.where(a.started_at < until)
    plans: dict[str, list[Plan]] = defaultdict(list)
    with store.read() as c:
        for rule, started, finished, outcome in c.execute(query):
            ok = outcome == JobStatus.SUCCEEDED
            plans[rule].append(Plan("succeeded" if ok else "failed",
                                    max(finished - started, timedelta(0))))
    return dict(plans)


def run_variant(variant: Variant, arrivals: list[Arrival], start: datetime, until: datetime,
                plans: JobPlans, *, fast: bool = True,
                new_store: Callable[[], SimStore] = DictStore,
                built: Prebuilt | None = None) -> RunResult:
    """Simulate `variant` over `arrivals` from `start` to `until` (see the module docstring);
    `new_store` makes the store it runs on (the tests compare the SQL store's run); `built`
    holds the events of `arrivals` built for earlier variants (else they are built here)."""
    if built is None:
        built = Prebuilt(arrivals, start)
    elif built.arrivals is not arrivals or built.start != start:
        raise ValueError("run_variant: `built` holds the events of other arrivals")
    with _collector_paused():
        return _run_variant(variant, built, start, until, plans, fast, new_store)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a variant runs: a replay builds up millions of
    objects that live to its end (inputs, events, memberships), and the collector's passes over
    them took a fifth of its time. The little it leaves for the collector (reference cycles)
    waits for the end."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _run_variant(variant: Variant, built: Prebuilt, start: datetime, until: datetime,
                 plans: JobPlans, fast: bool, new_store: Callable[[], SimStore]) -> RunResult:
    started = time.perf_counter()
    inputs = built.prepared(variant.config)
    store = new_store()
    try:
        sim = Simulation(variant.config, store, start, Jobs(), auto_ticks=True,
                         show=lambda at: at.isoformat(), planner=plans.planner(),
                         max_steps=BASE_STEPS + STEPS_PER_INPUT * len(inputs.items),
                         batches=True, fast=fast)
        asyncio.run(_run(sim, Timeline(inputs.items, [], until)))
        observed = {eid: n.event.observed_at for eid, n in sim.named.items()}
        consumed = consumed_events(store, observed)
        out = RunResult(variant.name, left_out=dict(inputs.left_out),
                        events=len(inputs.items))
        for trig in sim.fired:
            end = sim.jobs.ended.get(trig.id)
            out.triggers.append(TriggerFact(
                trig.id, trig.rule, trig.group, trig.fired_at, trig.kind, trig.reason,
                [(e, observed[e]) for e in consumed.get(trig.id, []) if e in observed],
                sim.jobs.started.get(trig.id), end[0] if end else None,
                str(end[1]) if end else ("running" if trig.id in sim.jobs.started
                                         else "not started")))
        out.pending = store.pending_times()
        out.rejected = rejected(store)
    finally:
        store.close()
    out.seconds = time.perf_counter() - started
    return out


async def _run(sim: Simulation, timeline: Timeline) -> None:
    """Run the simulation (`play`: what fired is read here, from the store), returning
    nothing: at its end `asyncio.run` (3.11) formats the main task's repr, result included,
    which for a month of triggers takes most a second."""
    await sim.play(timeline)


def rejected(store: SimStore) -> dict[str, int]:
    """What the rules rejected (a `where` or `group_by` that failed on an event), per error
    (its rule and message: the store keeps one row per event and error)."""
    out: dict[str, int] = defaultdict(int)
    for error in store.reject_errors():
        out[error.split(" on event ")[0]] += 1
    return dict(out)


# -- --sweep ----------------------------------------------------------------------------------

def sweep(config: Config, spec: str, rules: list[str] | None) -> list[Variant]:
    """`when.KEY=V1,V2,...`: one variant of `config` per value, with `KEY` set to it in the
    `when` of `rules` (every rule if None). A value the rule's policy refuses is an error."""
    key, sep, values = spec.partition("=")
    field_name = key.removeprefix("when.")
    if not sep or not key.startswith("when.") or field_name not in WhenSpec.model_fields:
        known = ", ".join(f"when.{k}" for k in WhenSpec.model_fields)
        raise ConfigError([f"--sweep {spec}: expected when.KEY=V1,V2,... with KEY one of "
                           f"{known}"])
    names = rules if rules is not None else list(config.rules)
    variants = []
    for value in [v.strip() for v in values.split(",") if v.strip()]:
        changed = {}
        for rule in names:
            spec_ = config.rules[rule]
            raw = spec_.when.model_dump(exclude_unset=True)
            raw[field_name] = None if value in ("none", "null") else value
            try:
                when = WhenSpec.model_validate(raw)
            except ValidationError as exc:
                problem = exc.errors()[0]["msg"]
                raise ConfigError([f"--sweep {key}={value}: rule {rule}: {problem}"]) from None
            changed[rule] = spec_.model_copy(update={"when": when})
        variants.append(Variant(f"{key}={value}", replace(config,
                                                          rules={**config.rules, **changed})))
    if not variants:
        raise ConfigError([f"--sweep {spec}: no values"])
    return variants
