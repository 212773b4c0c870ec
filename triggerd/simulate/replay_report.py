"""A replay's report: the figures of every run per rule, as a table (`text`) or exact JSON
(`as_json`); `replay_html` draws the same data as a page."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from triggerd.engine.policy import human_duration
from triggerd.simulate.figures import Figures, figures
from triggerd.simulate.replay import RunResult


@dataclass
class Run:
    """One replayed (or the actual) run with its figures per rule."""

    result: RunResult
    kind: str  # "actual" | "current" | "candidate" | "sweep"
    config: str | None
    figures: dict[str, Figures] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.result.name


@dataclass
class Report:
    start: datetime
    until: datetime
    arrivals: str  # where they came from
    count: int
    jobs: str  # where job durations and outcomes came from
    rules: list[str]
    runs: list[Run]
    sweep: str | None = None  # the swept key (its runs have kind "sweep")

    @classmethod
    def build(cls, start: datetime, until: datetime, arrivals: str, count: int, jobs: str,
              rules: list[str], runs: list[tuple[RunResult, str, str | None, set[str]]],
              sweep: str | None = None) -> Report:
        """`runs`: each result, its kind, config file and the rules its config has."""
        report = cls(start, until, arrivals, count, jobs, rules, [], sweep)
        for result, kind, config, present in runs:
            run = Run(result, kind, config)
            for rule in [r for r in rules if r in present]:
                run.figures[rule] = figures(
                    [f for f in result.triggers if f.rule == rule],
                    len(result.pending.get(rule, [])), start, until)
            report.runs.append(run)
        return report

    def run(self, kind: str) -> list[Run]:
        return [r for r in self.runs if r.kind == kind]

    # -- JSON -------------------------------------------------------------------------------------
    def as_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(), "until": self.until.isoformat(),
            "days": round((self.until - self.start).total_seconds() / 86_400, 4),
            "arrivals": {"from": self.arrivals, "count": self.count},
            "jobs": self.jobs, "rules": self.rules, "sweep": self.sweep,
            "runs": [_run_json(r) for r in self.runs],
        }

    # -- text -------------------------------------------------------------------------------------
    def text(self) -> list[str]:
        span = human_duration(self.until - self.start)
        lines = [f"replay {self.start.isoformat()} .. {self.until.isoformat()} ({span}): "
                 f"{self.count} arrival(s) from {self.arrivals}",
                 f"jobs: {self.jobs}"]
        for run in self.runs:
            if run.kind != "actual":
                lines.append(f"{run.name}: {run.result.events} event input(s) replayed in "
                             f"{run.result.seconds:.2f}s")
            for why, n in sorted(run.result.left_out.items()):
                lines.append(f"  {run.name}: left out {n}: {why}")
            for error, n in sorted(run.result.rejected.items()):
                lines.append(f"  {run.name}: {n} event(s) rejected: {error}")
        table = [r for r in self.runs if r.kind != "sweep"]
        for rule in self.rules:
            lines += ["", *_rule_table(rule, table)]
            if self.sweep:
                lines += ["", *_sweep_table(rule, self.run("sweep"), self.sweep)]
        return lines


def _run_json(run: Run) -> dict[str, Any]:
    return {
        "name": run.name, "kind": run.kind, "config": run.config,
        "events": run.result.events, "seconds": round(run.result.seconds, 3),
        "left_out": run.result.left_out, "rejected": run.result.rejected,
        "rules": {rule: f.as_json() for rule, f in run.figures.items()},
        "triggers": [{"id": f.id, "rule": f.rule, "group": f.group, "at": f.at.isoformat(),
                      "kind": f.kind, "reason": f.reason, "events": [e for e, _ in f.events],
                      "job": {"status": f.status, "started_at": _iso(f.started),
                              "ended_at": _iso(f.ended)}}
                     for f in run.result.triggers],
    }


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def seconds(value: float | None) -> str:
    return "-" if value is None else human_duration(timedelta(seconds=value))


ROWS: list[tuple[str, Callable[[Figures], str]]] = [
    ("triggers", lambda f: str(f.triggers)),
    ("retrains", lambda f: str(f.retrains)),
    ("retrains per day", lambda f: f"{f.retrains_per_day:.2f}"),
    ("events per trigger", lambda f: "-" if f.events_per_trigger is None
     else f"{f.events_per_trigger:.1f}"),
    ("staleness p50", lambda f: seconds(f.staleness_p50)),
    ("staleness p95", lambda f: seconds(f.staleness_p95)),
    ("staleness max", lambda f: seconds(f.staleness_max)),
    ("unserved events", lambda f: str(f.unserved)),
    ("longest without success", lambda f: seconds(f.longest_without_success)),
]


def _rule_table(rule: str, runs: list[Run]) -> list[str]:
    head = [f"rule {rule}", *[r.name for r in runs]]
    body = [[name, *[show(r.figures[rule]) if rule in r.figures else "n/a" for r in runs]]
            for name, show in ROWS]
    return _columns([head, *body])


def _sweep_table(rule: str, runs: list[Run], key: str) -> list[str]:
    head = [f"  sweep {key}", "retrains/day", "staleness p50", "p95", "max", "unserved"]
    body = [[f"  {r.name.partition('=')[2]}", f"{r.figures[rule].retrains_per_day:.2f}",
             seconds(r.figures[rule].staleness_p50), seconds(r.figures[rule].staleness_p95),
             seconds(r.figures[rule].staleness_max), str(r.figures[rule].unserved)]
            for r in runs if rule in r.figures]
    return _columns([head, *body])


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]
