"""The engine: stores what sources emit, decides with the pure policy, writes triggers.

It owns no SQL and no clock of its own: the store is called through `call` (the daemon's
single store thread, so the event loop never blocks), time comes from the injected clock.
Decisions happen when events arrive, when a rule's earliest timer falls due, at scheduled
checks, and when a job finishes — never by polling every rule in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection

from triggerd.aio import to_the_end, wait_event
from triggerd.config.loader import Config
from triggerd.engine.assess import assess, rule_schedule
from triggerd.engine.matching import RuleSet
from triggerd.engine.policy import Decision
from triggerd.errors import StoreError
from triggerd.interfaces import Clock
from triggerd.model import Event, Trigger
from triggerd.ops.failpoints import hit as failpoint
from triggerd.store.sql import Claim, IngestResult, Key, NewTrigger, Store

log = logging.getLogger("triggerd.engine")
T = TypeVar("T")
Call = Callable[[Callable[[], Any]], Awaitable[Any]]
# what one decision round fired, decided, and claimed for dispatch (job id -> claim)
Decided = tuple[list[Trigger], dict[Key, Decision], dict[str, Claim]]


class Claimer(Protocol):
    """The dispatcher, seen from the engine: a trigger's job can be claimed in the same trip
    to the store thread that wrote the trigger (the latency from an event to its backend)."""

    def claim(self, job_id: str) -> Claim:
        """Claim the job if its rule has a free slot (runs on the store thread)."""

    def claimed(self, claim: Claim) -> None:
        """Start the attempt of a job claimed by `claim` (on the event loop)."""


class PartlyDecided(StoreError):
    """The store failed in a decision round after some triggers were written (and their jobs
    perhaps claimed): `decided` holds those, to be handed on before the error is handled (a
    claimed job left unstarted would stay `running` until this daemon stops)."""

    def __init__(self, message: str, decided: Decided) -> None:
        super().__init__(message)
        self.decided = decided


class Engine:
    def __init__(self, config: Config, store: Store, clock: Clock, call: Call,
                 on_trigger: Callable[[Trigger], None], claimer: Claimer | None = None) -> None:
        self.config = config
        self.rules = RuleSet(config.rules)
        self.store = store
        self.clock = clock
        self.call = call
        self.on_trigger = on_trigger
        self.claimer = claimer
        self.due: dict[Key, datetime] = {}
        self.slot_due: dict[str, datetime] = {}
        self.schedules = {r: s for r in config.rules if (s := rule_schedule(config, r))}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._owned_slots: dict[str, datetime] = {}  # claimed by us, check not yet done

    # -- input ----------------------------------------------------------------------------------
    async def submit(self, source: str, events: Sequence[Event],
                     also: Callable[[Connection], None] | None = None) -> IngestResult:
        """Store a batch from a source (and `also`, in the same transaction) and decide for
        the rule groups it touched, in one trip to the store thread (the latency from an event
        to its trigger)."""
        source_type = self.config.source_type(source)

        def work() -> tuple[IngestResult, Decided | StoreError | None]:
            rules = self.rules
            result = self.store.ingest(source, source_type, events, self.clock.now(),
                                       rules.classify, also, rules.listening(source))
            if not result.touched:
                return result, None
            try:
                return result, self._evaluate_sync(result.touched, None)
            except StoreError as exc:  # the events are stored: decide again shortly
                return result, exc

        async with self._lock:  # one decision round at a time within this daemon
            # held until the store thread is done, even if this source is cancelled: a
            # reload waiting on the lock must not swap the rules under a running batch
            outcome = await to_the_end(self.call(work), self._late(
                lambda late: self._ingested(source, *late)))
        return self._ingested(source, *outcome)

    def _late(self, hand_on: Callable[[T], object]) -> Callable[[asyncio.Future[T]], None]:
        """What to do with a store trip that ended after its caller was cancelled: hand on
        what it decided (its triggers are written, their jobs perhaps claimed and started on
        the store thread), as the caller would have."""
        def late(trip: asyncio.Future[T]) -> None:
            exc = trip.exception()
            if exc is None:
                hand_on(trip.result())
            elif isinstance(exc, PartlyDecided):
                self._decided(*exc.decided)
        return late

    def _ingested(self, source: str, result: IngestResult,
                  decided: Decided | StoreError | None) -> IngestResult:
        """Hand on what a batch's trip to the store decided; arm a retry if deciding failed."""
        log.debug("source %s: %d new, %d duplicate event(s)", source, len(result.new),
                  result.duplicates, extra={"source": source})
        if isinstance(decided, PartlyDecided):
            self._decided(*decided.decided)
        if isinstance(decided, StoreError):
            # the source may acknowledge the events: they are stored; decide shortly
            log.warning("deciding after ingest failed (%s); retrying in 1s", decided)
            retry_at = self.clock.now() + timedelta(seconds=1)
            for key in result.touched:
                self.due[key] = retry_at
            self._wake.set()
        elif decided is not None:
            self._decided(*decided)
        return result

    async def evaluate_rule(self, rule: str, at_slot: dict[str, datetime] | None = None
                            ) -> list[Trigger]:
        """Decide for every group of a rule (e.g. after one of its jobs ended: `concurrency`
        and `on_busy` are per rule, so every group may be free to fire now)."""
        if rule not in self.config.rules:
            return []
        # every group of the rule (with state or pending events, or ''), in the same trip
        return await self._decide(lambda: self._evaluate_sync(
            self.store.rule_keys(rule) or {(rule, "")}, at_slot))

    async def _decide(self, work: Callable[[], Decided]) -> list[Trigger]:
        """Run a decision round on the store thread and hand on what it fired."""
        async with self._lock:  # one decision round at a time within this daemon
            try:
                decided: Decided = await to_the_end(self.call(work), self._late(
                    lambda late: self._decided(*late)))
            except PartlyDecided as exc:
                self._decided(*exc.decided)
                raise
        self._decided(*decided)
        return decided[0]

    async def start(self) -> None:
        """At start-up: decide for every known group, and catch up a missed scheduled check."""
        now = self.clock.now()
        ungrouped = [r for r, spec in self.config.rules.items() if spec.group_by is None]
        await self.call(lambda: self.store.ensure_rules(self.config.rules, ungrouped, now))
        for rule, sched in self.schedules.items():
            last = await self._last_slot(rule)
            prev = sched.last_at_or_before(now)
            unfinished = await self._unfinished_slot(rule)
            if unfinished is not None:
                log.info("rule %s: redoing the scheduled check of %s interrupted by a crash",
                         rule, unfinished.isoformat(), extra={"rule": rule})
                self._owned_slots[rule] = unfinished
                self.slot_due[rule] = unfinished
            elif last is not None and prev is not None and last < prev:
                log.info("rule %s: running the scheduled check of %s missed while down",
                         rule, prev.isoformat(), extra={"rule": rule})
                self.slot_due[rule] = prev
            else:
                nxt = sched.next_after(now)
                if nxt is not None:
                    self.slot_due[rule] = nxt
        await self.evaluate(None)

    async def reconfigure(self, config: Config) -> None:
        """Swap in a reloaded config (SIGHUP): rules added, changed and removed take effect at
        once; pending events stay in the store (an unchanged or changed rule keeps its own, a
        removed rule's are ignored). A rule whose schedule changed waits for its next slot."""
        old = self.config
        async with self._lock:  # no decision round sees half of each config
            self.config = config
            self.rules = RuleSet(config.rules)
            self.schedules = {r: s for r in config.rules if (s := rule_schedule(config, r))}
            for key in [k for k in self.due if k[0] not in config.rules]:
                del self.due[key]
            now = self.clock.now()
            for rule in set(self.slot_due) | set(self.schedules):
                sched = self.schedules.get(rule)
                spec = config.rules[rule].when.schedule if sched else None
                before = old.rules[rule].when.schedule if rule in old.rules else None
                if sched is None:
                    self.slot_due.pop(rule, None)
                    self._owned_slots.pop(rule, None)
                elif rule not in self.slot_due or spec != before or (
                        spec in config.sources and config.sources[spec] != old.sources.get(spec)):
                    nxt = sched.next_after(now)
                    if nxt is not None:
                        self.slot_due[rule] = nxt
        ungrouped = [r for r, spec in config.rules.items() if spec.group_by is None]
        await self.call(lambda: self.store.ensure_rules(config.rules, ungrouped,
                                                        self.clock.now()))
        await self.evaluate(None)

    async def _unfinished_slot(self, rule: str) -> datetime | None:
        found: datetime | None = await self.call(
            lambda: self.store.unfinished_slot(f"rule:{rule}"))
        return found

    async def _last_slot(self, rule: str) -> datetime | None:
        last: datetime | None = await self.call(lambda: self.store.last_slot(f"rule:{rule}"))
        return last

    # -- deciding -------------------------------------------------------------------------------
    async def evaluate(self, keys: Iterable[Key] | None,
                       at_slot: dict[str, datetime] | None = None) -> list[Trigger]:
        keys = set(keys) if keys is not None else None
        return await self._decide(lambda: self._evaluate_sync(keys, at_slot))

    def _decided(self, fired: list[Trigger], decisions: dict[Key, Decision],
                 claims: dict[str, Claim]) -> None:
        """Arm the groups' timers from their decisions and hand the triggers on (with the jobs
        claimed for them in the same trip: those start at once)."""
        now = self.clock.now()
        for key, decision in decisions.items():
            if decision.next_check_at is not None:
                # a timer already due would spin: look again shortly instead
                self.due[key] = max(decision.next_check_at, now + timedelta(milliseconds=200))
            else:
                self.due.pop(key, None)
        self._wake.set()
        for trig in fired:
            claim = claims.get(trig.id)
            if claim is not None and self.claimer is not None:
                self.claimer.claimed(claim)
            self.on_trigger(trig)

    def _evaluate_sync(self, keys: set[Key] | None, at_slot: dict[str, datetime] | None
                       ) -> Decided:
        fired: list[Trigger] = []
        decisions: dict[Key, Decision] = {}
        claims: dict[str, Claim] = {}
        try:
            self._rounds(keys, at_slot, fired, decisions, claims)
        except StoreError as exc:
            if fired:  # written before the failure: they must still be dispatched
                raise PartlyDecided(str(exc), (fired, decisions, claims)) from exc
            raise
        return fired, decisions, claims

    def _rounds(self, keys: set[Key] | None, at_slot: dict[str, datetime] | None,
                fired: list[Trigger], decisions: dict[Key, Decision],
                claims: dict[str, Claim]) -> None:
        todo = keys
        for _round in range(4):
            now = self.clock.now()
            found = assess(self.config, self.store, now, todo, at_slot)
            again: set[Key] = set()
            for key, a in found.items():
                decisions[key] = a.decision
                if not a.decision.fire:
                    continue
                spec = self.config.rules[key[0]]
                busy = a.active_jobs >= spec.dispatch.concurrency
                trig = self.store.create_trigger(NewTrigger(
                    rule=key[0], group=key[1], expected_seq=a.state.seq, fired_at=now,
                    reason=a.decision.reason, kind=a.decision.kind,
                    backend=spec.dispatch.backend, params=dict(spec.dispatch.params),
                    max_attempts=spec.dispatch.retry.attempts, on_busy=spec.dispatch.on_busy,
                    busy=busy))
                if trig is not None:
                    fired.append(trig)
                    failpoint("after-trigger-write")  # crash tests (store thread)
                    if self.claimer is not None and not busy:
                        with contextlib.suppress(StoreError):  # the dispatcher claims it later
                            claims[trig.id] = self.claimer.claim(trig.id)
                    # logged after the claim: a log line is ~5% of the way to the backend
                    log.info("rule %s%s: trigger %s fired: %s (%d event(s))", key[0],
                             f" [{key[1]}]" if key[1] else "", trig.id, trig.reason, trig.events,
                             extra={"rule": key[0], "trigger_id": trig.id})
                    # decide again for the group's next timer shortly, by the timer task:
                    # not here, where it would delay the trigger's job (the latency)
                    decisions[key] = replace(a.decision, next_check_at=now)
                else:
                    again.add(key)  # lost a race (another replica fired): decide again now
            if not again:
                break
            todo, at_slot = again, None

    async def fire(self, rule: str, reason: str, request_id: int | None = None
                   ) -> list[Trigger]:
        """A manual trigger: ignores cooldown, schedule and pause; queues behind running jobs.

        A rule with group_by fires each group that has pending events (or the '' group).
        `request_id` (the CLI request) makes a retried request fire nothing twice."""
        def work() -> list[Trigger]:
            now = self.clock.now()
            if request_id is not None and self.store.triggers_of_request(request_id):
                return []
            spec = self.config.rules[rule]
            pending = self.store.pending([rule])
            groups = [g for (r, g) in pending if r == rule] or [""]
            out = []
            for grp in groups:
                for _attempt in range(3):
                    states = self.store.group_states([rule])
                    state = states.get((rule, grp))
                    trig = self.store.create_trigger(NewTrigger(
                        rule=rule, group=grp, expected_seq=state.seq if state else 0,
                        fired_at=now, reason=reason, kind="manual",
                        backend=spec.dispatch.backend, params=dict(spec.dispatch.params),
                        max_attempts=spec.dispatch.retry.attempts, on_busy="queue",
                        request_id=request_id))
                    if trig is not None:
                        out.append(trig)
                        break
            return out

        def hand_on(fired: list[Trigger]) -> None:
            for trig in fired:
                log.info("rule %s: manual trigger %s: %s", rule, trig.id, reason,
                         extra={"rule": rule, "trigger_id": trig.id})
                self.on_trigger(trig)

        async with self._lock:
            fired: list[Trigger] = await to_the_end(self.call(work), self._late(hand_on))
        hand_on(fired)
        return fired

    async def scheduled_check(self, rule: str, slot: datetime) -> None:
        """Run the rule's check for `slot`, once across replicas: claim the slot, decide, mark
        it done. A store error leaves it due (retried); a crash leaves it claimed but not done,
        and the next start redoes it."""
        sched = self.schedules[rule]
        key = f"rule:{rule}"
        claimed = self._owned_slots.get(rule) == slot or await self.call(
            lambda: self.store.claim_slot(key, slot, self.clock.now()))
        if claimed:
            self._owned_slots[rule] = slot
            await self.evaluate_rule(rule, at_slot={rule: slot})
            await self.call(lambda: self.store.finish_slot(key, slot, self.clock.now()))
            self._owned_slots.pop(rule, None)
        nxt = sched.next_after(max(slot, self.clock.now()))
        if nxt is not None:
            self.slot_due[rule] = nxt
        else:
            self.slot_due.pop(rule, None)

    def poke(self) -> None:
        self._wake.set()

    # -- timers ---------------------------------------------------------------------------------
    async def run_timers(self) -> None:
        """Sleep until the earliest due decision or scheduled check, handle it, repeat."""
        while True:
            now = self.clock.now()
            slots = [(r, t) for r, t in self.slot_due.items() if t <= now]
            due = {k for k, t in self.due.items() if t <= now}
            try:
                for rule, slot in slots:
                    await self.scheduled_check(rule, slot)
                if due:
                    await self.evaluate(due)
                    for k in due:  # keep a key whose evaluation did not set a new time
                        if self.due.get(k) is not None and self.due[k] <= now:
                            self.due.pop(k, None)
            except StoreError as exc:  # a lost connection: the timers stay, retry shortly
                log.warning("timers: store unavailable (%s); retrying in 1s", exc)
                await asyncio.sleep(1.0)
                continue
            times = list(self.due.values()) + list(self.slot_due.values())
            self._wake.clear()
            if slots or due:
                continue
            delay = None
            if times:
                delay = max(0.001, (min(times) - self.clock.now()).total_seconds() + 0.001)
            await wait_event(self._wake, delay)
