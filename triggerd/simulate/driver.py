"""Driving the real engine through a timeline, with a manual clock: the simulator.

`Simulation` builds the daemon's own `Engine` over a store, and moves its clock from one due
moment to the next: the next input of the timeline, the next timer the engine armed (debounce,
cooldown, floors, `max_delay`, the end of a pause: `Engine.due`), the next scheduled check
(`Engine.slot_due`), the next tick a cron source makes by itself, the end of a job attempt or
a retry. What happens at each moment is what the daemon's loops do, in this order: attempts
that end are recorded and their rule decided again (`Engine.evaluate_rule`, as the runtime's
`Flow.job_finished`); scheduled checks and due timers run (`Engine.scheduled_check`,
`Engine.evaluate`, as `Engine.run_timers`); then the inputs at that time, in the order written
(a source's batch is `Engine.submit`, a manual fire `Engine.fire`); then the `explain` checks
at that time (`assess`, what `triggerd explain` shows). No thread, no sleep: the store work
runs inline (`call`), so a day of policy takes milliseconds. `triggerd replay` drives it too,
with two options: `batches` (the inputs of one source at one time are one batch, as the
source delivered them: stored events share their batch's time) and `fast` (arrivals are
collected into one batch for as long as the engine would decide the same: lookahead.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import TypeVar

from triggerd.clock import ManualClock
from triggerd.config.loader import Config
from triggerd.engine.assess import assess
from triggerd.engine.engine import Engine
from triggerd.engine.policy import verdict_line
from triggerd.engine.rounds import Round
from triggerd.errors import TriggerdError
from triggerd.model import Trigger
from triggerd.simulate.classified import Classified
from triggerd.simulate.dictstore import DictStore
from triggerd.simulate.inputs import Builder, Built, Named
from triggerd.simulate.jobs import JobRunner, Plan
from triggerd.simulate.lookahead import Lookahead, Step
from triggerd.simulate.simstore import SimStore
from triggerd.simulate.spec import Input, Jobs
from triggerd.sources.cron import CronOptions

T = TypeVar("T")
MAX_STEPS = 100_000  # moments in one simulation (~a minute): `every: 1s` over days is a mistake


class SimulationError(TriggerdError):
    """The timeline cannot be simulated (too many moments)."""


def _inline(fn: Callable[[], T]) -> Awaitable[T]:
    """The engine's `call`: store work runs right here (no store thread in a simulation), and
    its outcome comes back as a future already done, which the engine awaits without a trip
    through the event loop (a coroutine would be a task, and a loop cycle, per store trip)."""
    done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    try:
        done.set_result(fn())
    except Exception as exc:  # raised where the engine awaits it, as from the store thread
        done.set_exception(exc)
    return done


@dataclass(frozen=True)
class Verdict:
    """A rule group's decision at a time, as `triggerd explain` shows it."""

    at: datetime
    fires: bool
    text: str  # policy.verdict_line: "would fire now: ...", "not firing: waiting for ..."
    conditions: dict[str, bool]


@dataclass(frozen=True)
class Fired:
    """A trigger written during the simulation, with its events and its job's final status."""

    trigger: Trigger
    events: list[Named]
    job: str


@dataclass
class Timeline:
    """What to feed the engine: inputs and explain checks at times, and when to stop."""

    inputs: Sequence[tuple[datetime, Input | Built]]  # Built: a replay's (prebuilt.py)
    checks: list[tuple[datetime, str, str]]  # (at, rule, group)
    until: datetime


@dataclass
class Result:
    fired: list[Fired] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)  # one per check, in order
    notes: list[str] = field(default_factory=list)


class Simulation:
    """One run of the engine over a fresh store, from `start`."""

    def __init__(self, config: Config, store: SimStore, start: datetime, jobs: Jobs, *,
                 auto_ticks: bool, show: Callable[[datetime], str],
                 planner: Callable[[str], Plan] | None = None,
                 max_steps: int | None = None, batches: bool = False,
                 fast: bool = False) -> None:
        self.config = config
        self.store = store
        self.clock = ManualClock(start)
        self.jobs = JobRunner(config, store, self.clock, jobs, planner)
        self.max_steps = max_steps or MAX_STEPS
        self.batches = batches  # source inputs at one time from one source: one batch
        self.fired: list[Trigger] = []
        # what fired is collected, and its jobs claimed in the engine's trip (as the runtime's
        # Flow does): functions that hold no reference back to the simulation, so that it is
        # freed without the cyclic garbage collector (paused in a replay: replay.py)
        self.engine = Engine(config, store, self.clock, _inline, _collect_fired(self.fired),
                             then=_claim(self.jobs))
        self.builder = Builder(config.sources, start, show)
        self.named: dict[str, Named] = {}
        self.lookahead: Lookahead | None = None  # the fast lane: arrivals batched where it is
        if fast:                                 # the same
            classified = Classified(self.engine.rules)
            self.lookahead = Lookahead(config, store, classified.classify, self.named)
            if isinstance(store, DictStore):  # it takes what the fast lane classified
                store.classified = classified
        listened = {s for spec in config.rules.values() for s in spec.on}
        self.crons = {name: opts for name, opts in config.sources.items()
                      if isinstance(opts, CronOptions) and name in listened and auto_ticks}
        self.next_tick: dict[str, datetime | None] = {}

    async def run(self, timeline: Timeline) -> Result:
        """Run the timeline to its end; what fired, the verdicts and notes."""
        verdicts = await self.play(timeline)
        return Result(self._results(), verdicts, self.builder.notes)

    async def play(self, timeline: Timeline) -> list[Verdict]:
        """Run the timeline to its end; the verdicts of its checks (what fired is in
        `fired`, and in the store: a replay reads it from there)."""
        await self.engine.start()
        now = self.clock.now()
        self.next_tick = {n: o.build_schedule().next_after(now) for n, o in self.crons.items()}
        inputs = deque(sorted(timeline.inputs, key=lambda x: x[0]))  # stable: written order
        checks = sorted(enumerate(timeline.checks), key=lambda x: x[1][0])
        verdicts: dict[int, Verdict] = {}
        for _step in range(self.max_steps):
            moment = self._next([a for a, _ in islice(inputs, 1)] +
                                [c[0] for _, c in checks[:1]])
            if moment is None or moment > timeline.until:
                break
            self.clock.set(max(moment, self.clock.now()))
            await self._moment()
            while inputs and inputs[0][0] <= self.clock.now():
                at, items = self._unit(inputs)
                if self.lookahead is not None and _source_of(items[0]) is not None:
                    end = timeline.until + timedelta(microseconds=1)  # until is included
                    limit = self._next([c[0] for _, c in checks[:1]], timers=False) or end
                    await self._collect(at, items, inputs, min(limit, end))
                else:
                    await (self._batch(items) if len(items) > 1 else self._input(items[0]))
                await self._jobs_due()  # a job that ends at once ends before the checks
            while checks and checks[0][1][0] <= self.clock.now():
                n, (_at, rule, group) = checks.pop(0)
                verdicts[n] = self._explain(rule, group)
        else:
            raise SimulationError(f"more than {self.max_steps} moments to simulate before "
                                  f"{timeline.until.isoformat()}; shorten the test")
        self.clock.set(max(timeline.until, self.clock.now()))
        return [verdicts[n] for n in sorted(verdicts)]

    def _next(self, extra: Iterable[datetime], *, timers: bool = True) -> datetime | None:
        """The next moment: `extra`, a scheduled check, a cron tick, a job's end, and (with
        `timers`) a group's timer."""
        times = [*(self.engine.due.values() if timers else ()),
                 *self.engine.slot_due.values(), *extra,
                 *(t for t in self.next_tick.values() if t is not None)]
        job_time = self.jobs.next_time()
        if job_time is not None:
            times.append(job_time)
        return min(times, default=None)

    async def _moment(self) -> None:
        """Everything the daemon does by itself at this time (see the module docstring)."""
        now = self.clock.now()
        await self._jobs_due()
        for rule, slot in [(r, s) for r, s in self.engine.slot_due.items() if s <= now]:
            await self.engine.scheduled_check(rule, slot)
        due = {k for k, at in self.engine.due.items() if at <= now}
        if due:
            await self.engine.evaluate(due)
            for key in due:  # as run_timers: drop a key whose evaluation set no new time
                if key in self.engine.due and self.engine.due[key] <= now:
                    del self.engine.due[key]
        for name, tick in list(self.next_tick.items()):
            if tick is not None and tick <= now:
                await self._submit(name, [self.builder.tick(name, self.crons[name], tick, now)])
                self.next_tick[name] = self.builder.schedules[name].next_after(tick)
        await self._jobs_due()  # the jobs of what fired just now, when they end at once

    async def _jobs_due(self) -> None:
        """End the attempts due now, start what waited for them, and decide for their rules
        again; until none is due (a job that ends at once may be followed by another)."""
        now = self.clock.now()
        for _round in range(MAX_STEPS):
            ended = self.jobs.finish_due()
            self.jobs.claim_waiting(freed=bool(ended))
            for rule in dict.fromkeys(ended):
                await self.engine.evaluate_rule(rule)
            due = self.jobs.next_time()
            if due is None or due > now:
                return

    async def _input(self, item: Input | Built) -> None:
        if isinstance(item, Built):
            if item.named:
                await self._submit(item.source, list(item.named))
        elif item.fire is not None:
            await self.engine.fire(item.fire.rule, f"manual: {item.fire.reason}")
        elif item.job is not None:
            self.jobs.plan(item.job.rule, item.job.outcome, item.job.duration)
        elif item.pause is not None or item.resume is not None:
            await self._pause(item)
        else:
            source, named = self.builder.build(item, self.clock.now())
            if named:
                await self._submit(source, named)

    def _unit(self, inputs: deque[tuple[datetime, Input | Built]]
              ) -> tuple[datetime, list[Input | Built]]:
        """The next input; with `batches`, with the inputs of its source at its time."""
        at, item = inputs.popleft()
        items = [item]
        while self.batches and inputs and inputs[0][0] == at and _same_source(
                item, inputs[0][1]):
            items.append(inputs.popleft()[1])
        return at, items

    async def _collect(self, at: datetime, items: list[Input | Built],
                       inputs: deque[tuple[datetime, Input | Built]], limit: datetime) -> None:
        """The fast lane (`lookahead`): this source's arrivals from `at` on, as one batch for as
        long as the engine would decide the same (the groups' timers that fall due meanwhile
        included); every arrival before `limit`, the next moment the simulator has anyway
        besides those timers."""
        lookahead = self.lookahead
        assert lookahead is not None  # noqa: S101 - the caller checks
        source = _source_of(items[0])
        lookahead.open(sorted(self.engine.rules.listening(source or "")), self.engine.due)
        batch: list[Named] = []
        sent_at = at
        while True:
            named = (self._build(items[0], at)[1] if len(items) == 1 else
                     [n for item in items for n in self._build(item, at)[1]])
            step = lookahead.add([n.event for n in named], at) if named else Step.MORE
            if step is Step.ALONE:  # a duplicate: its groups are decided again, on its own
                await self._send(source, batch, sent_at)
                self._arm(lookahead)
                await self._send(source, list(named), at)
                return
            if named:
                batch += named
                sent_at = at
            if step is Step.LAST or not inputs:
                break
            at = inputs[0][0]
            if at >= limit or _source_of(inputs[0][1]) != source or not lookahead.admits(at):
                break
            at, items = self._unit(inputs)
        await self._send(source, batch, sent_at)
        self._arm(lookahead)

    def _arm(self, lookahead: Lookahead) -> None:
        """Arm the groups whose timer fell due within the batch (decided by the lookahead
        then) and which the batch's trip did not decide again, as the engine would have armed
        them at that time. (Left as they were, due, the engine would decide them at the next
        moment, to the same verdict: one more trip, and a timer armed from a later time.)"""
        for key, decision, at in lookahead.timers_decided():
            self.engine.arm(key, decision, at)

    async def _send(self, source: str | None, named: list[Named], at: datetime) -> None:
        if named and source is not None:
            self.clock.set(max(at, self.clock.now()))
            await self._submit(source, named)

    async def _batch(self, items: list[Input | Built]) -> None:
        """Source inputs at one time from one source: one batch, as the source delivers it."""
        source, named = "", list[Named]()
        for item in items:
            source, some = self._build(item, self.clock.now())
            named += some
        if named:
            await self._submit(source, named)

    def _build(self, item: Input | Built, now: datetime) -> tuple[str, Sequence[Named]]:
        """The source and the events of a source's input (built already, or now)."""
        if isinstance(item, Built):
            return item.source, item.named
        return self.builder.build(item, now)

    async def _pause(self, item: Input) -> None:
        """`triggerd pause` / `resume`: the flag in the store, then the rule decided again
        (as the daemon does when it handles the request)."""
        now = self.clock.now()
        if item.pause is not None:
            p = item.pause
            until = now + p.for_ if p.for_ is not None else None
            self.store.set_paused(p.rule, True, until, p.reason, now)
            await self.engine.evaluate_rule(p.rule)
        elif item.resume is not None:
            self.store.set_paused(item.resume.rule, False, None, None, now)
            await self.engine.evaluate_rule(item.resume.rule)

    async def _submit(self, source: str, named: list[Named]) -> None:
        for n in named:
            self.named.setdefault(n.event.id, n)
        await self.engine.submit(source, [n.event for n in named])

    def _explain(self, rule: str, group: str) -> Verdict:
        now = self.clock.now()
        found = assess(self.config, self.store, now, {(rule, group)})[(rule, group)]
        d = found.decision
        text = verdict_line(d.fire, d.reason)
        return Verdict(now, d.fire, text, {c.name: c.ok for c in d.conditions})

    def _results(self) -> list[Fired]:
        consumed = consumed_events(
            self.store, {eid: n.event.observed_at for eid, n in self.named.items()})
        statuses = self.store.job_statuses()
        return [Fired(trig, [self.named[e] for e in consumed.get(trig.id, []) if e in self.named],
                      statuses.get(trig.id, "none")) for trig in self.fired]


def _collect_fired(fired: list[Trigger]) -> Callable[[Round], None]:
    def on_round(done: Round) -> None:
        fired.extend(done.fired)
    return on_round


def _claim(jobs: JobRunner) -> Callable[[Round], Round]:
    def then(done: Round) -> Round:
        jobs.claim_fired(done.fired)
        return done
    return then


def _source_of(item: Input | Built) -> str | None:
    if isinstance(item, Built):
        return item.source
    one = item.file or item.object or item.message or item.event
    return one.source if one is not None else None


def _same_source(a: Input | Built, b: Input | Built) -> bool:
    source = _source_of(a)
    return source is not None and source == _source_of(b)


def consumed_events(store: SimStore, observed: Mapping[str, datetime]
                    ) -> dict[str, list[str]]:
    """Each trigger's events (ids), in the order they were observed (`observed`: when, for
    every event the simulation submitted): one read of the memberships."""
    out = store.memberships()
    for ids in out.values():
        ids.sort(key=lambda e: (observed.get(e, _NEVER), e))
    return out


_NEVER = datetime.max.replace(tzinfo=UTC)
