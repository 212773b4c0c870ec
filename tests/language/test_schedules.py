"""Slot arithmetic of triggerd.language.schedules: cron (crontab, timezones, DST), intervals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from triggerd.language.schedules import (
    EPOCH,
    Schedule,
    _CronSchedule,
    validate_cron,
    validate_timezone,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
        microsecond: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


def walk(schedule: Schedule, start: datetime, n: int) -> list[datetime]:
    out: list[datetime] = []
    t = start
    for _ in range(n):
        nxt = schedule.next_after(t)
        assert nxt is not None
        out.append(nxt)
        t = nxt
    return out


def assert_strictly_increasing(slots: list[datetime]) -> None:
    assert all(a < b for a, b in pairwise(slots)), slots
    assert len(set(slots)) == len(slots)


# --- cron: basics -------------------------------------------------------------------------


def test_cron_next_after_is_strictly_after() -> None:
    s = Schedule.cron("0 2 * * *")
    assert s.next_after(utc(2026, 1, 10)) == utc(2026, 1, 10, 2)
    assert s.next_after(utc(2026, 1, 10, 2)) == utc(2026, 1, 11, 2)  # on a slot: the next one
    assert s.next_after(utc(2026, 1, 10, 1, 59, 59, 999999)) == utc(2026, 1, 10, 2)
    assert s.description == "cron '0 2 * * *' (UTC)"


def test_results_are_utc_and_inputs_may_be_any_aware_zone() -> None:
    s = Schedule.cron("*/15 * * * *")
    plus2 = timezone(timedelta(hours=2))
    nxt = s.next_after(datetime(2026, 5, 1, 12, 7, tzinfo=plus2))
    assert nxt == utc(2026, 5, 1, 10, 15)
    assert nxt is not None and nxt.tzinfo is UTC


def test_naive_datetimes_are_refused() -> None:
    s = Schedule.cron("0 2 * * *")
    with pytest.raises(ValueError, match="timezone-aware"):
        s.next_after(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        Schedule.every(timedelta(hours=1)).slots_between(utc(2026, 1, 1), datetime(2026, 1, 2), 3)


def test_cron_timezone_winter_and_summer() -> None:
    s = Schedule.cron("0 2 * * *", "Europe/Berlin")
    assert s.next_after(utc(2026, 1, 15)) == utc(2026, 1, 15, 1)  # CET = UTC+1
    assert s.next_after(utc(2026, 7, 14, 12)) == utc(2026, 7, 15, 0)  # CEST = UTC+2
    assert s.description == "cron '0 2 * * *' (Europe/Berlin)"


def test_day_of_week_uses_crontab_numbering_sunday_is_0_and_7() -> None:
    # APScheduler 3 reads 0 as Monday; a crontab user means Sunday.
    for expr in ("0 9 * * 0", "0 9 * * 7", "0 9 * * sun", "0 9 * * SUN"):
        slots = walk(Schedule.cron(expr), utc(2026, 1, 1), 3)
        assert [d.strftime("%a") for d in slots] == ["Sun"] * 3, expr
    weekdays = walk(Schedule.cron("0 9 * * 1-5"), utc(2026, 1, 3), 5)  # from a Saturday
    assert [d.strftime("%a") for d in weekdays] == ["Mon", "Tue", "Wed", "Thu", "Fri"]
    assert walk(Schedule.cron("0 9 * * mon-fri"), utc(2026, 1, 3), 5) == weekdays
    weekend = walk(Schedule.cron("0 9 * * 6,0"), utc(2026, 1, 5), 4)
    assert [d.strftime("%a") for d in weekend] == ["Sat", "Sun", "Sat", "Sun"]
    every_other = walk(Schedule.cron("0 9 * * */2"), utc(2026, 1, 4), 4)  # from Sun 00:00
    assert [d.strftime("%a") for d in every_other] == ["Sun", "Tue", "Thu", "Sat"]


def test_day_of_month_or_day_of_week_when_both_restricted() -> None:
    # Vixie cron: "0 0 1 * 1" runs on the 1st AND on every Monday.
    slots = walk(Schedule.cron("0 0 1 * 1"), utc(2026, 2, 25), 4)
    assert slots == [utc(2026, 3, 1), utc(2026, 3, 2), utc(2026, 3, 9), utc(2026, 3, 16)]
    # With one of them a wildcard, the other alone restricts.
    assert walk(Schedule.cron("0 0 1 * *"), utc(2026, 2, 25), 2) == [utc(2026, 3, 1),
                                                                     utc(2026, 4, 1)]


def test_macros_and_month_names() -> None:
    assert walk(Schedule.cron("@daily"), utc(2026, 1, 1, 5), 1) == [utc(2026, 1, 2)]
    assert walk(Schedule.cron("@hourly"), utc(2026, 1, 1, 5, 30), 1) == [utc(2026, 1, 1, 6)]
    assert walk(Schedule.cron("0 0 1 jan-mar/2 *"), utc(2026, 1, 1), 2) == [utc(2026, 3, 1),
                                                                            utc(2027, 1, 1)]


# --- cron: DST ------------------------------------------------------------------------------


def test_dst_spring_forward_nonexistent_time_fires_once() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist that night.
    s = Schedule.cron("30 2 * * *", "Europe/Berlin")
    slots = walk(s, utc(2026, 3, 27), 4)
    assert slots == [utc(2026, 3, 27, 1, 30), utc(2026, 3, 28, 1, 30),
                     utc(2026, 3, 29, 1, 30),  # = 03:30 CEST, once
                     utc(2026, 3, 30, 0, 30)]
    assert_strictly_increasing(slots)


def test_dst_fall_back_repeated_time_fires_once_for_fixed_hours() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice (00:30Z and 01:30Z).
    s = Schedule.cron("30 2 * * *", "Europe/Berlin")
    slots = walk(s, utc(2026, 10, 24), 3)
    assert slots == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    assert s.last_at_or_before(utc(2026, 10, 25, 2)) == utc(2026, 10, 25, 0, 30)


def test_dst_fall_back_hourly_fires_every_real_hour() -> None:
    s = Schedule.cron("0 * * * *", "Europe/Berlin")
    slots = walk(s, utc(2026, 10, 24, 22), 26)
    assert slots == [utc(2026, 10, 24, 23) + timedelta(hours=i) for i in range(26)]


@pytest.mark.parametrize("expr", ["30 2 * * *", "0 * * * *", "*/20 1-3 * * *", "0 2,3 * * *"])
@pytest.mark.parametrize("start", [utc(2026, 3, 28, 20), utc(2026, 10, 24, 20)])
def test_dst_walks_are_strictly_increasing_and_invert(expr: str, start: datetime) -> None:
    s = Schedule.cron(expr, "Europe/Berlin")
    slots = walk(s, start, 30)
    assert_strictly_increasing(slots)
    for prev, cur in pairwise(slots):
        assert s.last_at_or_before(cur) == cur
        assert s.last_at_or_before(cur - timedelta(microseconds=1)) == prev
    until = slots[-1]
    assert s.slots_between(start, until, 100) == slots
    assert s.slots_between(start, until, 7) == slots[-7:]


@given(st.lists(st.tuples(st.integers(0, 4 * 24 * 6), st.sampled_from([-1, 0, 1])),
                min_size=1, max_size=30),
       st.sampled_from(["30 2 * * *", "0 * * * *", "*/20 1-3 * * *", "0 2,3 * * 0"]),
       st.sampled_from(["UTC", "Europe/Berlin"]))
@example([(0, 0), (15, 0)], "30 2 * * *", "UTC")  # asked again on the slot it answered
@example([(153, 0), (294, -1)], "30 2 * * *", "Europe/Berlin")  # before a skipped 02:30
@settings(max_examples=300)
def test_answers_in_any_order_are_those_of_a_fresh_schedule(
        offsets: list[tuple[int, int]], expr: str, zone: str) -> None:
    """A schedule keeps its last answer (next_after): asked for any times in any order (on
    slots, just before and after them; around both DST changes in a zone with them), it
    answers as a schedule asked once each time."""
    kept = _CronSchedule(expr, zone)
    for start in (utc(2026, 3, 27), utc(2026, 10, 23)):
        for tens, micro in offsets:
            t = start + timedelta(minutes=10 * tens, microseconds=micro)
            assert kept.next_after(t) == _CronSchedule(expr, zone).next_after(t)


def _wall_matches(expr: str, wall: datetime) -> bool:
    """Does a wall time match a cron expression of numbers, ranges, steps and `*` (the
    expressions below), day fields OR-ed when both are restricted? Written from crontab(5),
    independent of the code under test."""
    def values(field: str, lo: int, hi: int) -> set[int]:
        out: set[int] = set()
        for item in field.split(","):
            item, _, step = item.partition("/")
            first, _, last = item.partition("-")
            a, b = (lo, hi) if item == "*" else (int(first), int(last or (hi if step else first)))
            out.update(range(a, b + 1, int(step or 1)))
        return out
    minute, hour, dom, month, dow = expr.split()
    day_ok = [wall.day in values(dom, 1, 31), (wall.weekday() + 1) % 7 in
              {d % 7 for d in values(dow, 0, 7)}]
    either = not dom.startswith("*") and not dow.startswith("*")
    return (wall.minute in values(minute, 0, 59) and wall.hour in values(hour, 0, 23)
            and wall.month in values(month, 1, 12) and (any(day_ok) if either else all(day_ok)))


def _oracle_slots(expr: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """The documented slots, found minute by minute: each real instant whose wall time
    matches (a repeated wall time's second occurrence only with a wildcard hour), and each
    wall time skipped by a forward jump, read with the offset before the jump."""
    tz = validate_timezone(zone)
    found: set[datetime] = set()
    wildcard_hour = expr.split()[1].startswith("*")
    u = start
    while u <= end:
        wall = u.astimezone(tz).replace(tzinfo=None)
        if _wall_matches(expr, wall) and (
                wildcard_hour or wall.replace(tzinfo=tz, fold=0).astimezone(UTC) == u):
            found.add(u)
        nxt = u + timedelta(minutes=1)
        before, after = u.astimezone(tz).utcoffset(), nxt.astimezone(tz).utcoffset()
        assert before is not None and after is not None
        if after > before:  # wall times [jump - gap, jump) never happen: read them at `before`
            w = (nxt + before).replace(tzinfo=None)
            while w < (nxt + after).replace(tzinfo=None):
                if _wall_matches(expr, w):
                    found.add((w - before).replace(tzinfo=UTC))
                w += timedelta(minutes=1)
        u = nxt
    return sorted(found)


# A forward jump in each: at 02:00 (Berlin, New York), at midnight (Santiago: the skipped
# wall time is the day's first), of 30 minutes (Lord Howe), of a whole day (Samoa, 2011);
# and a fall-back (Berlin, October) for the repeated hour.
_JUMPS = [("Europe/Berlin", utc(2026, 3, 29, 1)), ("America/New_York", utc(2026, 3, 8, 7)),
          ("America/Santiago", utc(2026, 9, 6, 4)),
          ("Australia/Lord_Howe", utc(2026, 10, 3, 15, 30)),
          ("Pacific/Apia", utc(2011, 12, 30, 10)), ("Europe/Berlin", utc(2026, 10, 25, 1))]
_EXPRS = ["30 2 * * *", "15,45 2 * * *", "0 0 * * *", "30 0 * * *", "0 12 * * *", "*/20 * * * *",
          "30 * * * *", "0,30 1-3 * * *", "5 0-3 * * 0", "45 1 * * *"]
_ORACLE: dict[tuple[str, str, datetime], list[datetime]] = {}


@given(st.sampled_from(_JUMPS), st.sampled_from(_EXPRS),
       st.lists(st.integers(-26 * 60, 26 * 60), min_size=1, max_size=12))
@example(_JUMPS[0], "30 2 * * *", [10])  # asked at 03:10 CEST, after the jump: 03:30 CEST
@example(_JUMPS[2], "30 0 * * *", [-600])  # Santiago's skipped 00:30: it was lost from anywhere
@settings(max_examples=150, deadline=None)
def test_slots_around_a_clock_change_are_the_same_from_wherever_asked(
        jump: tuple[str, datetime], expr: str, minutes: list[int]) -> None:
    """A daemon asking at any time, in any order, gets the documented slots: a wall time a
    spring-forward skips fires once, after the jump, whether the schedule was asked before
    the jump (as APScheduler needs) or after it (a daemon started at 03:10 on that night
    skipped the 02:30 check before the fix)."""
    zone, at = jump
    start, end = at - timedelta(hours=30), at + timedelta(hours=60)
    if (zone, expr, at) not in _ORACLE:
        _ORACLE[zone, expr, at] = _oracle_slots(expr, zone, start, end)
    truth = _ORACLE[zone, expr, at]
    kept = _CronSchedule(expr, zone)  # one instance: what it remembers must not change answers
    for m in minutes:
        t = at + timedelta(minutes=m, seconds=30 if m % 3 == 0 else 0)
        want = next((s for s in truth if s > t), None)
        got = kept.next_after(t)
        assert got == want if want is not None else got is None or got > end, (zone, expr, t)


# --- cron: searching back -------------------------------------------------------------------


def test_cron_last_at_or_before() -> None:
    s = Schedule.cron("0 2 * * *")
    assert s.last_at_or_before(utc(2026, 1, 10, 2)) == utc(2026, 1, 10, 2)  # inclusive
    assert s.last_at_or_before(utc(2026, 1, 10, 1, 59)) == utc(2026, 1, 9, 2)
    # sparse: leap days only
    assert Schedule.cron("0 0 29 2 *").last_at_or_before(utc(2026, 6, 1)) == utc(2024, 2, 29)
    # dense and clustered: every minute of the 1st only
    assert Schedule.cron("* * 1 * *").last_at_or_before(utc(2026, 1, 15)) == utc(2026, 1, 1,
                                                                                 23, 59)


def test_cron_slots_between_keeps_the_newest_and_is_cheap_over_long_gaps() -> None:
    s = Schedule.cron("*/5 * * * *")
    got = s.slots_between(utc(2025, 1, 1), utc(2026, 1, 1, 0, 2), 3)  # a year, newest 3
    assert got == [utc(2025, 12, 31, 23, 50), utc(2025, 12, 31, 23, 55), utc(2026, 1, 1)]
    # bounds: after is exclusive, until inclusive
    assert s.slots_between(utc(2026, 1, 1), utc(2026, 1, 1, 0, 10), 10) == [
        utc(2026, 1, 1, 0, 5), utc(2026, 1, 1, 0, 10)]
    assert s.slots_between(utc(2026, 1, 1, 0, 1), utc(2026, 1, 1, 0, 4), 10) == []
    assert s.slots_between(utc(2026, 1, 2), utc(2026, 1, 1), 10) == []
    assert s.slots_between(utc(2026, 1, 1), utc(2026, 1, 2), 0) == []


# --- every ----------------------------------------------------------------------------------


def test_every_is_anchored_at_the_epoch() -> None:
    s = Schedule.every(timedelta(hours=6))
    assert s.description == "every 6h"
    assert s.next_after(utc(2026, 1, 1, 1)) == utc(2026, 1, 1, 6)
    assert s.next_after(utc(2026, 1, 1, 6)) == utc(2026, 1, 1, 12)
    assert s.last_at_or_before(utc(2026, 1, 1, 6)) == utc(2026, 1, 1, 6)
    assert s.last_at_or_before(utc(2026, 1, 1, 5, 59)) == utc(2026, 1, 1)


def test_every_agrees_across_instances_and_is_exact() -> None:
    t = utc(2026, 4, 7, 13, 12, 11, 123456)
    for interval in (timedelta(minutes=7), timedelta(seconds=1.5), timedelta(days=7)):
        a, b = Schedule.every(interval), Schedule.every(interval, "Europe/Berlin")
        slot = a.next_after(t)
        assert slot is not None and slot == b.next_after(t)
        assert (slot - EPOCH) % interval == timedelta(0)
        assert t < slot <= t + interval


def test_every_slots_between() -> None:
    s = Schedule.every(timedelta(minutes=5))
    assert s.slots_between(utc(2026, 1, 1, 11), utc(2026, 1, 1, 12, 2), 100) == [
        utc(2026, 1, 1, 11, 5) + timedelta(minutes=5 * i) for i in range(12)]
    assert s.slots_between(utc(2026, 1, 1, 11), utc(2026, 1, 1, 12, 2), 3) == [
        utc(2026, 1, 1, 11, 50), utc(2026, 1, 1, 11, 55), utc(2026, 1, 1, 12)]
    year = Schedule.every(timedelta(seconds=1)).slots_between(utc(2025, 1, 1), utc(2026, 1, 1), 2)
    assert year == [utc(2025, 12, 31, 23, 59, 59), utc(2026, 1, 1)]


def test_every_validation() -> None:
    with pytest.raises(ValueError, match="at least 1s"):
        Schedule.every(timedelta(milliseconds=500))
    with pytest.raises(ValueError, match="unknown timezone"):
        Schedule.every(timedelta(hours=1), "Nowhere/Land")


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "fragment"), [
    ("", "expected 5 fields, got 0"),
    ("* * * *", "expected 5 fields, got 4"),
    ("0 0 * * * *", "expected 5 fields, got 6"),
    ("61 * * * *", "minute field '61': the last value (61) is higher than the maximum value (59)"),
    ("0 24 * * *", "hour field '24'"),
    ("0 0 0 * *", "day-of-month field '0'"),
    ("0 0 * 13 *", "month field '13'"),
    ("0 0 * foo *", "month field 'foo': 'foo' is not a number or one of jan"),
    ("0 0 * * 8", "day-of-week field '8': 8 is out of range 0-7"),
    ("0 0 * * sat-sun", "runs backwards"),
    ("*/0 * * * *", "minute field '*/0'"),
    ("0 0 L * *", "day-of-month field 'L'"),
    ("1-2-3 * * * *", "unsupported syntax '1-2-3'"),
    ("@reboot", "unknown macro '@reboot'"),
    ("0 0 30 2 *", "never fires"),
])
def test_bad_cron_expressions_raise_readable_errors(expr: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        Schedule.cron(expr)
    message = str(info.value)
    assert message.startswith(f"invalid cron expression {expr!r}: ")
    assert fragment in message
    assert validate_cron(expr) == message


def test_validate_cron_accepts_good_expressions() -> None:
    for expr in ("0 2 * * *", "*/5 * * * *", "0 9 * * mon-fri", "0 0 1,15 * *", "@weekly"):
        assert validate_cron(expr) is None, expr


def test_unknown_timezone() -> None:
    with pytest.raises(ValueError, match=r"unknown timezone 'Mars/Olympus'"):
        Schedule.cron("0 2 * * *", "Mars/Olympus")
    with pytest.raises(ValueError, match="unknown timezone"):
        validate_timezone("../../etc/passwd")
    assert validate_timezone("UTC") is UTC
