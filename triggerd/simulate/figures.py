"""The numbers a replay reports per rule, from triggers and their jobs (`TriggerFact`).

- `triggers`, and `retrains`: the triggers whose job started (a skipped or superseded job
  retrains nothing); `retrains_per_day` over the replayed span;
- `events_per_trigger`: the mean number of events a trigger consumed;
- staleness: for each event a started job consumed, from its arrival to that job's start
  (p50, p95, max); `unserved`: events no started job consumed by the end (still pending, or
  their job never started);
- `longest_without_success`: the longest span of the replay with no job ending in success
  (from the start, between successes, to the end), and where it lies.

The same function measures a replay and what actually happened (`actual`), so the two compare.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from triggerd.model import JobStatus
from triggerd.simulate.replay import TriggerFact

DAY = 86_400.0


@dataclass(frozen=True)
class Figures:
    triggers: int
    retrains: int
    retrains_per_day: float
    events_per_trigger: float | None
    staleness_p50: float | None  # seconds
    staleness_p95: float | None
    staleness_max: float | None
    unserved: int
    longest_without_success: float  # seconds
    gap_from: datetime
    gap_to: datetime

    def as_json(self) -> dict[str, object]:
        return {
            "triggers": self.triggers, "retrains": self.retrains,
            "retrains_per_day": round(self.retrains_per_day, 4),
            "events_per_trigger": _round(self.events_per_trigger),
            "staleness_seconds": {"p50": _round(self.staleness_p50),
                                  "p95": _round(self.staleness_p95),
                                  "max": _round(self.staleness_max)},
            "unserved_events": self.unserved,
            "longest_without_success_seconds": round(self.longest_without_success, 3),
            "longest_without_success": {"from": self.gap_from.isoformat(),
                                        "to": self.gap_to.isoformat()},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile `q` (0-100) of sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def figures(facts: Iterable[TriggerFact], pending: int, start: datetime, until: datetime
            ) -> Figures:
    """The figures of one rule's triggers over [start, until]; `pending`: its events no
    trigger consumed by the end."""
    facts = sorted(facts, key=lambda f: f.at)
    stale: list[float] = []
    unserved = pending
    consumed = 0
    successes = []
    for f in facts:
        consumed += len(f.events)
        if f.started is None:
            unserved += len(f.events)
        else:
            stale.extend(max(0.0, (f.started - at).total_seconds()) for _e, at in f.events)
        if f.status == JobStatus.SUCCEEDED and f.ended is not None:
            successes.append(f.ended)
    stale.sort()
    retrains = sum(f.started is not None for f in facts)
    days = max((until - start).total_seconds(), 1.0) / DAY
    gap, gap_from, gap_to = _longest_gap(start, until, successes)
    return Figures(
        triggers=len(facts), retrains=retrains, retrains_per_day=retrains / days,
        events_per_trigger=consumed / len(facts) if facts else None,
        staleness_p50=percentile(stale, 50), staleness_p95=percentile(stale, 95),
        staleness_max=stale[-1] if stale else None, unserved=unserved,
        longest_without_success=gap, gap_from=gap_from, gap_to=gap_to)


def _longest_gap(start: datetime, until: datetime, successes: list[datetime]
                 ) -> tuple[float, datetime, datetime]:
    marks = [start, *sorted(s for s in successes if start <= s <= until), until]
    best = (0.0, start, start)
    for a, b in itertools.pairwise(marks):
        span = (b - a).total_seconds()
        if span > best[0]:
            best = (span, a, b)
    return best
