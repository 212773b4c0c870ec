"""The cron source: first start, catch-up policies, live ticks, dedup keys, cancellation, options.

Time is a ManualClock moved by a fake `sleep`, except in the one test that waits for a real
`every: 1s` tick. Tests wait on conditions (with timeouts), never on wall-clock sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from triggerd.clock import ManualClock, SystemClock
from triggerd.interfaces import Clock, Source
from triggerd.model import Event
from triggerd.registry import source_class
from triggerd.sources.cron import CronOptions, CronSource, tick_fingerprint

NAME = "nightly"
NOW = datetime(2026, 1, 1, 12, 2, tzinfo=UTC)  # 2 minutes after a 5-minute slot


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 1, 1, hour, minute, second, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.isoformat()


class FakeContext:
    """A SourceContext that records what the source did, in order, and lets tests wait on it."""

    def __init__(self, clock: Clock, checkpoint: dict[str, Any] | None = None,
                 name: str = NAME) -> None:
        self.name = name
        self.clock = clock
        self.checkpoint = checkpoint
        self.batches: list[list[Event]] = []
        self.saved: list[dict[str, Any]] = []
        self.health: list[tuple[bool, str | None]] = []
        self.log: list[str] = []
        self.emit_error: Exception | None = None
        self._changed = asyncio.Event()

    @property
    def events(self) -> list[Event]:
        return [e for batch in self.batches for e in batch]

    async def emit(self, events: Sequence[Event]) -> None:
        if self.emit_error is not None:
            raise self.emit_error
        self.batches.append(list(events))
        self.log.append("emit")
        self._changed.set()

    async def load_checkpoint(self) -> dict[str, Any] | None:
        return dict(self.checkpoint) if self.checkpoint is not None else None

    async def save_checkpoint(self, data: dict[str, Any]) -> None:
        self.checkpoint = dict(data)
        self.saved.append(dict(data))
        self.log.append("save")
        self._changed.set()

    def set_health(self, healthy: bool, error: str | None = None) -> None:
        self.health.append((healthy, error))
        self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


class FakeSleep:
    """Moves the ManualClock forward instead of waiting.

    After `budget` calls it blocks until cancelled (so a test sees a bounded number of ticks).
    `early=True` wakes every other call halfway, as a coarse or skewed timer would; `extra`
    adds a one-off jump (a suspend) to the first call.
    """

    def __init__(self, clock: ManualClock, budget: int = 1_000, *, early: bool = False,
                 extra: timedelta = timedelta(0)) -> None:
        self.clock = clock
        self.budget = budget
        self.early = early
        self.extra = extra
        self.calls: list[float] = []
        self.blocked = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.calls.append(delay)
        if len(self.calls) > self.budget:
            self.blocked.set()
            await asyncio.Event().wait()  # until cancelled
        step = delay / 2 if self.early and len(self.calls) % 2 else delay
        self.clock.advance(timedelta(seconds=step) + self.extra)
        self.extra = timedelta(0)
        await asyncio.sleep(0)


def options(**overrides: Any) -> CronOptions:
    data: dict[str, Any] = {"type": "cron", "every": "5m"}
    data.update(overrides)
    return CronOptions.model_validate(data)


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel the source and check it honours cancellation promptly."""
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert task in done, "the source did not stop within 2s of cancellation"
    assert task.cancelled()


async def start(source: CronSource, ctx: FakeContext) -> asyncio.Task[None]:
    task = asyncio.create_task(source.run(ctx))
    await ctx.wait_until(lambda: bool(ctx.health) or task.done())
    return task


# --- start-up ---------------------------------------------------------------------------------


async def test_first_start_emits_nothing_for_the_past() -> None:
    clock = ManualClock(NOW)
    ctx, sleep = FakeContext(clock), FakeSleep(clock, budget=0)
    task = await start(CronSource(NAME, options(), sleep=sleep, max_sleep=3600), ctx)
    await asyncio.wait_for(sleep.blocked.wait(), 5)

    assert ctx.batches == []
    assert ctx.saved == [{"last_slot": "2026-01-01T12:00:00+00:00"}]  # baseline for catch-up
    assert ctx.health == [(True, None)]
    assert sleep.calls == [180.0]  # waiting for 12:05
    await stop(task)


async def test_unreadable_checkpoint_counts_as_a_first_start() -> None:
    clock = ManualClock(NOW)
    ctx = FakeContext(clock, checkpoint={"last_slot": "yesterday-ish"})
    task = await start(CronSource(NAME, options(), sleep=FakeSleep(clock, budget=0)), ctx)
    assert ctx.batches == []
    assert ctx.saved == [{"last_slot": "2026-01-01T12:00:00+00:00"}]
    await stop(task)


MISSED = [at(11, 5) + timedelta(minutes=5 * i) for i in range(12)]  # 11:05 .. 12:00


@pytest.mark.parametrize(("catch_up", "max_catch_up", "expected"), [
    ("none", 10, []),
    ("last", 10, MISSED[-1:]),
    ("all", 5, MISSED[-5:]),
    ("all", 100, MISSED),
])
async def test_catch_up_after_one_hour_down(catch_up: str, max_catch_up: int,
                                            expected: list[datetime]) -> None:
    clock = ManualClock(NOW)
    ctx = FakeContext(clock, checkpoint={"last_slot": iso(at(11, 0))})  # last tick 1h ago
    source = CronSource(NAME, options(catch_up=catch_up, max_catch_up=max_catch_up),
                        sleep=FakeSleep(clock, budget=0))
    task = await start(source, ctx)

    if expected:
        assert len(ctx.batches) == 1, "catch-up is one emit call"
        assert ctx.log == ["emit", "save"], "the checkpoint is saved after the emit"
    else:
        assert ctx.log == ["save"]
    assert [e.payload["scheduled_for"] for e in ctx.events] == [iso(s) for s in expected]
    assert all(e.payload["catch_up"] is True for e in ctx.events)
    # skipped slots count as handled too: the checkpoint is the newest missed slot
    assert ctx.checkpoint == {"last_slot": "2026-01-01T12:00:00+00:00"}
    assert ctx.health == [(True, None)]
    await stop(task)


async def test_nothing_missed_means_nothing_emitted_or_saved() -> None:
    clock = ManualClock(NOW)
    ctx = FakeContext(clock, checkpoint={"last_slot": iso(at(12, 0))})
    task = await start(CronSource(NAME, options(), sleep=FakeSleep(clock, budget=0)), ctx)
    assert ctx.log == []
    await stop(task)


async def test_checkpoint_ahead_of_the_clock_is_not_replayed() -> None:
    # e.g. written by a replica whose clock runs fast: wait for the slot after it
    clock = ManualClock(NOW)
    ctx = FakeContext(clock, checkpoint={"last_slot": iso(at(12, 30))})
    sleep = FakeSleep(clock, budget=0)
    task = await start(CronSource(NAME, options(), sleep=sleep, max_sleep=3600), ctx)
    await asyncio.wait_for(sleep.blocked.wait(), 5)
    assert ctx.log == []
    assert sleep.calls == [(at(12, 35) - NOW).total_seconds()]
    await stop(task)


# --- live ticks -------------------------------------------------------------------------------


async def test_live_ticks_with_a_manual_clock() -> None:
    clock = ManualClock(NOW)
    ctx = FakeContext(clock)
    sleep = FakeSleep(clock, budget=20)
    source = CronSource(NAME, options(), sleep=sleep, max_sleep=60)
    task = await start(source, ctx)
    await ctx.wait_until(lambda: len(ctx.batches) >= 2)
    await stop(task)

    first, second = ctx.batches[0], ctx.batches[1]
    assert first == [Event(
        source=NAME, kind="tick", subject=NAME,
        fingerprint="nightly@2026-01-01T12:05:00+00:00",
        payload={"scheduled_for": "2026-01-01T12:05:00+00:00", "schedule": "every 5m",
                 "catch_up": False},
        observed_at=at(12, 5),
    )]
    assert [e.fingerprint for e in second] == ["nightly@2026-01-01T12:10:00+00:00"]
    assert ctx.saved[:3] == [{"last_slot": "2026-01-01T12:00:00+00:00"},
                             {"last_slot": "2026-01-01T12:05:00+00:00"},
                             {"last_slot": "2026-01-01T12:10:00+00:00"}]
    assert ctx.log[:4] == ["save", "emit", "save", "emit"]
    assert max(sleep.calls) <= 60, "long waits are chunked so clock jumps are noticed"


async def test_waking_early_sleeps_again_and_never_ticks_before_the_slot() -> None:
    clock = ManualClock(NOW)
    ctx = FakeContext(clock)
    observed: list[tuple[datetime, datetime]] = []

    async def emit(events: Sequence[Event]) -> None:
        observed.extend((clock.now(), datetime.fromisoformat(e.payload["scheduled_for"]))
                        for e in events)
        await FakeContext.emit(ctx, events)

    ctx.emit = emit  # type: ignore[method-assign]
    sleep = FakeSleep(clock, budget=8, early=True)
    task = await start(CronSource(NAME, options(), sleep=sleep, max_sleep=3600), ctx)
    await ctx.wait_until(lambda: len(ctx.batches) >= 3)
    await stop(task)

    assert [slot for _, slot in observed[:3]] == [at(12, 5), at(12, 10), at(12, 15)]
    assert all(now >= slot for now, slot in observed)
    assert sleep.calls[:2] == [180.0, 90.0]  # woke halfway, went back to sleep


@pytest.mark.parametrize(("catch_up", "expected"), [
    ("last", [(at(12, 5), False), (at(13, 5), True)]),
    ("none", [(at(12, 5), False)]),
])
async def test_a_late_wake_up_treats_slept_through_slots_as_missed(
        catch_up: str, expected: list[tuple[datetime, bool]]) -> None:
    clock = ManualClock(NOW)
    ctx = FakeContext(clock)
    sleep = FakeSleep(clock, budget=1, extra=timedelta(hours=1))  # suspended for an hour
    task = await start(CronSource(NAME, options(catch_up=catch_up), sleep=sleep,
                                  max_sleep=3600), ctx)
    await ctx.wait_until(lambda: bool(ctx.batches))
    await asyncio.wait_for(sleep.blocked.wait(), 5)
    await stop(task)

    assert len(ctx.batches) == 1
    assert [(e.payload["scheduled_for"], e.payload["catch_up"]) for e in ctx.events] == [
        (iso(s), flag) for s, flag in expected]
    assert ctx.checkpoint == {"last_slot": "2026-01-01T13:05:00+00:00"}


async def test_real_every_1s_tick_arrives() -> None:
    ctx = FakeContext(SystemClock())
    task = asyncio.create_task(CronSource(NAME, options(every="1s")).run(ctx))
    try:
        await ctx.wait_until(lambda: bool(ctx.batches), timeout=5)
    finally:
        await stop(task)

    [event] = ctx.batches[0]
    slot = datetime.fromisoformat(event.payload["scheduled_for"])
    assert slot.microsecond == 0 and slot.tzinfo is not None
    assert event.fingerprint == f"{NAME}@{slot.isoformat()}"
    assert event.payload["catch_up"] is False
    assert event.observed_at >= slot
    assert ctx.checkpoint == {"last_slot": slot.isoformat()}


# --- dedup ----------------------------------------------------------------------------------


async def test_the_same_slot_has_the_same_fingerprint_in_every_run() -> None:
    """Two replicas, or a restart that re-emits a tick, produce one stored event."""
    ids = []
    for _ in range(2):  # two independent runs with the same stored state
        clock = ManualClock(NOW)
        ctx = FakeContext(clock, checkpoint={"last_slot": iso(at(11, 0))})
        task = await start(CronSource(NAME, options(), sleep=FakeSleep(clock, budget=0)), ctx)
        await stop(task)
        [event] = ctx.events
        ids.append((event.fingerprint, event.id))
    # and a live tick for the same slot (a replica that was up at 12:00)
    clock = ManualClock(at(11, 58))
    ctx = FakeContext(clock, checkpoint={"last_slot": iso(at(11, 55))})
    task = await start(CronSource(NAME, options(), sleep=FakeSleep(clock, budget=1),
                                  max_sleep=3600), ctx)
    await ctx.wait_until(lambda: bool(ctx.batches))
    await stop(task)
    [live] = ctx.events
    assert live.payload["catch_up"] is False
    ids.append((live.fingerprint, live.id))

    assert ids[0] == ids[1] == ids[2]
    assert ids[0][0] == "nightly@2026-01-01T12:00:00+00:00"
    assert tick_fingerprint(NAME, datetime.fromisoformat("2026-01-01T13:00:00+01:00")) == \
        ids[0][0]


# --- failure and cancellation -----------------------------------------------------------------


async def test_cancellation_while_waiting_is_prompt_and_clean() -> None:
    ctx = FakeContext(SystemClock())
    source = CronSource(NAME, options(schedule="0 2 * * *", every=None))  # real sleep, hours
    task = await start(source, ctx)
    await stop(task)
    assert ctx.health == [(True, None)]  # cancellation is not a failure


async def test_a_failing_emit_is_raised_with_health_and_no_checkpoint() -> None:
    clock = ManualClock(NOW)
    ctx = FakeContext(clock, checkpoint={"last_slot": iso(at(11, 0))})
    ctx.emit_error = RuntimeError("store unavailable")
    task = asyncio.create_task(CronSource(NAME, options(), sleep=FakeSleep(clock)).run(ctx))
    with pytest.raises(RuntimeError, match="store unavailable"):
        await asyncio.wait_for(task, 5)
    assert ctx.health == [(False, "RuntimeError: store unavailable")]
    assert ctx.saved == []  # the missed tick is emitted again after the restart


# --- options ----------------------------------------------------------------------------------


def test_options_from_the_spec_example() -> None:
    opts = CronOptions.model_validate({"type": "cron", "schedule": "0 2 * * *",
                                       "timezone": "Europe/Berlin", "catch_up": "last",
                                       "max_catch_up": 10})
    assert opts.build_schedule().description == "cron '0 2 * * *' (Europe/Berlin)"
    defaults = options(every="6h")
    assert (defaults.catch_up, defaults.max_catch_up, defaults.timezone) == ("last", 10, "UTC")
    assert defaults.every == timedelta(hours=6)
    assert defaults.build_schedule().description == "every 6h"


@pytest.mark.parametrize(("data", "message"), [
    ({"schedule": "0 2 * * *", "every": "6h"}, "not both"),
    ({"every": None}, "set `schedule`"),
    ({"every": None, "schedule": "0 25 * * *"}, "hour field '25'"),
    ({"every": None, "schedule": "0 2 * *"}, "expected 5 fields"),
    ({"timezone": "Europe/Atlantis"}, "unknown timezone 'Europe/Atlantis'"),
    ({"every": "500ms"}, "at least 1s"),
    ({"every": "6"}, "invalid duration"),
    ({"max_catch_up": 0}, "greater than or equal to 1"),
    ({"catch_up": "some"}, "'none', 'last' or 'all'"),
    ({"cron": "0 2 * * *"}, "Extra inputs are not permitted"),
])
def test_invalid_options_are_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        options(**data)
    assert message in str(info.value)


def test_registered_and_satisfies_the_source_protocol() -> None:
    cls = source_class("cron")
    assert cls is CronSource
    assert cls.Options is CronOptions
    source = CronSource(NAME, options())
    assert isinstance(source, Source)
    assert source.name == NAME
