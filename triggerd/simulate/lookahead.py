"""The replay's fast lane: which consecutive arrivals one batch can take without changing
what the engine decides.

Run one by one, every arrival is a trip through the store (store it, decide for its groups),
and so is every timer that falls due (a debounce that ends before enough events came, a
cooldown that ends with nothing pending). Most arrivals and timers change nothing but a
pending count: no trigger fires. The simulator (`driver.Simulation`, with `lookahead`)
therefore collects consecutive arrivals of one source into one batch for as long as that is
provably the same, and hands the batch to the engine at the time of its last arrival. To know,
`Lookahead` keeps the state the engine would have after each arrival (the same summary the
store keeps: pending count, bytes, first and last time, the sustained streak; the arithmetic of
`IngestStore._add_pending` and `_update_streaks`) and the engine's timers (`Engine.due`, as
the batch began and as the batch's own decisions would arm them, `Engine.arm`), and asks the
engine's own policy (`policy.decide`, with `assess.situate`) after each arrival and at each
timer that falls due before the next one. The batch ends

- after an arrival at which a group would fire, or which creates a group (its creation time
  is the time of the batch's store trip);
- before an arrival that comes after a timer at which a group would fire, or after a timer of
  a group of another source's rules; or at or after the next moment the simulator has anyway
  (a scheduled check, a cron tick, a job's end, an `explain` check);
- before an arrival at `at` when a group the batch's events touched would be armed
  differently by the engine's decision at the batch's time (`at`, if it is the last): its
  next check must lie at least the engine's 200 ms beyond, or have been decided at `at`;
- before a duplicate (its groups are decided again: the simulator sends it on its own).

So every decision the batch skips is one that would not fire, and every timer ends as the
one-by-one run would leave it: a group the batch touched is decided again by the engine at
the batch's time, to the same next check; a group it did not touch, whose timer fell due
within the batch, gets its timer from the decision made here (`timers_decided`, armed by the
simulator with `Engine.arm`). The triggers, their events and times are those of the
one-by-one run (checked by tests/simulate/test_lookahead.py against it, on random timelines).
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from enum import Enum

from triggerd.config.loader import Config
from triggerd.engine.assess import NOTHING_PENDING, rule_schedule, situate
from triggerd.engine.engine import ARM_DELAY
from triggerd.engine.policy import Decision, decide
from triggerd.language.schedules import Schedule
from triggerd.model import Event, GroupState, Pending, RuleFlags
from triggerd.simulate.classified import Classify
from triggerd.store.contract import EngineStore
from triggerd.store.sql import Key

Armed = dict[Key, tuple[datetime | None, datetime]]  # per group: next check, decided at
_NEVER = datetime.max.replace(tzinfo=UTC)


class Step(Enum):
    MORE = "more"  # taken; the batch may go on
    LAST = "last"  # taken; the batch must end with it
    ALONE = "alone"  # a duplicate: not taken; send it on its own


class Lookahead:
    """The state the engine would have after each arrival of the batch being collected."""

    def __init__(self, config: Config, store: EngineStore, classify: Classify,
                 known: Container[str]) -> None:
        self.config = config
        self.store = store
        self.classify = classify  # the engine's rules' (`RuleSet.classify`)
        self.known = known  # ids of the events stored already
        self.schedules: dict[str, Schedule | None] = {
            r: rule_schedule(config, r) for r in config.rules}
        self.open([], {})

    def open(self, rules: Sequence[str], timers: Mapping[Key, datetime]) -> None:
        """Begin a batch: read the state of `rules` (those listening to its source); `timers`
        are the engine's (`Engine.due`)."""
        snap = self.store.snapshot(rules) if rules else None
        self.listening = set(rules)
        self.states: dict[Key, GroupState] = dict(snap.states) if snap else {}
        self.pending: dict[Key, Pending] = dict(snap.pending) if snap else {}
        self.flags: dict[str, RuleFlags] = dict(snap.flags) if snap else {}
        self.active: dict[str, int] = dict(snap.active) if snap else {}
        self.timers = dict(timers)  # as the batch began
        self.armed: Armed = {}  # the groups the batch decided
        self.touched: set[Key] = set()  # the groups the batch's events are pending in
        self.skipped: dict[Key, tuple[Decision, datetime]] = {}  # decided here at a timer
        self.ids: set[str] = set()
        # an arrival before `_next_timer` and by `_last_safe` is admitted without a look: no
        # timer falls due before it, and no touched group's next check is within the margin
        # (both kept no later than they are: recomputed by the look)
        self._next_timer = min(self.timers.values(), default=_NEVER)
        self._last_safe = _NEVER

    def admits(self, at: datetime) -> bool:
        """Whether an arrival at `at` may join: each timer that falls due by then is one of
        the listening rules' groups and fires nothing (decided here, in time order: kept in
        `skipped`), and each group the batch touched would be armed at `at` as it is now."""
        if at < self._next_timer and at <= self._last_safe:
            return True
        armed = dict(self.armed)
        skipped: dict[Key, tuple[Decision, datetime]] = {}
        timers = self._timers(armed)  # kept as `_timers(armed)` while `armed` grows
        while (due := _first_due(timers, at)) is not None:
            when, keys = due
            for key in keys:
                if key[0] not in self.listening:
                    return False
                decision = self._decide(key, when)
                if decision.fire:
                    return False
                check = decision.next_check_at
                armed[key] = (check, when)
                skipped[key] = (decision, when)
                if check is not None:
                    timers[key] = max(check, when + ARM_DELAY)
                else:
                    del timers[key]
        edge = at + ARM_DELAY
        if not all(decided == at or check is None or check >= edge
                   for key, (check, decided) in armed.items() if key in self.touched):
            return False
        self.armed = armed
        self.skipped.update(skipped)
        self._next_timer = min(timers.values(), default=_NEVER)
        self._last_safe = min((check - ARM_DELAY for key, (check, _d) in armed.items()
                               if key in self.touched and check is not None), default=_NEVER)
        return True

    def _timers(self, armed: Armed) -> dict[Key, datetime]:
        """Each group's timer: as the batch's last decision of it would arm it, or as the
        engine held it when the batch began."""
        due = {key: when for key, when in self.timers.items() if key not in armed}
        for key, (check, decided) in armed.items():
            if check is not None:
                due[key] = max(check, decided + ARM_DELAY)
        return due

    def timers_decided(self) -> list[tuple[Key, Decision, datetime]]:
        """The decisions made here at the timers of groups the batch's events did not touch,
        with their times: the engine decides those groups no more in this batch's trip, so
        their timers are armed from these (`Engine.arm`) once it is made."""
        return [(key, decision, when) for key, (decision, when) in self.skipped.items()
                if key not in self.touched]

    def _decide(self, key: Key, at: datetime) -> Decision:
        """The engine's decision for a group at `at`, from the state here (as `assess`)."""
        rule, grp = key
        spec = self.config.rules[rule]
        state = self.states.get(key) or GroupState(rule=rule, group=grp, seq=0, created_at=at)
        situation = situate(spec, state, self.pending.get(key, NOTHING_PENDING),
                            self.flags.get(rule), self.active.get(rule, 0), self.schedules[rule],
                            None, at)
        return decide(spec.when, situation, at, explain=False)

    def add(self, events: Sequence[Event], at: datetime) -> Step:
        """Take the events that arrived together at `at` (one source's batch)."""
        ids = [e.id for e in events]
        known, taken = self.known, self.ids
        for i in ids:
            if i in known or i in taken:
                return Step.ALONE
        taken.update(ids)
        touched: set[Key] = set()
        new_group = False
        for item in self.classify(events):
            ev = item.event
            seen, size = ev.observed_at, ev.size
            for key in item.pending:
                new_group |= key not in self.states
                p = self.pending.get(key, NOTHING_PENDING)
                self.pending[key] = Pending(
                    p.count + 1, p.bytes + size,
                    min(p.first_at, seen) if p.first_at else seen,
                    max(p.last_at, seen) if p.last_at else seen)
                touched.add(key)
            for rule, grp, matched in item.streak:
                key = (rule, grp)
                state = self.states.get(key)
                if state is None:
                    new_group = True
                    continue
                self.states[key] = replace(
                    state, sustained_count=state.sustained_count + 1 if matched else 0,
                    sustained_since=(state.sustained_since or ev.observed_at) if matched
                    else None)
                touched.add(key)
        self.touched |= touched
        if new_group:
            return Step.LAST
        for key in touched:
            decision = self._decide(key, at)
            if decision.fire:
                return Step.LAST
            check = decision.next_check_at
            self.armed[key] = (check, at)
            if check is not None:  # (its timer, no earlier than `check`, is then no nearer)
                self._last_safe = min(self._last_safe, check - ARM_DELAY)
        return Step.MORE


def _first_due(timers: Mapping[Key, datetime], at: datetime
               ) -> tuple[datetime, list[Key]] | None:
    """The first time by `at` (included) that `timers` fall due, and the groups due then."""
    first = min(timers.values(), default=None)
    if first is None or first > at:
        return None
    return first, sorted(key for key, when in timers.items() if when == first)
