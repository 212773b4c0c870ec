"""Schedule arithmetic shared by the cron source and the rule engine's `when.schedule`.

A `Schedule` is a set of instants ("slots"): either a standard 5-field cron expression read in a
timezone, or a fixed interval (`every`) anchored at the Unix epoch. The class only does arithmetic
on slots; it never sleeps and never records what fired (the cron source keeps its own checkpoint).

Contracts
    * Every datetime in and out is timezone-aware; results are in UTC. Naive input is refused with
      `ValueError` (a naive time is ambiguous, and a wrong guess would shift every slot).
    * Slots are strictly increasing and unique: `next_after(t) > t` always, and walking
      `next_after` never yields the same instant twice, across DST transitions too.
    * Slots are deterministic: two processes (replicas, a restart) compute the same instants to
      the microsecond, so `name@slot` is a stable dedup key.

Cron semantics (as users know them from Vixie cron / cronie, not APScheduler's dialect)
    * Five fields: minute, hour, day-of-month, month, day-of-week, each a comma list of `*`,
      `N`, `N-M`, with an optional `/step`; month and weekday names (`jan`, `mon`) are accepted,
      and the macros `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
      `@hourly`.
    * Day-of-week 0 and 7 are Sunday (APScheduler 3 reads 0 as Monday; we translate).
    * When both day-of-month and day-of-week are restricted (neither starts with `*`), a day
      matches if EITHER matches (`0 0 13 * 5`: every 13th and every Friday).
    * DST: a wall time skipped by a spring-forward transition fires once, read with the offset
      before the jump (02:30 on a 02:00→03:00 day fires at 03:30 local), whenever asked. A
      wall time repeated by a fall-back transition fires once (its first occurrence) when the
      hour field names specific hours, and at both real instants when the hour field is a
      wildcard (`*`, `*/2`): `0 2 * * *` runs once that night, `0 * * * *` still runs every
      real hour.

APScheduler 3's `CronTrigger` parses the fields and does the calendar arithmetic; interval slots
are plain integer arithmetic in microseconds (exact, unlike a float timestamp), so replicas agree.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta, tzinfo
from datetime import timezone as fixed_offset
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from triggerd.language.units import format_duration

__all__ = ["Schedule", "validate_cron", "validate_timezone"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# How far `last_at_or_before` looks back for a cron slot: the sparsest useful expression,
# `0 0 29 2 *`, can be 8 years apart (2096 -> 2104).
_MAX_LOOKBACK = timedelta(days=366 * 9)
_FIRST_WINDOW = timedelta(hours=1)
# Longer than any jump of a zone's clock (Samoa skipped a whole day in 2011), and than the
# step at which `_forward_jumps` looks: a zone changing its offset twice within a day has
# been seen nowhere.
_MAX_JUMP = timedelta(days=1)
_SECOND = timedelta(seconds=1)

_FIELD_LABELS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_TRIGGER_ARGS = ("minute", "hour", "day", "month", "day_of_week")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron numbering: sun = 0
_APS_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler: mon = 0
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_ITEM = re.compile(r"^(?:(?P<star>\*)|(?P<first>\w+)(?:-(?P<last>\w+))?)(?:/(?P<step>\w+))?$")
_APS_PREFIX = re.compile(r"^Error validating expression '[^']*': ")
_CRON_HELP = "(5 fields: minute hour day-of-month month day-of-week, e.g. '0 2 * * *')"


def validate_timezone(name: str) -> tzinfo:
    """The tzinfo for an IANA zone name; `ValueError` with a readable message if unknown."""
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"unknown timezone {name!r} (use an IANA name like 'UTC' or 'Europe/Berlin')"
        ) from None


def validate_cron(expr: str) -> str | None:
    """None if `expr` is a valid cron expression that ever fires, else the error message."""
    try:
        Schedule.cron(expr)
    except ValueError as exc:
        return str(exc)
    return None


def _aware(t: datetime, what: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got naive {t.isoformat()}")
    return t.astimezone(UTC)


class Schedule(ABC):
    """A set of instants: a cron expression in a timezone, or a fixed interval since the epoch.

    Build one with `Schedule.cron(...)` or `Schedule.every(...)`. Instances are immutable and
    cheap to share.
    """

    description: str
    """Human text for payloads and `status`: "cron '0 2 * * *' (Europe/Berlin)" or "every 6h"."""
    timezone: str

    @classmethod
    def cron(cls, expr: str, timezone: str = "UTC") -> Schedule:
        """A standard 5-field cron expression read in `timezone` (see the module docstring).

        Raises `ValueError` naming the expression and the offending field for a bad expression,
        an unknown timezone, or an expression that can never fire (`0 0 30 2 *`).
        Built once per expression and timezone (parsing costs ~100 us; deciding asks often).
        """
        return _cron(expr, timezone)

    @classmethod
    def every(cls, interval: timedelta, timezone: str = "UTC") -> Schedule:
        """Slots at every multiple of `interval` (>= 1s) since 1970-01-01T00:00Z.

        Anchoring at the epoch (not at start-up) makes the slots identical in every process and
        across restarts. `timezone` is validated and kept for display only: it moves no slot.
        """
        return _IntervalSchedule(interval, timezone)

    @abstractmethod
    def next_after(self, t: datetime) -> datetime | None:
        """The first slot strictly after `t`, in UTC; None if the schedule never fires again."""

    @abstractmethod
    def last_at_or_before(self, t: datetime) -> datetime | None:
        """The most recent slot <= `t`, in UTC; None if there is none (within a bounded search
        of about nine years back for cron)."""

    def slots_between(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """Slots s with `after < s <= until`, oldest first, at most `limit` of the NEWEST ones.

        Costs O(limit) slot computations however long the gap, so a year of downtime on a
        one-second schedule is as cheap as a minute of it.
        """
        after = _aware(after, "after")
        until = _aware(until, "until")
        if limit <= 0 or until <= after:
            return []
        found: list[datetime] = []
        cursor: datetime | None = self._last_in(after, until)
        while cursor is not None and len(found) < limit:
            found.append(cursor)
            cursor = self._last_in(after, cursor - _US)
        found.reverse()
        return found

    @abstractmethod
    def _last_in(self, floor: datetime, t: datetime) -> datetime | None:
        """The most recent slot s with floor < s <= t (both UTC), or None."""

    def __repr__(self) -> str:
        return f"<Schedule {self.description}>"


class _IntervalSchedule(Schedule):
    def __init__(self, interval: timedelta, timezone: str = "UTC") -> None:
        if not isinstance(interval, timedelta):
            raise ValueError(f"interval must be a timedelta, got {interval!r}")
        if interval < timedelta(seconds=1):
            raise ValueError(f"interval must be at least 1s, got {format_duration(interval)}")
        validate_timezone(timezone)
        self.interval = interval
        self.timezone = timezone
        self._step = interval // _US  # whole microseconds: exact arithmetic, no float drift
        self.description = f"every {format_duration(interval)}"

    def _index(self, t: datetime) -> int:
        """k such that slot k <= t < slot k+1 (t in UTC)."""
        return ((t - EPOCH) // _US) // self._step

    def _slot(self, k: int) -> datetime:
        return EPOCH + timedelta(microseconds=k * self._step)

    def next_after(self, t: datetime) -> datetime | None:
        return self._slot(self._index(_aware(t, "t")) + 1)

    def last_at_or_before(self, t: datetime) -> datetime | None:
        return self._slot(self._index(_aware(t, "t")))

    def _last_in(self, floor: datetime, t: datetime) -> datetime | None:
        slot = self._slot(self._index(t))
        return slot if slot > floor else None

    def slots_between(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        after = _aware(after, "after")
        until = _aware(until, "until")
        if limit <= 0 or until <= after:
            return []
        first, last = self._index(after) + 1, self._index(until)
        return [self._slot(k) for k in range(max(first, last - limit + 1), last + 1)]


def _field_value(token: str, names: tuple[str, ...], offset: int) -> int:
    """A number, or a name from `names` (index + offset)."""
    if token.isdigit():
        return int(token)
    if names and token.lower() in names:
        return names.index(token.lower()) + offset
    if names:
        raise ValueError(f"{token!r} is not a number or one of {', '.join(names)}")
    raise ValueError(f"{token!r} is not a number")


def _normalise_field(value: str, index: int) -> str:
    """Rewrite one standard cron field into APScheduler's syntax (numbers; weekdays as names).

    Only standard syntax passes; APScheduler's own extensions (`last`, `L`, `1st mon`) are
    refused so the expression means the same here as in any crontab.
    """
    if index == 4:
        return _normalise_weekdays(value)
    names = _MONTHS if index == 3 else ()
    items = []
    for item in value.split(","):
        m = _ITEM.match(item)
        if not m:
            raise ValueError(f"unsupported syntax {item!r} (use *, N, N-M, */S or N-M/S)")
        if m["star"]:
            text = "*"
        else:
            first = _field_value(m["first"], names, 1)
            text = str(first)
            if m["last"] is not None:
                text += f"-{_field_value(m['last'], names, 1)}"
        if m["step"] is not None:
            if not m["step"].isdigit():
                raise ValueError(f"step {m['step']!r} is not a number")
            text += f"/{int(m['step'])}"
        items.append(text)
    return ",".join(items)


def _normalise_weekdays(value: str) -> str:
    """Standard weekdays (0/7 = sun) -> a comma list of APScheduler weekday names."""
    days: set[int] = set()
    for item in value.split(","):
        m = _ITEM.match(item)
        if not m:
            raise ValueError(f"unsupported syntax {item!r} (use *, N, N-M, */S or N-M/S)")
        if m["star"]:
            first, last = 0, 7
        else:
            first = _field_value(m["first"], _CRON_WEEKDAYS, 0)
            last = first if m["last"] is None and m["step"] is None else 7
            if m["last"] is not None:
                last = _field_value(m["last"], _CRON_WEEKDAYS, 0)
        step = 1
        if m["step"] is not None:
            if not m["step"].isdigit() or int(m["step"]) == 0:
                raise ValueError(f"step {m['step']!r} must be a positive number")
            step = int(m["step"])
        for v in (first, last):
            if v > 7:
                raise ValueError(f"{v} is out of range 0-7 (0 and 7 are Sunday)")
        if first > last:
            raise ValueError(f"range {item!r} runs backwards (write e.g. 'sat,sun')")
        days.update(d % 7 for d in range(first, last + 1, step))
    if value.startswith("*") and len(days) == 7:
        return "*"
    aps = sorted((d - 1) % 7 for d in days)  # cron sun=0 -> APScheduler sun=6
    return ",".join(_APS_WEEKDAYS[d] for d in aps)


class _CronSchedule(Schedule):
    def __init__(self, expr: str, timezone: str = "UTC") -> None:
        if not isinstance(expr, str):
            raise ValueError(f"cron expression must be a string, got {expr!r}")
        self.expression = expr
        self.timezone = timezone
        self._tz = validate_timezone(timezone)
        self.description = f"cron '{expr}' ({timezone})"
        text = expr.strip()
        if text.startswith("@"):
            if text.lower() not in _MACROS:
                raise ValueError(
                    f"invalid cron expression {expr!r}: unknown macro {text!r} "
                    f"(known: {', '.join(_MACROS)})"
                )
            text = _MACROS[text.lower()]
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(
                f"invalid cron expression {expr!r}: expected 5 fields, got {len(fields)} "
                f"{_CRON_HELP}"
            )
        normalised = []
        for index, value in enumerate(fields):
            try:
                aps_value = _normalise_field(value, index)
                # Let APScheduler check bounds and steps field by field, to name the field.
                CronTrigger(**{_TRIGGER_ARGS[index]: aps_value}, timezone=UTC)
            except ValueError as exc:
                reason = _APS_PREFIX.sub("", str(exc))
                raise ValueError(
                    f"invalid cron expression {expr!r}: {_FIELD_LABELS[index]} field "
                    f"{value!r}: {reason}"
                ) from None
            normalised.append(aps_value)
        minute, hour, dom, month, dow = normalised
        # Vixie cron: with both day fields restricted, a day matches if either does.
        if not fields[2].startswith("*") and not fields[4].startswith("*"):
            variants = [(dom, "*"), ("*", dow)]
        else:
            variants = [(dom, dow)]
        self._crontabs = [f"{minute} {hour} {d} {month} {w}" for d, w in variants]
        self._fixed: dict[timedelta, list[Any]] = {}  # triggers at the offsets before jumps
        # A wall time repeated by a fall-back transition fires once unless the hour is a wildcard.
        self._once_in_repeated_hour = not fields[1].startswith("*")
        self._last: tuple[datetime, datetime] | None = None  # see next_after
        if self.next_after(datetime(2000, 1, 1, tzinfo=UTC)) is None:
            raise ValueError(f"invalid cron expression {expr!r}: it never fires")

    def _is_repeat(self, slot: datetime) -> bool:
        """True for the second occurrence of a wall time repeated by a fall-back transition."""
        if not self._once_in_repeated_hour:
            return False
        local = slot.astimezone(self._tz)
        if local.fold != 1:
            return False
        first, second = local.replace(fold=0).utcoffset(), local.utcoffset()
        # In a fold the offset decreases; in a gap (fold=1 there means "after") it increases.
        return first is not None and second is not None and second < first

    def next_after(self, t: datetime) -> datetime | None:
        """The first slot strictly after `t`. The last answer is kept as (from, slot): no
        slot lies between, so any `t` in [from, slot) has the same answer. A rule with a
        schedule asks at each of its decisions, mostly between the same two slots, and
        APScheduler takes ~50 us to answer."""
        cursor = _aware(t, "t")
        last = self._last
        if last is not None and last[0] <= cursor < last[1]:
            return last[1]
        slot = self._next_after(cursor)
        if slot is not None:
            self._last = (cursor, slot)
        return slot

    def _next_after(self, t: datetime) -> datetime | None:
        """Between two of the zone's transitions its offset is fixed: the slots there are the
        expression's matches at that fixed offset (APScheduler's calendar arithmetic, never
        its DST handling, whose answers near a transition depend on where it starts
        counting: asked at 01:59 CET on the night clocks go forward, it skipped the next
        midnight; it lost a skipped 00:30 in a zone changing at midnight). Walk from `t`
        piece by piece; a forward jump's skipped wall times are matched at the offset before
        it, landing in [jump, jump + gap); a repeated wall time's second occurrence is left
        out unless the hour is a wildcard."""
        skipped: datetime | None = None  # the first skipped wall time's slot after t, if any
        for jump, before, after in _transitions(self._tz, t - _MAX_JUMP, t):
            skipped = _earliest(skipped, self._skipped_slot(jump, before, after, t))
        # the piece: from `begin` (exclusive; its transition already handled), at `offset`
        cursor = begin = t
        offset = t.astimezone(self._tz).utcoffset()
        for _ in range(10_000):
            if offset is None:  # a tzinfo without offsets: not an IANA zone
                raise ValueError(f"{self.description}: the zone has no UTC offset at {cursor}")
            slot = self._fixed_next(offset, cursor)  # the first match at this piece's offset
            horizon = _earliest(skipped, slot) or cursor + _MAX_LOOKBACK
            jumps = _transitions(self._tz, begin, horizon)
            if jumps:  # the piece ends first: go on at the next one's offset
                begin, before, offset = jumps[0]
                skipped = _earliest(skipped, self._skipped_slot(begin, before, offset, t))
                cursor = max(cursor, begin - _US)
                continue
            if skipped is not None and (slot is None or skipped <= slot):
                return skipped
            if slot is None or not self._is_repeat(slot):
                return slot
            cursor = slot
        raise RuntimeError(f"{self.description}: no progress computing the slot after {t}")

    def _skipped_slot(self, jump: datetime, before: timedelta, after: timedelta,
                      t: datetime) -> datetime | None:
        """The first slot after `t` of a wall time skipped by a forward jump (at `jump`, from
        offset `before` to `after`): matched at the offset before it, so it lands in
        [jump, jump + gap) (02:30 on a 02:00 -> 03:00 night fires at 03:30 new time)."""
        if after <= before:
            return None
        slot = self._fixed_next(before, max(t, jump - _US))
        return slot if slot is not None and slot < jump + (after - before) else None

    def _fixed_next(self, offset: timedelta, t: datetime) -> datetime | None:
        """The expression's first match strictly after `t` at a fixed UTC offset."""
        triggers = self._fixed.get(offset)
        if triggers is None:
            zone = fixed_offset(offset)
            triggers = self._fixed[offset] = [
                CronTrigger.from_crontab(crontab, timezone=zone) for crontab in self._crontabs]
        start = (t + _US).astimezone(triggers[0].timezone)  # it rounds up to a whole second
        fires = [f for f in (tr.get_next_fire_time(None, start) for tr in triggers) if f]
        return min(f.astimezone(UTC) for f in fires) if fires else None

    def last_at_or_before(self, t: datetime) -> datetime | None:
        t = _aware(t, "t")
        return self._last_in(t - _MAX_LOOKBACK, t)

    def _last_in(self, floor: datetime, t: datetime) -> datetime | None:
        # Find a window (lo, t] holding a slot, doubling it back from t down to `floor` ...
        window = _FIRST_WINDOW
        while True:
            lo = max(t - window, floor)
            first = self.next_after(lo)
            if first is not None and first <= t:
                break
            if lo <= floor:
                return None
            window *= 2
        # ... then bisect: a slot exists in (good, t], none in (bad, t].
        good, bad = lo, t
        while True:
            slot = self.next_after(good)
            if slot is None or slot > t:  # cannot happen: `good` always has a slot after it
                raise RuntimeError(f"{self.description}: inconsistent slots before {t}")
            after = self.next_after(slot)
            if after is None or after > t:
                return slot
            good = slot  # a later slot exists
            mid = good + (bad - good) / 2
            probe = self.next_after(mid)
            if probe is not None and probe <= t:
                good = mid
            else:
                bad = mid


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _transitions(zone: tzinfo, lo: datetime, hi: datetime
                 ) -> list[tuple[datetime, timedelta, timedelta]]:
    """(instant, offset before, offset after) of each change of `zone`'s UTC offset in
    (lo, hi], oldest first."""
    if zone is UTC:
        return []
    return [change for year in range(lo.year, hi.year + 1)
            for change in _year_transitions(zone, year) if lo < change[0] <= hi]


@lru_cache(maxsize=1024)
def _year_transitions(zone: tzinfo, year: int) -> tuple[tuple[datetime, timedelta, timedelta],
                                                         ...]:
    """The changes of `zone`'s offset in (Jan 1, next Jan 1] of `year` (UTC). Looks at the
    offset once a day and bisects to the second where it changed (zones change at whole
    seconds): ~0.5 ms, once per zone and year."""
    found: list[tuple[datetime, timedelta, timedelta]] = []
    a = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    before = a.astimezone(zone).utcoffset()
    while a < end:
        b = a + _MAX_JUMP
        after = b.astimezone(zone).utcoffset()
        if after != before and before is not None and after is not None:
            x, y = a, b  # at offset `before`, at offset `after`; both whole seconds
            while y - x > _SECOND:
                mid = x + (y - x) // 2 // _SECOND * _SECOND
                if mid.astimezone(zone).utcoffset() == before:
                    x = mid
                else:
                    y = mid
            found.append((y, before, after))
        a, before = b, after
    return tuple(found)


@lru_cache(maxsize=256)
def _cron(expr: str, timezone: str) -> Schedule:
    return _CronSchedule(expr, timezone)
