"""The engine's event-loop side: when to decide, and what to do with what was decided.

Decisions happen when a source's batch arrives (`submit`), when a rule group's earliest timer
falls due and at scheduled checks (`run_timers`), when a job ends (`evaluate_rule`) and on a
manual fire (`fire`): never by polling every rule in a loop. Each is one unit of work from
`triggerd.engine.rounds`, run on the store thread by `call` (so the event loop never blocks on
SQL); the `Round` it returns arms the timers here and is then handed to `on_round`. The engine
knows nothing of what runs after its unit in the same trip (the runtime has the dispatcher
claim the fired triggers' jobs there: `then`) or of who receives the round: the runtime wires
both (`triggerd.runtime.flow`). Time comes from the injected clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from triggerd.aio import to_the_end, wait_event
from triggerd.config.loader import Config
from triggerd.engine.assess import rule_schedule
from triggerd.engine.matching import RuleSet
from triggerd.engine.policy import Decision
from triggerd.engine.rounds import Round, Rounds
from triggerd.errors import StoreError
from triggerd.interfaces import Clock, StoreWork
from triggerd.model import Event, Trigger
from triggerd.store.contract import EngineStore
from triggerd.store.sql import IngestResult, Key

log = logging.getLogger("triggerd.engine")
T = TypeVar("T")
ARM_DELAY = timedelta(milliseconds=200)  # a timer is armed at least this far on (see `arm`)
Call = Callable[[Callable[[], T]], Awaitable[T]]  # runs a function on the store thread
Unit = Callable[[], Round]  # one unit of work (triggerd.engine.rounds), for the store thread


def _as_is(done: Round) -> Round:
    return done


class Engine:
    """`call` runs store work on the store thread; `on_round` receives, on the loop, every
    round that fired a trigger or decided for a group; `then` is a step the runtime adds to
    every round's trip, on the store thread right after the engine's unit (the dispatcher
    claims the fired triggers' jobs there: the latency from an event to its backend)."""

    def __init__(self, config: Config, store: EngineStore, clock: Clock, call: Call[Any],
                 on_round: Callable[[Round], None],
                 then: Callable[[Round], Round] = _as_is) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.call = call
        self.on_round = on_round
        self.then = then
        self.units = Rounds(config, store, clock)
        self.due: dict[Key, datetime] = {}
        self.slot_due: dict[str, datetime] = {}
        self.schedules = {r: s for r in config.rules if (s := rule_schedule(config, r))}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._owned_slots: dict[str, datetime] = {}  # claimed by us, check not yet done

    @property
    def rules(self) -> RuleSet:
        """The rules as matched now (with their counters, e.g. `where` errors)."""
        return self.units.rules

    # -- running a unit of work -----------------------------------------------------------------
    async def _run(self, unit: Unit) -> Round:
        """Run `unit` on the store thread and hand its round on. One round at a time within
        this daemon: the lock is held until the store thread is done, even if the caller is
        cancelled (a reload waiting on it must not swap the rules under a running unit), and a
        round that ends after its caller was cancelled is still handed on (its triggers are
        written, their jobs perhaps claimed and started)."""
        async with self._lock:
            done: Round = await to_the_end(self.call(lambda: self.then(unit())), self._late)
        self._hand_on(done)
        return done

    def _late(self, trip: asyncio.Future[Round]) -> None:
        if trip.exception() is None:
            self._hand_on(trip.result())

    def _hand_on(self, done: Round) -> None:
        """Arm the groups' timers from the round's decisions, log what fired, hand it on."""
        now = self.clock.now()
        for key, decision in done.decisions.items():
            self.arm(key, decision, now)
        if done.failed is not None and done.ingested is not None:
            # the batch is stored (the source may acknowledge it): decide again shortly
            log.warning("deciding after ingest failed (%s); retrying in 1s", done.failed)
            for key in done.ingested.touched:
                self.due[key] = now + timedelta(seconds=1)
        self._wake.set()
        for trig in done.fired:
            _log_fired(trig, done.manual)
        if done.fired or done.decisions:
            self.on_round(done)

    def arm(self, key: Key, decision: Decision, now: datetime) -> None:
        """Set a group's timer from its decision at `now`: its next check, at least
        `ARM_DELAY` on (a timer already due would spin: look again shortly instead), or none.
        (Also the replay's fast lane, for the timers it decides without a trip:
        triggerd.simulate.lookahead.)"""
        if decision.next_check_at is not None:
            self.due[key] = max(decision.next_check_at, now + ARM_DELAY)
        else:
            self.due.pop(key, None)

    # -- input ----------------------------------------------------------------------------------
    async def submit(self, source: str, events: Sequence[Event],
                     also: StoreWork | None = None) -> IngestResult:
        """Store a batch from a source (and `also`, in the same transaction) and decide for
        the rule groups it touched, in one trip to the store thread (the latency from an event
        to its trigger)."""
        done = await self._run(lambda: self.units.ingest(source, events, also))
        assert done.ingested is not None  # noqa: S101 - ingest's rounds always carry it
        log.debug("source %s: %d new, %d duplicate event(s)", source, len(done.ingested.new),
                  done.ingested.duplicates, extra={"source": source})
        return done.ingested

    async def evaluate(self, keys: Iterable[Key] | None,
                       at_slot: dict[str, datetime] | None = None) -> list[Trigger]:
        """Decide for `keys` (every known group if None); a store error raises after what
        fired before it was handed on."""
        wanted = set(keys) if keys is not None else None
        return _fired(await self._run(lambda: self.units.decide(wanted, at_slot)))

    async def evaluate_rule(self, rule: str, at_slot: dict[str, datetime] | None = None
                            ) -> list[Trigger]:
        """Decide for every group of a rule (e.g. after one of its jobs ended: `concurrency`
        and `on_busy` are per rule, so every group may be free to fire now)."""
        if rule not in self.config.rules:
            return []
        return _fired(await self._run(lambda: self.units.decide_rule(rule, at_slot)))

    async def fire(self, rule: str, reason: str, request_id: int | None = None
                   ) -> list[Trigger]:
        """A manual trigger (see `Rounds.fire`); `request_id` (the CLI request) makes a
        retried request fire nothing twice."""
        return (await self._run(lambda: self.units.fire(rule, reason, request_id))).fired

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
            self.units.use(config)
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


def _fired(done: Round) -> list[Trigger]:
    """What a decision round fired; its store error, once what fired before it is handed on."""
    if done.failed is not None:
        raise done.failed
    return done.fired


def _log_fired(trig: Trigger, manual: str | None) -> None:
    if manual is not None:
        log.info("rule %s: manual trigger %s: %s", trig.rule, trig.id, manual,
                 extra={"rule": trig.rule, "trigger_id": trig.id})
        return
    log.info("rule %s%s: trigger %s fired: %s (%d event(s))", trig.rule,
             f" [{trig.group}]" if trig.group else "", trig.id, trig.reason, trig.events,
             extra={"rule": trig.rule, "trigger_id": trig.id})
