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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


Text = Callable[[], str]  # a condition's words, built only when explaining


def decide(when: WhenSpec, s: Situation, now: datetime, *, explain: bool = True) -> Decision:
    """The decision for one group at `now`. With `explain=False` the words (the reason and
    the conditions) are left out, and only `fire`, `kind` and `next_check_at` are given: the
    same verdict, a few times faster (the replay's lookahead asks after every arrival)."""
    p, st = s.pending, s.state
    conds: list[Condition] = []
    waits: list[Text] = []
    timers: list[datetime | None] = []
    upcoming: list[tuple[str, datetime]] = []
    oks: list[bool] = []

    def check(name: str, value: Text, required: Text, ok: bool, wait: Text | None = None,
              at: datetime | None = None) -> None:
        oks.append(ok)
        if explain:
            conds.append(Condition(name, value(), required(), ok))
        if not ok:
            if wait:
                waits.append(wait)
            timers.append(at)
            if at is not None:
                upcoming.append((_NEXT.get(name, name), at))

    if s.flags.is_paused(now):
        until = s.flags.paused_until
        why = s.flags.paused_reason
        conds.append(Condition("paused", f"yes: {why}" if why else "yes", "not paused", False))
        return Decision(False, "", "paused" + (f" until {until.isoformat()}" if until else ""),
                        until, conds, [("pause ends", until)] if until else [])

    # -- the periodic floor, counted from the last success (or floor trigger, or creation) ----
    floor_due = False
    floor_at: datetime | None = None
    base = st.created_at
    if when.at_least_every is not None:
        base = max(t for t in (st.last_success_at, st.last_floor_at, st.created_at) if t)
        floor_at = base + when.at_least_every
        floor_due = now >= floor_at

    # -- conditions on pending events -----------------------------------------------------------
    check("min_events", lambda: str(p.count), lambda: f"≥{when.min_events}",
          p.count >= when.min_events,
          lambda: f"{when.min_events - p.count} more event(s)" if p.count else "new events")
    if when.min_bytes is not None:
        need = when.min_bytes
        check("min_bytes", lambda: human_bytes(p.bytes), lambda: f"≥{human_bytes(need)}",
              p.bytes >= need, lambda: f"{human_bytes(need - p.bytes)} more data")
    if when.sustained is not None:
        _sustained(when.sustained, st, now, check)
    if when.debounce is not None and p.last_at is not None:
        _debounce(when.debounce, when.max_delay, p, now, check)
    events_ok = all(oks)

    # -- conditions on the rule as a whole ------------------------------------------------------
    cooldown_ok = True
    if when.cooldown is not None and st.last_trigger_at is not None:
        ends = st.last_trigger_at + when.cooldown
        cooldown_ok = now >= ends
        last, cooldown = st.last_trigger_at, when.cooldown
        check("cooldown", lambda: f"last trigger {human_duration(now - last)} ago",
              lambda: f"≥{human_duration(cooldown)}", cooldown_ok,
              lambda: f"cooldown to end at {ends.isoformat()}", ends)
    busy_wait = s.busy and s.on_busy == "coalesce"
    if s.busy:
        check("concurrency", lambda: "busy", lambda: "a free job slot", not busy_wait,
              (lambda: "the running job to finish") if busy_wait else None)
    slot_ok = True
    if s.scheduled:
        slot_ok = s.at_slot is not None
        slot, next_slot = s.at_slot, s.next_slot
        check("schedule", lambda: f"check at {slot.isoformat()}" if slot else "between checks",
              lambda: "a scheduled check", slot_ok,
              lambda: f"the scheduled check at {next_slot.isoformat()}" if next_slot else
              "the next scheduled check", next_slot)
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
    upcoming.sort(key=lambda item: item[1])
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
    if not floor_due:
        timers.append(floor_at)
    wait = ""
    if explain:
        wait = "; ".join(dict.fromkeys(w() for w in waits)) or "new events"
        if p.count == 0 and when.sustained is None and not s.busy:
            wait = "new events"
    return Decision(False, "", wait, _earliest(*timers), conds, upcoming)


Check = Callable[[str, Text, Text, bool, "Text | None", "datetime | None"], None]


def _sustained(sustained: int | timedelta, st: GroupState, now: datetime, check: Check
               ) -> None:
    if isinstance(sustained, int):
        n = st.sustained_count
        check("sustained", lambda: f"{n} consecutive", lambda: f"≥{sustained}",
              n >= sustained, lambda: f"{sustained - n} more consecutive matching event(s)",
              None)
        return
    since = st.sustained_since
    held = now - since if since else timedelta(0)
    check("sustained", lambda: f"held for {human_duration(held)}" if since else "not holding",
          lambda: f"≥{human_duration(sustained)}", since is not None and held >= sustained,
          lambda: "the match to hold for " + human_duration(sustained - held),
          since + sustained if since else None)


def _debounce(debounce: timedelta, max_delay: timedelta | None, p: Pending, now: datetime,
              check: Check) -> None:
    assert p.last_at is not None  # noqa: S101 - the caller checks
    quiet = now - p.last_at
    quiet_ok = quiet >= debounce
    first = p.first_at
    bounded = max_delay is not None and first is not None and now - first >= max_delay

    def value() -> str:
        text = f"quiet for {human_duration(quiet)}"
        if bounded and not quiet_ok and first is not None:
            text += f", first pending {human_duration(now - first)} ago"
        return text

    def required() -> str:
        return f"≥{human_duration(debounce)}" + (
            f" (or max_delay {human_duration(max_delay)})" if max_delay else "")

    at = _earliest(p.last_at + debounce,
                   first + max_delay if max_delay and first else None)
    check("debounce", value, required, quiet_ok or bounded,
          lambda: f"quiet until {at.isoformat() if at else '?'}", at)


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
