"""The firing policy, decided purely from state and time: no sleeping anywhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triggerd.config.schema import WhenSpec
from triggerd.engine.policy import Situation, decide, human_bytes, human_duration, on_busy
from triggerd.model import GroupState, Pending, RuleFlags

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)
M = timedelta(minutes=1)


def when(**kw: Any) -> WhenSpec:
    return WhenSpec.model_validate(kw)


def sit(count: int = 0, nbytes: int = 0, first: datetime | None = None,
        last: datetime | None = None, **state: Any) -> Situation:
    flags = state.pop("flags", RuleFlags())
    extra = {k: state.pop(k) for k in ("busy", "on_busy", "scheduled", "at_slot", "next_slot")
             if k in state}
    st = GroupState(rule="r", group="", seq=state.pop("seq", 0),
                    created_at=state.pop("created_at", T0 - timedelta(days=30)), **state)
    if count and first is None:
        first = last = T0
    return Situation(Pending(count, nbytes, first, last), st, flags, **extra)


def test_no_when_fires_on_every_new_event() -> None:
    d = decide(when(), sit(1), T0)
    assert d.fire and d.kind == "events"
    assert d.reason == "1 new event (≥1)"
    idle = decide(when(), sit(0), T0)
    assert not idle.fire and idle.waiting_for == "new events" and idle.next_check_at is None


def test_min_events_counts_pending_and_says_how_many_more() -> None:
    d = decide(when(min_events=10), sit(7), T0)
    assert not d.fire
    assert d.waiting_for == "3 more event(s)"
    assert [c.name for c in d.conditions if not c.ok] == ["min_events"]
    assert decide(when(min_events=10), sit(10), T0).reason == "10 new events (≥10)"


def test_min_bytes() -> None:
    gib = 2**30
    assert not decide(when(min_bytes="1GiB"), sit(3, gib - 1), T0).fire
    d = decide(when(min_bytes="1GiB"), sit(3, gib), T0)
    assert d.fire and "1.0 GiB (≥1.0 GiB)" in d.reason


def test_debounce_waits_for_quiet_and_names_the_time() -> None:
    w = when(min_events=2, debounce="2m")
    d = decide(w, sit(5, first=T0 - 10 * M, last=T0 - 30 * S), T0)
    assert not d.fire
    assert d.next_check_at == T0 + 90 * S
    d2 = decide(w, sit(5, first=T0 - 10 * M, last=T0 - 30 * S), T0 + 90 * S)
    assert d2.fire and d2.reason == "5 new events (≥2), quiet for 2m"


def test_max_delay_bounds_the_debounce_for_a_steady_stream() -> None:
    w = when(debounce="2m", max_delay="1h")
    # events every 30s for an hour: never quiet for 2m
    first = T0 - 59 * M
    d = decide(w, sit(120, first=first, last=T0 - 10 * S), T0)
    assert not d.fire and d.next_check_at == first + timedelta(hours=1)
    d2 = decide(w, sit(120, first=first, last=T0 + 50 * S), first + timedelta(hours=1))
    assert d2.fire and "max_delay 1h reached" in d2.reason


def test_cooldown_keeps_events_pending_until_it_ends() -> None:
    w = when(cooldown="6h")
    last = T0 - timedelta(hours=5)
    d = decide(w, sit(3, last_trigger_at=last), T0)
    assert not d.fire
    assert d.next_check_at == last + timedelta(hours=6)
    assert "cooldown to end at" in (d.waiting_for or "")
    assert decide(w, sit(3, last_trigger_at=last), last + timedelta(hours=6)).fire


def test_at_least_every_fires_without_events_counted_from_last_success() -> None:
    w = when(at_least_every="7d")
    ok = T0 - timedelta(days=7)
    d = decide(w, sit(0, last_success_at=ok, last_trigger_at=T0 - timedelta(days=1)), T0)
    assert d.fire and d.kind == "floor"
    assert d.reason.startswith("periodic floor: no successful job for 7d")
    # a recent trigger whose job failed does not silence the floor; a recent success does
    not_yet = decide(w, sit(0, last_success_at=T0 - timedelta(days=2)), T0)
    assert not not_yet.fire and not_yet.next_check_at == T0 + timedelta(days=5)


def test_explain_says_what_the_floor_counts_from() -> None:
    """`explain` names the moment the periodic floor counts from: a rule that never succeeded
    counts from its start, not from a "last success" it never had."""
    w = when(at_least_every="1h")

    def shown(**state: Any) -> str:
        d = decide(w, sit(0, created_at=T0 - 5 * M, **state), T0)
        return next(c.value for c in d.conditions if c.name == "at_least_every")

    assert shown() == "rule started 5m ago"
    assert shown(last_success_at=T0 - 2 * M) == "last success 2m ago"
    assert shown(last_success_at=T0 - 4 * M, last_floor_at=T0 - 3 * M) == (
        "last floor trigger 3m ago")


def test_floor_is_not_refired_right_after_a_floor_trigger() -> None:
    w = when(at_least_every="1d")
    d = decide(w, sit(0, last_success_at=T0 - timedelta(days=3), last_floor_at=T0 - M), T0)
    assert not d.fire and d.next_check_at == T0 - M + timedelta(days=1)


def test_floor_respects_cooldown() -> None:
    w = when(at_least_every="1d", cooldown="6h")
    d = decide(w, sit(0, last_success_at=T0 - timedelta(days=2),
                      last_trigger_at=T0 - timedelta(hours=1)), T0)
    assert not d.fire and d.next_check_at == T0 + timedelta(hours=5)


def test_sustained_count() -> None:
    w = when(sustained=3)
    assert not decide(w, sit(2, sustained_count=2), T0).fire
    d = decide(w, sit(3, sustained_count=3), T0)
    assert d.fire and "3 consecutive matches (≥3)" in d.reason
    # a reset streak with old pending events does not fire
    assert not decide(w, sit(5, sustained_count=0), T0).fire


def test_sustained_duration() -> None:
    w = when(sustained="15m")
    since = T0 - 10 * M
    d = decide(w, sit(4, sustained_count=4, sustained_since=since), T0)
    assert not d.fire and d.next_check_at == since + 15 * M
    assert decide(w, sit(4, sustained_count=4, sustained_since=since), since + 15 * M).fire


def test_schedule_only_fires_at_a_slot() -> None:
    w = when(schedule="0 2 * * *", min_events=1)
    nxt = T0 + timedelta(hours=14)
    d = decide(w, sit(3, scheduled=True, next_slot=nxt), T0)
    assert not d.fire and d.next_check_at == nxt
    d2 = decide(w, sit(3, scheduled=True, at_slot=T0, next_slot=nxt), T0)
    assert d2.fire and d2.kind == "schedule" and "scheduled check at" in d2.reason
    # at the slot with nothing new: no trigger
    assert not decide(w, sit(0, scheduled=True, at_slot=T0, next_slot=nxt), T0).fire


def test_pause_wins_and_ends_by_itself() -> None:
    until = T0 + timedelta(hours=2)
    flags = RuleFlags(paused=True, paused_until=until)
    d = decide(when(), sit(5, flags=flags), T0)
    assert not d.fire and d.waiting_for and d.waiting_for.startswith("paused until")
    assert d.next_check_at == until
    assert decide(when(), sit(5, flags=flags), until).fire


@pytest.mark.parametrize(("on_busy", "fires"), [("coalesce", False), ("queue", True),
                                                ("skip", True)])
def test_busy_rule(on_busy: str, fires: bool) -> None:
    d = decide(when(), sit(2, busy=True, on_busy=on_busy), T0)
    assert d.fire is fires
    if not fires:
        assert d.waiting_for == "the running job to finish"


def test_all_conditions_must_hold_and_explain_lists_each() -> None:
    w = when(min_events=10, min_bytes="1MiB", debounce="2m", cooldown="1h")
    d = decide(w, sit(12, 100, first=T0 - 5 * M, last=T0 - 3 * M,
                      last_trigger_at=T0 - timedelta(hours=2)), T0)
    verdicts = {c.name: c.ok for c in d.conditions}
    assert verdicts == {"min_events": True, "min_bytes": False, "debounce": True,
                        "cooldown": True}
    assert not d.fire and "more data" in (d.waiting_for or "")


def test_when_validation() -> None:
    with pytest.raises(ValueError, match="max_delay bounds a debounce"):
        when(max_delay="1h")
    with pytest.raises(ValueError, match="invalid duration"):
        when(debounce="2 minutes")
    with pytest.raises(ValueError):
        when(sustained=0)


def test_human_units() -> None:
    assert human_bytes(1536) == "1.5 KiB"
    assert human_duration(timedelta(hours=1, minutes=30, seconds=5)) == "1h30m"
    assert human_duration(timedelta(days=7)) == "7d"


@pytest.mark.parametrize(("policy", "busy", "supersede", "skipped"), [
    ("coalesce", True, True, False), ("coalesce", False, True, False),
    ("skip", True, False, True), ("skip", False, False, False),
    ("queue", True, False, False), ("queue", False, False, False)])
def test_what_a_new_trigger_does_to_the_jobs_under_on_busy(
        policy: str, busy: bool, supersede: bool, skipped: bool) -> None:
    """coalesce: the new job supersedes the group's queued ones; skip: while busy, the new job
    is written cancelled, with a detail that says why; queue: neither."""
    got = on_busy(policy, busy)
    assert (got[0] is not None, got[1] is not None) == (supersede, skipped)
    if skipped:
        assert "busy" in str(got[1]) and "skip" in str(got[1])


def test_explain_says_what_comes_next_for_every_kind_of_wait() -> None:
    """The end of a debounce and of a cooldown, the next scheduled check and the periodic
    floor's due time, soonest first; the end of a pause."""
    hour = timedelta(hours=1)
    w = when(debounce="10m", cooldown="1h", at_least_every="1d", schedule="0 2 * * *")
    d = decide(w, sit(3, first=T0 - M, last=T0 - M, last_trigger_at=T0 - 20 * M,
                      last_success_at=T0 - 3 * hour, scheduled=True,
                      next_slot=T0 + 5 * hour), T0)
    assert not d.fire
    assert d.upcoming == [("debounce ends", T0 + 9 * M), ("cooldown ends", T0 + 40 * M),
                          ("scheduled check", T0 + 5 * hour),
                          ("periodic floor due", T0 + 21 * hour)]
    paused = decide(w, sit(3, flags=RuleFlags(True, T0 + hour, "maintenance")), T0)
    assert paused.upcoming == [("pause ends", T0 + hour)]
    # nothing waits on a met condition: a due floor fires, and is not "next"
    due = decide(when(at_least_every="1h"), sit(last_success_at=T0 - 2 * hour), T0)
    assert due.fire and due.upcoming == []


_MINUTES = st.integers(min_value=0, max_value=600).map(lambda m: m * M)
_OPTIONAL = st.one_of(st.none(), st.integers(min_value=1, max_value=240).map(lambda m: m * M))


@st.composite
def _policies(draw: st.DrawFn) -> WhenSpec:
    spec: dict[str, Any] = {"min_events": draw(st.integers(min_value=1, max_value=20))}
    for key in ("debounce", "cooldown", "at_least_every"):
        spec[key] = draw(_OPTIONAL)
    if spec["debounce"] is not None and draw(st.booleans()):
        spec["max_delay"] = spec["debounce"] * draw(st.integers(min_value=1, max_value=4))
    if draw(st.booleans()):
        spec["min_bytes"] = draw(st.integers(min_value=1, max_value=10_000))
    spec["sustained"] = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=5),
                                       st.integers(min_value=1, max_value=60).map(
                                           lambda m: m * M)))
    return WhenSpec.model_validate({k: v for k, v in spec.items() if v is not None})


@st.composite
def _situations(draw: st.DrawFn) -> Situation:
    count = draw(st.integers(min_value=0, max_value=25))
    first = T0 - draw(_MINUTES) if count else None
    last = (max(first, T0 - draw(_MINUTES)) if first else None)
    ago = st.one_of(st.none(), _MINUTES.map(lambda d: T0 - d))
    state = GroupState(rule="r", group="", seq=1, created_at=T0 - timedelta(days=2),
                       last_trigger_at=draw(ago), last_success_at=draw(ago),
                       sustained_count=draw(st.integers(min_value=0, max_value=6)),
                       sustained_since=draw(ago))
    paused = draw(st.sampled_from([None, T0 + 5 * M, T0 - 5 * M]))
    flags = RuleFlags(paused is not None, paused, None)
    slot = draw(st.sampled_from([None, T0]))
    return Situation(Pending(count, draw(st.integers(min_value=0, max_value=20_000)),
                             first, last), state, flags, busy=draw(st.booleans()),
                     on_busy=draw(st.sampled_from(["coalesce", "queue", "skip"])),
                     scheduled=slot is not None or draw(st.booleans()), at_slot=slot,
                     next_slot=T0 + 30 * M)


@given(_policies(), _situations(), _MINUTES)
@settings(max_examples=400, deadline=None)
def test_a_decision_without_words_is_the_same_decision(w: WhenSpec, s: Situation,
                                                       later: timedelta) -> None:
    """`explain=False` (the replay's lookahead, the engine's rounds) leaves out the words
    only: whether to fire, the kind and the next time to look are those of the full
    decision, in every situation."""
    now = T0 + later
    full, brief = decide(w, s, now), decide(w, s, now, explain=False)
    assert (brief.fire, brief.kind, brief.next_check_at, brief.upcoming) == (
        full.fire, full.kind, full.next_check_at, full.upcoming)
    assert full.reason  # the words are there when asked for


def test_the_verdict_line_of_a_paused_rule_says_paused_not_waiting_for_paused() -> None:
    from triggerd.engine.policy import verdict_line

    paused = decide(when(), sit(1, flags=RuleFlags(paused=True, paused_until=T0 + M,
                                                    paused_reason="backfill")), T0)
    assert [(c.name, c.value) for c in paused.conditions] == [("paused", "yes: backfill")]
    assert verdict_line(paused.fire, paused.waiting_for or "") == (
        f"not firing: paused until {(T0 + M).isoformat()}")
    assert verdict_line(False, "1 more event(s)") == "not firing: waiting for 1 more event(s)"
    assert verdict_line(True, "1 new event (≥1)") == "would fire now: 1 new event (≥1)"
