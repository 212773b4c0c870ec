"""The `cron` source: one `tick` event per slot of a schedule.

Contracts
    * Each slot becomes at most one stored event, whoever emits it: the fingerprint is
      `"{name}@{slot in UTC ISO 8601}"`, so two replicas, a restart, or a catch-up re-emitting
      the same slot produce one event (the store deduplicates on it).
    * The record of what fired is our own checkpoint, `{"last_slot": ISO 8601}`: every slot at
      or before it counts as handled (emitted, or deliberately skipped by `catch_up`). It is saved
      only after `ctx.emit` returned, so a crash re-emits rather than loses a tick.
    * First start (no checkpoint): nothing is emitted for the past; the newest past slot becomes
      the checkpoint, so ticks missed during a later downtime follow `catch_up`.
    * After a downtime, the slots missed since the checkpoint follow `catch_up`: `none` emits
      none, `last` only the newest, `all` the newest `max_catch_up` of them, in one batch,
      flagged `"catch_up": true`. A process that wakes late (suspend, a stalled store) emits the
      tick it waited for and treats any later slots it slept through the same way.
    * Times come from `ctx.clock`; waiting uses the injectable `sleep` in chunks of at most
      `max_sleep` seconds, re-reading the clock after each, so an early wake-up, a wall-clock
      jump or a suspend is noticed. Cancellation is never swallowed.

APScheduler only parses the expression and computes fire times (`triggerd.language.schedules`); its
schedulers and job stores are not used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from triggerd.plugin import (
    Duration,
    Event,
    Schedule,
    SourceContext,
    Strict,
    validate_cron,
    validate_timezone,
)

__all__ = ["CronOptions", "CronSource", "tick_event", "tick_fingerprint"]

log = logging.getLogger(__name__)


class CronOptions(Strict):
    """Options of a `type: cron` source: exactly one of `schedule` (cron) or `every` (interval)."""

    type: Literal["cron"]
    """One `tick` event per slot of a schedule (`schedule` or `every`)."""
    schedule: str | None = None
    """A standard 5-field cron expression read in `timezone`, e.g. "0 2 * * *"."""
    every: Duration | None = None
    """A fixed interval (>= 1s); slots are multiples of it since 1970-01-01T00:00Z."""
    timezone: str = "UTC"
    """IANA zone the cron expression is read in (no effect on `every`)."""
    catch_up: Literal["none", "last", "all"] = "last"
    """What to do with ticks missed while the daemon was down."""
    max_catch_up: int = Field(10, ge=1)
    """With `catch_up: all`, replay at most this many (the newest) missed ticks."""

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            error = validate_cron(value)
            if error is not None:
                raise ValueError(error)
        return value

    @field_validator("every")
    @classmethod
    def _valid_every(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(seconds=1):
            raise ValueError("`every` must be at least 1s")
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        validate_timezone(value)
        return value

    @model_validator(mode="after")
    def _schedule_or_every(self) -> CronOptions:
        if self.schedule is not None and self.every is not None:
            raise ValueError(
                "set either `schedule` (a cron expression) or `every` (an interval), not both"
            )
        if self.schedule is None and self.every is None:
            raise ValueError(
                "set `schedule` (a cron expression like '0 2 * * *') "
                "or `every` (an interval like 6h)"
            )
        return self

    def build_schedule(self) -> Schedule:
        """The `Schedule` these options describe (they were validated, so this cannot fail)."""
        if self.schedule is not None:
            return Schedule.cron(self.schedule, self.timezone)
        if self.every is None:  # unreachable: _schedule_or_every requires one of the two
            raise ValueError("set `schedule` or `every`")
        return Schedule.every(self.every, self.timezone)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def tick_fingerprint(source: str, slot: datetime) -> str:
    """The dedup key of the tick for `slot`: the same in every process that computes it."""
    return f"{source}@{_iso(slot)}"


def _parse_checkpoint(name: str, data: dict[str, Any] | None) -> datetime | None:
    if not data:
        return None
    raw = data.get("last_slot") if isinstance(data, dict) else None
    try:
        last = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        last = None
    if last is None or last.tzinfo is None:
        log.warning("cron source %s: ignoring unreadable checkpoint %r; starting afresh",
                    name, data)
        return None
    return last.astimezone(UTC)


class CronSource:
    """Emits a `tick` event for every slot of its schedule; see the module docstring."""

    Options = CronOptions

    def __init__(
        self,
        name: str,
        options: CronOptions,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_sleep: float = 30.0,
    ) -> None:
        """`sleep` and `max_sleep` exist for tests; the daemon passes only name and options."""
        self.name = name
        self.options = options
        self.schedule = options.build_schedule()
        self._sleep = sleep
        self._max_sleep = max_sleep

    async def run(self, ctx: SourceContext) -> None:
        """Catch up on missed ticks, then emit each tick at its time, until cancelled."""
        try:
            last = await self._start(ctx)
            ctx.set_health(True)
            while True:
                slot = self.schedule.next_after(max(last, ctx.clock.now()))
                if slot is None:
                    log.warning("cron source %s: %s never fires again", self.name,
                                self.schedule.description)
                    await asyncio.get_running_loop().create_future()  # until cancelled
                    return
                await self._sleep_until(ctx, slot)
                last = await self._emit_due(ctx, after=slot, now=ctx.clock.now(), live=slot)
        except Exception as exc:
            ctx.set_health(False, f"{type(exc).__name__}: {exc}")
            raise

    async def _start(self, ctx: SourceContext) -> datetime:
        """Apply `catch_up` to the slots missed since the checkpoint; the newest handled time."""
        now = ctx.clock.now()
        last = _parse_checkpoint(self.name, await ctx.load_checkpoint())
        if last is None:
            baseline = self.schedule.last_at_or_before(now) or now
            await ctx.save_checkpoint({"last_slot": _iso(baseline)})
            log.info("cron source %s: first start, %s; no catch-up", self.name,
                     self.schedule.description)
            return baseline
        return await self._emit_due(ctx, after=last, now=now, live=None)

    async def _emit_due(self, ctx: SourceContext, *, after: datetime, now: datetime,
                        live: datetime | None) -> datetime:
        """Emit `live` (if any) and the slots in (after, now] per `catch_up`, in one batch;
        then save the checkpoint. Returns the newest slot now handled (or `after`)."""
        policy = self.options.catch_up
        limit = self.options.max_catch_up if policy == "all" else 1
        missed = self.schedule.slots_between(after, now, limit)
        replay = [] if policy == "none" else missed
        events = [self._tick(ctx, live, catch_up=False)] if live is not None else []
        events += [self._tick(ctx, slot, catch_up=True) for slot in replay]
        if missed:
            log.info("cron source %s: ticks missed up to %s; catch_up=%s replays %d of them",
                     self.name, _iso(missed[-1]), policy, len(replay))
        if events:
            await ctx.emit(events)
        newest = missed[-1] if missed else (live if live is not None else after)
        if newest != after or live is not None:
            await ctx.save_checkpoint({"last_slot": _iso(newest)})
        return max(newest, after)

    async def _sleep_until(self, ctx: SourceContext, slot: datetime) -> None:
        """Return once `ctx.clock` reaches `slot`, however early the sleeps wake."""
        while True:
            delay = (slot - ctx.clock.now()).total_seconds()
            if delay <= 0:
                return
            await self._sleep(min(delay, self._max_sleep))

    def _tick(self, ctx: SourceContext, slot: datetime, *, catch_up: bool) -> Event:
        return tick_event(self.name, self.schedule, slot, ctx.clock.now(), catch_up=catch_up)


def tick_event(source: str, schedule: Schedule, slot: datetime, now: datetime, *,
               catch_up: bool = False) -> Event:
    """The `tick` event of `source` for `slot`, observed at `now`: pure, so that `triggerd
    test` (triggerd.simulate) builds exactly the ticks this source emits."""
    return Event(
        source=source,
        kind="tick",
        subject=source,
        fingerprint=tick_fingerprint(source, slot),
        payload={
            "scheduled_for": _iso(slot),
            "schedule": schedule.description,
            "catch_up": catch_up,
        },
        observed_at=now,
    )
