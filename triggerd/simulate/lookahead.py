"""The replay's fast lane: which consecutive arrivals one batch can take without changing
what the engine decides.

Run one by one, every arrival is a trip through the store (store it, decide for its groups),
a few hundred per second. Most arrivals change nothing but a pending count: no trigger fires
and no timer falls due before the next one. The simulator (`driver.Simulation`, with
`lookahead`) therefore collects consecutive arrivals of one source into one batch for as long
as that is provably the same, and hands the batch to the engine at the time of its last
arrival. To know, `Lookahead` keeps the state the engine would have after each arrival (the
same summary the store keeps: pending count, bytes, first and last time, the sustained streak;
the arithmetic of `IngestStore._add_pending` and `_update_streaks`) and asks the engine's own
policy (`policy.decide`, with `assess.situate`) after each one. The batch ends

- after an arrival at which a group would fire, or which creates a group (its creation time
  is the time of the batch's store trip);
- before an arrival at or after the next moment the simulator has anyway (a timer, a
  scheduled check, a cron tick, a job's end), or before one that comes after a timer the
  batch's own decisions would set (`next_check_at`, as the engine arms it: at least 200 ms
  on); the timer a group's last decision sets must also be the one the engine sets at the
  batch's time, so it must lie beyond that time by the same margin;
- before a duplicate (its groups are decided again: the simulator sends it on its own).

So every decision the batch skips is one that would not fire and whose timer is replaced
before it falls due: the triggers, their events and times are those of the one-by-one run
(checked by tests/simulate/test_lookahead.py against it, on random timelines).
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from enum import Enum

from triggerd.config.loader import Config
from triggerd.engine.assess import rule_schedule, situate
from triggerd.engine.matching import RuleSet
from triggerd.engine.policy import decide
from triggerd.language.schedules import Schedule
from triggerd.model import Event, GroupState, Pending, RuleFlags
from triggerd.store.contract import EngineStore
from triggerd.store.sql import Key

ARM_MARGIN = timedelta(milliseconds=200)  # the engine arms a timer at least this far on


class Step(Enum):
    MORE = "more"  # taken; the batch may go on
    LAST = "last"  # taken; the batch must end with it
    ALONE = "alone"  # a duplicate: not taken; send it on its own


class Lookahead:
    """The state the engine would have after each arrival of the batch being collected."""

    def __init__(self, config: Config, store: EngineStore, rules: RuleSet,
                 known: Container[str]) -> None:
        self.config = config
        self.store = store
        self.rules = rules
        self.known = known  # ids of the events stored already
        self.schedules: dict[str, Schedule | None] = {
            r: rule_schedule(config, r) for r in config.rules}
        self.open([])

    def open(self, rules: Sequence[str]) -> None:
        """Begin a batch: read the state of `rules` (those listening to its source)."""
        snap = self.store.snapshot(rules) if rules else None
        self.states: dict[Key, GroupState] = dict(snap.states) if snap else {}
        self.pending: dict[Key, Pending] = dict(snap.pending) if snap else {}
        self.flags: dict[str, RuleFlags] = dict(snap.flags) if snap else {}
        self.active: dict[str, int] = dict(snap.active) if snap else {}
        self.armed: dict[Key, tuple[datetime | None, datetime]] = {}  # next check, decided at
        self.ids: set[str] = set()

    def admits(self, at: datetime) -> bool:
        """Whether an arrival at `at` may join: no timer the batch's decisions set is due by
        then (or would be armed differently at the batch's end, `at`)."""
        edge = at + ARM_MARGIN
        return all(decided == at or check is None or check >= edge
                   for check, decided in self.armed.values())

    def add(self, events: Sequence[Event], at: datetime) -> Step:
        """Take the events that arrived together at `at` (one source's batch)."""
        if any(e.id in self.known or e.id in self.ids for e in events):
            return Step.ALONE
        self.ids.update(e.id for e in events)
        touched: set[Key] = set()
        new_group = False
        for item in self.rules.classify(events):
            ev = item.event
            for key in item.pending:
                new_group |= key not in self.states
                p = self.pending.get(key) or Pending()
                seen = ev.observed_at
                self.pending[key] = Pending(
                    p.count + 1, p.bytes + ev.size,
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
        if new_group:
            return Step.LAST
        for key in touched:
            rule = key[0]
            spec = self.config.rules[rule]
            situation = situate(spec, self.states[key], self.pending.get(key, Pending()),
                                self.flags.get(rule), self.active.get(rule, 0),
                                self.schedules[rule], None, at)
            decision = decide(spec.when, situation, at, explain=False)
            if decision.fire:
                return Step.LAST
            self.armed[key] = (decision.next_check_at, at)
        return Step.MORE
