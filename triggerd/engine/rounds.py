"""The engine's store-thread side: each function is one unit of work that returns a `Round`.

Everything in this module runs on the store thread (the daemon's single thread for SQL), and
synchronously: it stores a source's batch, decides for the rule groups it touched, and writes
the triggers that fire, then returns what it did as data. The loop side
(`triggerd.engine.engine.Engine`) chooses when to run a unit and hands the round on; nothing
here calls back into the loop, the dispatcher or a source.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from triggerd.config.loader import Config
from triggerd.engine.assess import assess, explained
from triggerd.engine.matching import RuleSet
from triggerd.engine.policy import Decision, on_busy
from triggerd.errors import StoreError
from triggerd.interfaces import Clock, StoreWork
from triggerd.model import Event, Trigger
from triggerd.ops.failpoints import hit as failpoint
from triggerd.store.contract import EngineStore
from triggerd.store.sql import Claim, IngestResult, Key, NewTrigger

log = logging.getLogger("triggerd.engine")
MAX_ROUNDS = 4  # decide again after a lost race (another replica fired), at most this often


@dataclass
class Round:
    """What one trip to the store thread did, handed back to the event loop.

    `fired`: the triggers written (each with its queued job); `decisions`: per rule group, what
    arms its timer; `ingested`: the batch's new and duplicate events, for a source's batch;
    `claims`: the jobs of `fired` claimed in the same trip (by job id; filled by the step the
    runtime runs after the engine's unit, the dispatcher's); `failed`: the store failed while
    deciding, after the batch was stored and `fired` written (those must still be handed on);
    `manual`: the reason of a manual fire."""

    fired: list[Trigger] = field(default_factory=list)
    decisions: dict[Key, Decision] = field(default_factory=dict)
    ingested: IngestResult | None = None
    claims: dict[str, Claim] = field(default_factory=dict)
    failed: StoreError | None = None
    manual: str | None = None


class Rounds:
    """The units of work: `ingest` (a source's batch), `decide` (rule groups), `fire` (manual).

    Holds the config it decides with; the engine swaps it (`use`) under its lock, between
    units, on a reload."""

    def __init__(self, config: Config, store: EngineStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.use(config)

    def use(self, config: Config) -> None:
        self.config = config
        self.rules = RuleSet(config.rules)

    def ingest(self, source: str, events: Sequence[Event],
               also: StoreWork | None) -> Round:
        """Store a source's batch (and `also`, in its transaction), then decide for the groups
        it touched. A store error while storing raises (nothing is stored: the source retries);
        one while deciding is the round's `failed` (the events are stored)."""
        rules = self.rules
        owners = {e.source for e in events}  # a notification source stores a bucket's events
        listening = (rules.listening(source) if owners <= {source}
                     else set().union(*map(rules.listening, owners)))
        result = self.store.ingest(source, self.config.source_type(source), events,
                                   self.clock.now(), rules.classify, also, listening)
        if not result.touched:
            return Round(ingested=result)
        done = self.decide(result.touched, None)  # a round of its own: completed here
        done.ingested = result
        return done

    def decide(self, keys: set[Key] | None, at_slot: dict[str, datetime] | None) -> Round:
        """Decide for `keys` (every known group if None) and write the triggers that fire;
        `at_slot` marks the scheduled check of a rule for that slot."""
        done = Round()
        try:
            self._decide(keys, at_slot, done)
        except StoreError as exc:
            done.failed = exc
        return done

    def decide_rule(self, rule: str, at_slot: dict[str, datetime] | None) -> Round:
        """Decide for every group of `rule` (with state or pending events, or '')."""
        try:
            keys = self.store.rule_keys(rule) or {(rule, "")}
        except StoreError as exc:
            return Round(failed=exc)
        return self.decide(keys, at_slot)

    def _decide(self, keys: set[Key] | None, at_slot: dict[str, datetime] | None,
                done: Round) -> None:
        todo = keys
        for _round in range(MAX_ROUNDS):
            now = self.clock.now()
            again: set[Key] = set()
            found = assess(self.config, self.store, now, todo, at_slot, explain=False)
            for key, a in found.items():
                done.decisions[key] = a.decision
                if not a.decision.fire:
                    continue
                decision = explained(self.config, a, now)  # the words, for the trigger
                spec = self.config.rules[key[0]].dispatch
                supersede, skipped = on_busy(spec.on_busy, a.active_jobs >= spec.concurrency)
                trig = self.store.create_trigger(NewTrigger(
                    rule=key[0], group=key[1], expected_seq=a.state.seq, fired_at=now,
                    reason=decision.reason, kind=decision.kind, backend=spec.backend,
                    params=dict(spec.params), max_attempts=spec.retry.attempts,
                    supersede=supersede, skipped=skipped))
                if trig is None:
                    again.add(key)  # lost a race (another replica fired): decide again now
                    continue
                done.fired.append(trig)
                failpoint("after-trigger-write")  # crash tests (store thread)
                # the group's next timer is decided shortly by the timer task: not here,
                # where it would delay the trigger's job (the latency)
                done.decisions[key] = replace(decision, next_check_at=now)
            if not again:
                return
            todo, at_slot = again, None

    def fire(self, rule: str, reason: str, request_id: int | None) -> Round:
        """A manual trigger for each group of `rule` with pending events (or the '' group);
        ignores cooldown, schedule and pause, and queues behind running jobs (under
        `on_busy: coalesce` it supersedes the group's job still waiting in the queue, as a
        trigger of the rule's own would; under `skip` it is never skipped). A request
        already answered (`request_id`) fires nothing."""
        done = Round(manual=reason)
        if request_id is not None and self.store.triggers_of_request(request_id):
            return done
        now = self.clock.now()
        spec = self.config.rules[rule]
        supersede = "manual fire" if spec.dispatch.on_busy == "coalesce" else None
        groups = [g for (r, g) in self.store.pending([rule]) if r == rule] or [""]
        for grp in groups:
            for _attempt in range(3):
                state = self.store.group_states([rule]).get((rule, grp))
                trig = self.store.create_trigger(NewTrigger(
                    rule=rule, group=grp, expected_seq=state.seq if state else 0,
                    fired_at=now, reason=reason, kind="manual",
                    backend=spec.dispatch.backend, params=dict(spec.dispatch.params),
                    max_attempts=spec.dispatch.retry.attempts, request_id=request_id,
                    supersede=supersede))
                if trig is not None:
                    done.fired.append(trig)
                    break
        return done
