"""The firing policy as one pure function: state and time in, decision out.

`decide` never reads a clock, a database or a file: it is given the rule's `when`, the group's
pending-event summary and stored state, the operator's flags and the time, and returns whether
to fire, the reason in words, every condition with its verdict (for `triggerd explain`), and
the earliest time the answer can change without a new event (`next_check_at`), so the daemon
sleeps until then instead of polling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from triggerd.config.schema import WhenSpec
from triggerd.language.units import format_duration
from triggerd.model import GroupState, Pending, RuleFlags


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    value: str
    required: str
    ok: bool


# Decision and Situation are values nobody changes after building them, but not frozen: a
# frozen dataclass sets each field through object.__setattr__ (~0.9 us for a Situation, 0.3
# unfrozen), and one of each is built per group at every decision: ~8 % of a replay.
@dataclass(slots=True)
class Decision:
    fire: bool
    kind: str  # "events" | "floor" | "schedule" when firing; "" otherwise
    reason: str  # why it fires, or what it waits for, in words
    next_check_at: datetime | None = None
    conditions: list[Condition] = field(default_factory=list)
    # what happens next without a new event, soonest first (for `triggerd explain`): the end of
    # a debounce, cooldown or pause, a sustained match's hold, the next scheduled check, the
    # periodic floor falling due
    upcoming: list[tuple[str, datetime]] = field(default_factory=list)

    @property
    def waiting_for(self) -> str | None:
        return None if self.fire else self.reason


@dataclass(slots=True)
class Situation:
    """Everything `decide` looks at besides the policy."""

    pending: Pending
    state: GroupState
    flags: RuleFlags = field(default_factory=RuleFlags)
    busy: bool = False  # running jobs of the rule reached `concurrency`
    on_busy: str = "coalesce"
    scheduled: bool = False  # the rule has `schedule`
    at_slot: datetime | None = None  # deciding at this scheduled slot
    next_slot: datetime | None = None


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def human_duration(d: timedelta) -> str:
    seconds = max(0, int(d.total_seconds()))
    if seconds < 1:
        return format_duration(d) if d.total_seconds() > 0 else "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(out) == 2:
            break
    return "".join(out)


def _earliest(*times: datetime | None) -> datetime | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None


Words = Callable[[], "tuple[str, str, str | None]"]
"""A condition's words, built only when explaining: its value, what it requires, and what it
waits for while not met (None: nothing to wait for)."""


def decide(when: WhenSpec, s: Situation, now: datetime, *, explain: bool = True) -> Decision:
    """The decision for one group at `now`. With `explain=False` the words (the reason and
    the conditions) are left out, and only `fire`, `kind`, `next_check_at` and `upcoming` are
    given: the same verdict, a few times faster (the replay's lookahead asks after every
    arrival, the engine at every trip)."""
    p, st = s.pending, s.state
    conds: list[Condition] = []
    waits: list[str] = []
    timers: list[datetime] = []
    upcoming: list[tuple[str, datetime]] = []

    def check(name: str, ok: bool, words: Words | None, at: datetime | None = None) -> None:
        if words is not None:
            value, required, wait = words()
            conds.append(Condition(name, value, required, ok))
            if not ok and wait is not None:
                waits.append(wait)
        if not ok and at is not None:
            timers.append(at)
            upcoming.append((_NEXT.get(name, name), at))

    flags = s.flags
    if flags.paused and flags.is_paused(now):
        until = flags.paused_until
        why = flags.paused_reason
        conds.append(Condition("paused", f"yes: {why}" if why else "yes", "not paused", False))
        return Decision(False, "", "paused" + (f" until {until.isoformat()}" if until else ""),
                        until, conds, [("pause ends", until)] if until else [])

    # -- the periodic floor, counted from the last success (or floor trigger, or creation) ----
    floor_due = False
    floor_at: datetime | None = None
    base = st.created_at
    if when.at_least_every is not None:
        latest: datetime | None = None  # (the first of the latest: as max() picks it)
        for t in (st.last_success_at, st.last_floor_at, st.created_at):
            if t and (latest is None or t > latest):
                latest = t
        assert latest is not None  # noqa: S101 - created_at is always set
        base = latest
        floor_at = base + when.at_least_every
        floor_due = now >= floor_at

    # -- conditions on pending events -----------------------------------------------------------
    count, least = p.count, when.min_events
    events_ok = count >= least
    check("min_events", events_ok, (lambda: (
        str(count), f"≥{least}", f"{least - count} more event(s)" if count else "new events"))
        if explain else None)
    if when.min_bytes is not None:
        need = when.min_bytes
        ok = p.bytes >= need
        events_ok &= ok
        check("min_bytes", ok, (lambda: (
            human_bytes(p.bytes), f"≥{human_bytes(need)}",
            f"{human_bytes(need - p.bytes)} more data")) if explain else None)
    if when.sustained is not None:
        events_ok &= _sustained(when.sustained, st, now, check, explain)
    if when.debounce is not None and p.last_at is not None:
        events_ok &= _debounce(when.debounce, when.max_delay, p, now, check, explain)

    # -- conditions on the rule as a whole ------------------------------------------------------
    cooldown_ok = True
    if when.cooldown is not None and st.last_trigger_at is not None:
        last, cooldown = st.last_trigger_at, when.cooldown
        ends = last + cooldown
        cooldown_ok = now >= ends
        check("cooldown", cooldown_ok, (lambda: (
            f"last trigger {human_duration(now - last)} ago", f"≥{human_duration(cooldown)}",
            f"cooldown to end at {ends.isoformat()}")) if explain else None, ends)
    busy_wait = s.busy and s.on_busy == "coalesce"
    if s.busy:
        check("concurrency", not busy_wait, (lambda: (
            "busy", "a free job slot", "the running job to finish" if busy_wait else None))
            if explain else None)
    slot_ok = True
    if s.scheduled:
        slot, next_slot = s.at_slot, s.next_slot
        slot_ok = slot is not None
        check("schedule", slot_ok, (lambda: (
            f"check at {slot.isoformat()}" if slot else "between checks", "a scheduled check",
            f"the scheduled check at {next_slot.isoformat()}" if next_slot else
            "the next scheduled check")) if explain else None, next_slot)
    if floor_at is not None and when.at_least_every is not None and explain:
        since = ("last success" if base == st.last_success_at else
                 "last floor trigger" if base == st.last_floor_at else "rule started")
        conds.append(Condition("at_least_every",
                               f"{since} {human_duration(now - base)} ago",
                               f"fires anyway after {human_duration(when.at_least_every)}",
                               floor_due))

    gate_ok = cooldown_ok and not busy_wait
    if floor_at is not None and not floor_due:
        upcoming.append(("periodic floor due", floor_at))
    if len(upcoming) > 1:
        upcoming.sort(key=_time_of)
    if events_ok and gate_ok and slot_ok:
        return Decision(True, "schedule" if s.at_slot else "events",
                        _fire_reason(when, s, now) if explain else "", None, conds, upcoming)
    if floor_due and gate_ok:
        reason = ""
        if explain:
            reason = (f"periodic floor: no successful job for {human_duration(now - base)} "
                      f"(at_least_every {human_duration(when.at_least_every or timedelta(0))})")
            if p.count:
                reason += f"; {p.count} pending event(s)"
        return Decision(True, "floor", reason, None, conds, upcoming)
    if floor_at is not None and not floor_due:
        timers.append(floor_at)
    wait = ""
    if explain:
        wait = "; ".join(dict.fromkeys(waits)) or "new events"
        if p.count == 0 and when.sustained is None and not s.busy:
            wait = "new events"
    return Decision(False, "", wait, min(timers) if timers else None, conds, upcoming)


def _time_of(item: tuple[str, datetime]) -> datetime:
    return item[1]


Check = Callable[[str, bool, "Words | None", "datetime | None"], None]


def _sustained(sustained: int | timedelta, st: GroupState, now: datetime, check: Check,
               explain: bool) -> bool:
    if isinstance(sustained, int):
        n, least = st.sustained_count, sustained
        ok = n >= least
        check("sustained", ok, (lambda: (
            f"{n} consecutive", f"≥{least}", f"{least - n} more consecutive matching event(s)"))
            if explain else None, None)
        return ok
    since, hold = st.sustained_since, sustained
    held = now - since if since else timedelta(0)
    ok = since is not None and held >= hold
    check("sustained", ok, (lambda: (
        f"held for {human_duration(held)}" if since else "not holding",
        f"≥{human_duration(hold)}", "the match to hold for " + human_duration(hold - held)))
        if explain else None, since + hold if since else None)
    return ok


def _debounce(debounce: timedelta, max_delay: timedelta | None, p: Pending, now: datetime,
              check: Check, explain: bool) -> bool:
    assert p.last_at is not None  # noqa: S101 - the caller checks
    quiet = now - p.last_at
    quiet_ok = quiet >= debounce
    first = p.first_at
    bounded = max_delay is not None and first is not None and now - first >= max_delay
    at = _earliest(p.last_at + debounce,
                   first + max_delay if max_delay and first else None)
    ok = quiet_ok or bounded
    if not explain:
        check("debounce", ok, None, at)
        return ok

    def words() -> tuple[str, str, str | None]:
        value = f"quiet for {human_duration(quiet)}"
        if bounded and not quiet_ok and first is not None:
            value += f", first pending {human_duration(now - first)} ago"
        required = f"≥{human_duration(debounce)}" + (
            f" (or max_delay {human_duration(max_delay)})" if max_delay else "")
        return value, required, f"quiet until {at.isoformat() if at else '?'}"

    check("debounce", ok, words, at)
    return ok


# what a condition's time means, said as what happens then
_NEXT = {"debounce": "debounce ends", "cooldown": "cooldown ends",
         "sustained": "sustained match has held", "schedule": "scheduled check"}


def _fire_reason(when: WhenSpec, s: Situation, now: datetime) -> str:
    p, st = s.pending, s.state
    parts = [f"{p.count} new event{'s' if p.count != 1 else ''} (≥{when.min_events})"]
    if when.min_bytes is not None:
        parts.append(f"{human_bytes(p.bytes)} (≥{human_bytes(when.min_bytes)})")
    if when.sustained is not None:
        if isinstance(when.sustained, int):
            parts.append(f"{st.sustained_count} consecutive matches (≥{when.sustained})")
        elif st.sustained_since is not None:
            parts.append(f"match held for {human_duration(now - st.sustained_since)}")
    if when.debounce is not None and p.last_at is not None:
        quiet = now - p.last_at
        if quiet >= when.debounce:
            parts.append(f"quiet for {human_duration(quiet)}")
        elif p.first_at is not None:
            parts.append(f"max_delay {human_duration(when.max_delay or timedelta(0))} reached")
    if s.at_slot is not None:
        parts.append(f"scheduled check at {s.at_slot.isoformat()}")
    return ", ".join(parts)


def verdict_line(fires: bool, words: str) -> str:
    """The one-line verdict `explain` prints (and `triggerd test` matches `says` against):
    "would fire now: <reason>", "not firing: paused until ...", or "not firing: waiting for
    <what>"."""
    if fires:
        return f"would fire now: {words}"
    if words.startswith("paused"):
        return f"not firing: {words}"
    return f"not firing: waiting for {words}"


def on_busy(policy: str, busy: bool) -> tuple[str | None, str | None]:
    """What a new trigger's job does to the group's jobs under the rule's `on_busy`, as
    (`NewTrigger.supersede`, `NewTrigger.skipped`): coalesce supersedes the queued jobs it
    replaces; skip writes the new job cancelled when the rule is busy; queue changes
    nothing. (Not firing while busy under coalesce is `decide`'s.)"""
    if policy == "coalesce":
        return "on_busy: coalesce", None
    if policy == "skip" and busy:
        return None, "skipped: the rule was busy (on_busy: skip)"
    return None, None
