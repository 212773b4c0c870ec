"""Running a test file: each test on a fresh in-memory store, then expected against got.

`run_file(path)` loads the file (a bad one raises `ConfigError` with `file:line` problems),
simulates each test (`driver.Simulation`) and compares (`check`); the CLI prints the reports
(`report`). Times are shown as offsets from the test's start (`1m30s`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from triggerd.errors import ConfigError
from triggerd.simulate.check import (
    Diff,
    Show,
    TriggerCheck,
    compare_explain,
    compare_triggers,
)
from triggerd.simulate.driver import Fired, Result, Simulation, SimulationError, Timeline
from triggerd.simulate.memstore import fresh_store
from triggerd.simulate.spec import Case
from triggerd.simulate.testfile import Loaded, absolute, load_test_file

_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


def offset(delta: timedelta) -> str:
    """`90s` as `1m30s`, `0.2s` as `200ms`: a time as the tests write it."""
    ms = round(delta.total_seconds() * 1000)
    sign, ms = ("-" if ms < 0 else ""), abs(ms)
    parts = []
    for unit, size in _UNITS:
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return sign + ("".join(parts) or "0s")


@dataclass
class CaseReport:
    name: str
    where: str  # file:line of the test
    diffs: list[Diff] = field(default_factory=list)
    fired: list[Fired] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    start: datetime | None = None

    @property
    def passed(self) -> bool:
        return not self.diffs


@dataclass
class FileReport:
    path: Path
    cases: list[CaseReport]

    @property
    def failed(self) -> int:
        return sum(not c.passed for c in self.cases)


def run_file(path: str | os.PathLike[str], env: Mapping[str, str] | None = None
             ) -> FileReport:
    """Load and run every test of a test file (ConfigError if the file is bad)."""
    return run_loaded(load_test_file(path, env))


def run_loaded(loaded: Loaded) -> FileReport:
    """Run every test of a loaded test file."""
    return FileReport(loaded.path, [run_case(loaded, i) for i in range(len(loaded.spec.tests))])


def run_case(loaded: Loaded, i: int) -> CaseReport:
    case = loaded.spec.tests[i]
    started = time.perf_counter()
    start = loaded.start_of(case)

    def show(at: datetime) -> str:
        return offset(at - start)

    tolerance = case.tolerance if case.tolerance is not None else loaded.spec.tolerance
    timeline = _timeline(case, start, tolerance)
    store = fresh_store()
    try:
        sim = Simulation(loaded.config, store, start, case.jobs or loaded.spec.jobs,
                         auto_ticks=(case.ticks or loaded.spec.ticks) == "auto", show=show)
        result = asyncio.run(sim.run(timeline))
    except SimulationError as exc:  # a timeline too long to simulate: the file's problem
        raise ConfigError([f"{loaded.where('tests', i)}: tests[{i}]: {exc}"]) from None
    finally:
        store.close()
    report = CaseReport(case.name, loaded.where("tests", i), fired=result.fired,
                        notes=result.notes, start=start)
    report.diffs = _compare(loaded, i, result, (start, timeline.until), tolerance, show)
    report.seconds = time.perf_counter() - started
    return report


def _timeline(case: Case, start: datetime, tolerance: timedelta) -> Timeline:
    inputs = [(absolute(item.at, start), item) for item in case.input]
    checks = [(absolute(e.at, start), e.rule, e.group) for e in case.expect.explain]
    if case.until is not None:
        until = absolute(case.until, start)
    else:
        ends = [at for at, _ in inputs] + [at for at, _, _ in checks] + [
            absolute(e.at, start) + tolerance for e in case.expect.triggers or []]
        until = max(ends, default=start)
    return Timeline(inputs, checks, until)


def _compare(loaded: Loaded, i: int, result: Result, span: tuple[datetime, datetime],
             tolerance: timedelta, show: Show) -> list[Diff]:
    case = loaded.spec.tests[i]
    start, until = span
    diffs: list[Diff] = []
    if case.expect.triggers is not None:
        got = [f for f in result.fired if case.rules is None or f.trigger.rule in case.rules]
        checks = [(TriggerCheck(e, absolute(e.at, start), tolerance, show, until),
                   loaded.where("tests", i, "expect", "triggers", n))
                  for n, e in enumerate(case.expect.triggers)]
        diffs += compare_triggers(checks, got, show)
    for n, (e, verdict) in enumerate(zip(case.expect.explain, result.verdicts, strict=True)):
        diff = compare_explain(e, verdict, loaded.where("tests", i, "expect", "explain", n),
                               show)
        if diff is not None:
            diffs.append(diff)
    return diffs
