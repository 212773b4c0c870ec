"""What every rule group looks like now: its state, pending events, flags and the policy's
decision (`assess`), read in one store read. The engine decides from it; `triggerd status` and
`triggerd explain` show it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from triggerd.config.loader import Config
from triggerd.config.schema import RuleSpec
from triggerd.engine.policy import Decision, Situation, decide
from triggerd.language.schedules import Schedule
from triggerd.model import GroupState, Pending, RuleFlags
from triggerd.store.contract import EngineStore
from triggerd.store.sql import Key

NOTHING_PENDING = Pending()  # a group without pending events (shared: frozen)
NO_FLAGS = RuleFlags()  # a rule no operator paused (shared: frozen)


def rule_schedule(config: Config, rule: str) -> Schedule | None:
    spec = config.rules[rule].when.schedule
    if spec is None:
        return None
    if spec in config.sources:
        build: Callable[[], Schedule] = getattr(config.sources[spec], "build_schedule")  # noqa: B009
        return build()
    return Schedule.cron(spec)


@dataclass(frozen=True)
class Assessment:
    key: Key
    pending: Pending
    state: GroupState
    flags: RuleFlags
    active_jobs: int
    decision: Decision
    situation: Situation


def assess(config: Config, store: EngineStore, now: datetime,
           keys: Iterable[Key] | None = None, at_slot: dict[str, datetime] | None = None, *,
           explain: bool = True) -> dict[Key, Assessment]:
    """Decide for the given rule groups (all known groups if None) from the store's state.

    Synchronous and side-effect free: the CLI's `status` and `explain` use it as it is. With
    `explain=False` the decisions carry no words (see `policy.decide`; `explained` adds
    them to one).
    """
    wanted = set(keys) if keys is not None else None
    rules = {k[0] for k in wanted} if wanted is not None else set(config.rules)
    rules &= set(config.rules)
    if not rules:
        return {}
    snap = store.snapshot(rules)
    states, pending, flags, active = snap.states, snap.pending, snap.flags, snap.active
    candidates = wanted if wanted is not None else set(states) | set(pending)
    schedules = {r: rule_schedule(config, r) for r in rules}
    out: dict[Key, Assessment] = {}
    for key in sorted(candidates):  # a fixed order: the same run decides the same way
        rule, grp = key
        if rule not in rules:
            continue
        state = states.get(key) or GroupState(rule=rule, group=grp, seq=0, created_at=now)
        situation = situate(config.rules[rule], state, pending.get(key, NOTHING_PENDING),
                            flags.get(rule), active.get(rule, 0), schedules[rule],
                            (at_slot or {}).get(rule), now)
        out[key] = Assessment(key, situation.pending, state, situation.flags,
                              active.get(rule, 0), decide(config.rules[rule].when, situation,
                                                          now, explain=explain), situation)
    return out


def explained(config: Config, a: Assessment, now: datetime) -> Decision:
    """The decision of `a`, with its words (the reason a trigger records)."""
    return decide(config.rules[a.key[0]].when, a.situation, now)


def situate(spec: RuleSpec, state: GroupState, pending: Pending, flags: RuleFlags | None,
            active: int, sched: Schedule | None, slot: datetime | None, now: datetime
            ) -> Situation:
    """What `decide` is given for one group of the rule `spec` (also the replay's lookahead,
    triggerd.simulate.lookahead)."""
    return Situation(
        pending=pending, state=state, flags=flags or NO_FLAGS,
        busy=active >= spec.dispatch.concurrency, on_busy=spec.dispatch.on_busy,
        scheduled=sched is not None, at_slot=slot,
        next_slot=sched.next_after(slot or now) if sched else None)
