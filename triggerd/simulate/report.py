"""A test file's results as text for people (a readable, colourless diff per failed test and a
summary line) and as JSON for machines (`triggerd test --json`)."""

from __future__ import annotations

from typing import Any

from triggerd.simulate.check import describe
from triggerd.simulate.runner import CaseReport, FileReport, offset


def text(report: FileReport, *, verbose: bool = False) -> list[str]:
    """The lines to print for one file: `ok`/`FAIL` per test, the diff of each failure."""
    lines = []
    for case in report.cases:
        timing = f"{case.seconds * 1000:.0f} ms"
        if case.passed:
            lines.append(f"ok    {case.name} ({len(case.fired)} trigger(s), {timing})")
            if verbose:
                lines += _fired(case) + [f"  note: {note}" for note in case.notes]
            continue
        lines.append(f"FAIL  {case.name} ({case.where})")
        for diff in case.diffs:
            sign = {"missing": "-", "unexpected": "+"}.get(diff.kind, "~")
            lines.append(f"  {sign} {diff.title}" + (f"  ({diff.where})" if diff.where else ""))
            width = max((len(m.key) for m in diff.mismatches), default=0) + 1
            for m in diff.mismatches:
                lines.append(f"      {(m.key + ':').ljust(width)} expected {m.expected}, "
                             f"got {m.got}")
        lines += _fired(case)
        lines += [f"  note: {note}" for note in case.notes]
    return lines


def _fired(case: CaseReport) -> list[str]:
    assert case.start is not None  # noqa: S101 - set by run_case
    start = case.start
    got = [f"      {describe(f, lambda at: offset(at - start))}" for f in case.fired]
    return ["    triggers written:", *got] if got else ["    triggers written: none"]


def summary(reports: list[FileReport]) -> str:
    total = sum(len(r.cases) for r in reports)
    failed = sum(r.failed for r in reports)
    return f"{total} test(s), {failed} failed"


def as_json(reports: list[FileReport]) -> dict[str, Any]:
    """{"files": [{"file", "tests": [{"name", "passed", "where", "diffs", "triggers",
    "notes", "seconds"}]}], "tests", "failed"}."""
    return {"files": [{"file": str(r.path), "tests": [_case(c) for c in r.cases]}
                      for r in reports],
            "tests": sum(len(r.cases) for r in reports),
            "failed": sum(r.failed for r in reports)}


def _case(case: CaseReport) -> dict[str, Any]:
    assert case.start is not None  # noqa: S101 - set by run_case
    start = case.start
    return {
        "name": case.name, "passed": case.passed, "where": case.where,
        "diffs": [{"kind": d.kind, "title": d.title, "where": d.where or None,
                   "mismatches": [{"key": m.key, "expected": m.expected, "got": m.got}
                                  for m in d.mismatches]} for d in case.diffs],
        "triggers": [{**f.trigger.to_dict(), "at": offset(f.trigger.fired_at - start),
                      "kind": f.trigger.kind or "manual", "job": f.job,
                      "events": [n.shown for n in f.events]} for f in case.fired],
        "notes": case.notes, "seconds": round(case.seconds, 6)}
