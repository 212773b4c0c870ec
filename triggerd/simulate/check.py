"""Expected against got: which expected triggers came, which did not, which came unexpected,
and which `explain` verdicts differ.

Triggers are paired in two passes: first each expected trigger with the first trigger that
matches it in every field given (rule, group, time within the tolerance, events, reason, kind,
job); then each one left with the nearest-in-time trigger of its rule (and group) left, as a
"differs" with the fields that do not match. What is left is missing or unexpected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from triggerd.language.regex import compile_re2
from triggerd.simulate.driver import Fired, Verdict
from triggerd.simulate.inputs import Named
from triggerd.simulate.spec import ExpectExplain, ExpectTrigger

Show = Callable[[datetime], str]


@dataclass(frozen=True)
class Mismatch:
    key: str
    expected: str
    got: str


@dataclass
class Diff:
    """One block of a failed test's report."""

    kind: str  # missing | unexpected | differs | explain
    title: str
    where: str = ""  # file:line of the expectation
    mismatches: list[Mismatch] = field(default_factory=list)


def text_matches(pattern: str, text: str) -> bool:
    """A substring, or with a leading `~` an RE2 regular expression searched in `text`."""
    if pattern.startswith("~"):
        return compile_re2(pattern[1:]).search(text) is not None
    return pattern in text


def _events_match(wanted: Sequence[str], got: Sequence[Named]) -> bool:
    left = list(got)
    for name in wanted:
        hit = next((n for n in left if name in n.names), None)
        if hit is None:
            return False
        left.remove(hit)
    return not left


def describe(f: Fired, show: Show) -> str:
    trig = f.trigger
    group = f" [group {trig.group}]" if trig.group else ""
    return (f"{trig.rule}{group} at {show(trig.fired_at)}: events "
            f"[{', '.join(n.shown for n in f.events)}], reason {trig.reason!r}, "
            f"kind {trig.kind or 'manual'}, job {f.job}")


@dataclass(frozen=True)
class TriggerCheck:
    """Compares one expected trigger (at `at`) with a trigger that fired."""

    expected: ExpectTrigger
    at: datetime
    tolerance: timedelta
    show: Show
    until: datetime

    def mismatches(self, f: Fired) -> list[Mismatch]:
        e, trig, out = self.expected, f.trigger, []
        if trig.rule != e.rule:
            out.append(Mismatch("rule", e.rule, trig.rule))
        if abs(trig.fired_at - self.at) > self.tolerance:
            out.append(Mismatch("at", self.show(self.at), self.show(trig.fired_at)))
        if e.group is not None and e.group != trig.group:
            out.append(Mismatch("group", repr(e.group), repr(trig.group)))
        if isinstance(e.events, int) and e.events != trig.events:
            out.append(Mismatch("events", f"{e.events} event(s)", f"{trig.events}"))
        elif isinstance(e.events, list) and not _events_match(e.events, f.events):
            out.append(Mismatch("events", f"[{', '.join(e.events)}]",
                                f"[{', '.join(n.shown for n in f.events)}]"))
        if e.reason is not None and not text_matches(e.reason, trig.reason):
            out.append(Mismatch("reason", repr(e.reason), repr(trig.reason)))
        kind = "manual" if trig.manual else trig.kind
        if e.kind is not None and e.kind != kind:
            out.append(Mismatch("kind", e.kind, kind))
        if e.job is not None and e.job != f.job:
            unfinished = f.job in ("queued", "running", "retrying")
            out.append(Mismatch("job", e.job, f.job + (
                f" (when the test ends, at {self.show(self.until)}: set `until` to run "
                "longer)" if unfinished else "")))
        return out

    def title(self) -> str:
        e = self.expected
        parts = [f"{e.rule}" + (f" [group {e.group}]" if e.group else ""),
                 f"at {self.show(self.at)}"]
        if e.events is not None:
            parts.append(f"events {e.events}" if isinstance(e.events, int)
                         else f"events [{', '.join(e.events)}]")
        parts += [f"{k} {v!r}" for k, v in (("reason", e.reason), ("kind", e.kind),
                                              ("job", e.job)) if v is not None]
        return " ".join(parts[:2]) + (": " + ", ".join(parts[2:]) if parts[2:] else "")


def compare_triggers(checks: list[tuple[TriggerCheck, str]], got: list[Fired],
                     show: Show) -> list[Diff]:
    """Pair expected (with where each was written) and got; the differences."""
    left = list(got)
    todo = []
    for check, where in checks:
        hit = next((f for f in left if not check.mismatches(f)), None)
        if hit is None:
            todo.append((check, where))
        else:
            left.remove(hit)
    diffs = []
    for check, where in todo:
        same = [f for f in left if f.trigger.rule == check.expected.rule and (
            check.expected.group is None or f.trigger.group == check.expected.group)]
        if not same:
            diffs.append(Diff("missing", f"missing trigger {check.title()}", where))
            continue
        near = min(same, key=lambda f: abs(f.trigger.fired_at - check.at))
        left.remove(near)
        diffs.append(Diff("differs", f"trigger {near.trigger.id} differs from the expected "
                          f"{check.title()}", where, check.mismatches(near)))
    diffs += [Diff("unexpected", f"unexpected trigger {f.trigger.id}: {describe(f, show)}")
              for f in left]
    return diffs


def compare_explain(expected: ExpectExplain, got: Verdict, where: str, show: Show
                    ) -> Diff | None:
    """An `explain` expectation against the verdict at its time; None when it holds."""
    out = []
    if expected.fires is not None and expected.fires != got.fires:
        out.append(Mismatch("fires", str(expected.fires).lower(),
                            f"{str(got.fires).lower()} ({got.text})"))
    if expected.says is not None and not text_matches(expected.says, got.text):
        out.append(Mismatch("says", repr(expected.says), repr(got.text)))
    for name, ok in expected.conditions.items():
        if name not in got.conditions:
            shown = ", ".join(got.conditions) or "none"
            out.append(Mismatch(f"conditions.{name}", _ok(ok), f"not shown (shown: {shown})"))
        elif got.conditions[name] != ok:
            out.append(Mismatch(f"conditions.{name}", _ok(ok), _ok(got.conditions[name])))
    if not out:
        return None
    group = f" [group {expected.group}]" if expected.group else ""
    return Diff("explain", f"explain {expected.rule}{group} at {show(got.at)}", where, out)


def _ok(value: bool) -> str:
    return "ok" if value else "NO"
