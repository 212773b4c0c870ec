"""The checker of bench/chaos.py: what a run observed, the verdict, and the table.

`Observed` is everything gathered after the drain: the store's rows (read directly from the
database), the receiver's deliveries, the command's run records, what the harness wrote and
produced, and the faults with their timing. `check()` turns it into `Figures`; the module
docstring of bench/chaos.py defines each figure.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

FINAL = frozenset({"succeeded", "failed", "cancelled"})
KINDS = ("kill", "pause", "pgcut", "broker", "restart")
# log findings that fail the verdict (the others are reported: tracebacks, takeovers, ...)
VERDICT_FINDINGS = ("drain waits timed out", "replica exits not caused by the harness",
                    "harness errors")
Match = Callable[[Mapping[str, Any]], bool]  # (event row) -> does the rule match it


@dataclass
class FaultRecord:
    """One fault as it happened: `t0` when it began, `t1` when it was undone (wall clock)."""

    kind: str
    target: int  # replica index, -1 for the broker
    t0: float
    length: float  # as scheduled
    t1: float | None = None
    pid: int | None = None  # the replica process hit
    jobs: dict[str, int] = field(default_factory=dict)  # kill/pause: running job -> attempt


@dataclass
class Observed:
    events: list[dict[str, Any]]  # id, source, fingerprint, payload, observed_at (epoch)
    rule_events: list[tuple[str, str, str | None]]  # (rule, event id, trigger id)
    triggers: dict[str, dict[str, Any]]  # id -> rule, fired_at, manual
    jobs: dict[str, dict[str, Any]]  # trigger id -> id, backend, status, attempts, finished_at
    attempts: dict[str, list[dict[str, Any]]]  # job id -> n, owner, started_at, finished_at
    daemons: dict[int, str]  # pid -> daemon id
    deliveries: list[Any]  # _chaos_receiver.Delivery
    runs: list[dict[str, Any]]  # the command's records
    files: set[str]  # relpaths the harness published
    messages: dict[str, float]  # message id -> when the broker acknowledged it
    exempt_after: dict[str, float]  # rule -> events observed after this may stay pending
    faults: list[FaultRecord]
    beats: dict[str, list[float]]  # daemon id -> heartbeat values seen
    http_backends: frozenset[str]
    command_backends: frozenset[str]
    log_findings: dict[str, int] = field(default_factory=dict)


@dataclass
class Figures:
    faults: dict[str, int]
    events: int
    events_by_source: dict[str, int]
    triggers: int
    jobs_by_status: dict[str, int]
    deliveries: int
    duplicate_deliveries: int
    duplicate_side_effects: int
    missing_side_effects: int
    command_runs: int
    command_reruns: int
    lost_events: int
    lost_detail: list[str]
    unfinished: list[str]  # triggers without a job, or whose job is not final
    inconsistent: list[str]  # deliveries/runs that disagree with the store
    pending_exempt: int  # events after the drain's last fire, allowed to stay pending
    resume: dict[str, dict[str, Any]]  # kind -> n, samples, p50, max, never, each
    log_findings: dict[str, int]

    @property
    def ok(self) -> bool:
        return (self.lost_events == 0 and self.duplicate_side_effects == 0
                and self.missing_side_effects == 0 and not self.unfinished
                and not self.inconsistent
                and all(r["never"] == 0 for r in self.resume.values())
                and not any(self.log_findings.get(k) for k in VERDICT_FINDINGS))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def lost_inputs(obs: Observed) -> list[str]:
    """Files published and messages acknowledged that never became an event."""
    relpaths = {e["payload"].get("relpath") for e in obs.events if e["source"] == "landing"}
    mids = {e["fingerprint"] for e in obs.events if e["source"] == "metrics"}
    return ([f"file {p} never stored" for p in sorted(obs.files - relpaths)]
            + [f"message {m} never stored" for m in sorted(set(obs.messages) - mids)])


def consumption(obs: Observed, matches: Mapping[str, Match]) -> tuple[list[str], int]:
    """Every (rule, event) the rule matches has one rule_events row with a trigger; no row
    for a rule that does not match. Returns the violations and the exempt pending count."""
    rows = {(rule, ev): trig for rule, ev, trig in obs.rule_events}
    bad: list[str] = []
    exempt = 0
    for event in obs.events:
        for rule, match in matches.items():
            key = (rule, event["id"])
            if not match(event):
                if key in rows:
                    bad.append(f"{rule}: holds {_name(event)}, which it does not match")
                continue
            if key not in rows:
                bad.append(f"{rule}: {_name(event)} never reached the rule")
            elif rows[key] is None:
                if event["observed_at"] > obs.exempt_after.get(rule, float("inf")):
                    exempt += 1
                else:
                    bad.append(f"{rule}: {_name(event)} still pending after the drain")
            elif rows[key] not in obs.triggers:
                bad.append(f"{rule}: {_name(event)} consumed by unknown trigger {rows[key]}")
    return bad, exempt


def unfinished(obs: Observed) -> list[str]:
    out = []
    for tid in sorted(obs.triggers):
        job = obs.jobs.get(tid)
        if job is None:
            out.append(f"trigger {tid} has no job")
        elif job["status"] not in FINAL:
            out.append(f"trigger {tid}: job {job['status']}")
    return out


def _events_of(obs: Observed) -> dict[str, set[str]]:
    """trigger id -> the event ids the store says it consumed."""
    out: dict[str, set[str]] = defaultdict(set)
    for _rule, ev, trig in obs.rule_events:
        if trig is not None:
            out[trig].add(ev)
    return out


@dataclass
class Effects:
    deliveries: int = 0
    duplicate_deliveries: int = 0
    duplicates: int = 0
    missing: int = 0
    runs: int = 0
    reruns: int = 0
    inconsistent: list[str] = field(default_factory=list)


def side_effects(obs: Observed) -> Effects:
    """Deliveries and runs against the store: one side effect per trigger id at the
    idempotent receiver, commands run again only under the same trigger id, no event in the
    side effects of two triggers of one rule."""
    fx = Effects(deliveries=len(obs.deliveries))
    consumed = _events_of(obs)
    acted: Counter[str] = Counter(d.key for d in obs.deliveries if d.acted)
    keys: Counter[str] = Counter(d.key for d in obs.deliveries)
    fx.duplicate_deliveries = sum(n - 1 for n in keys.values())
    fx.duplicates += sum(n - 1 for n in acted.values())
    for d in obs.deliveries:
        job = obs.jobs.get(d.key)
        if job is None or job["backend"] not in obs.http_backends:
            fx.inconsistent.append(f"delivery with unknown key {d.key!r}")
        elif set(d.events) != consumed.get(d.key, set()):
            fx.inconsistent.append(f"delivery {d.key}: events differ from the store's")
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in obs.runs:
        runs[run["trigger"]].append(run)
    fx.runs = len(obs.runs)
    fx.reruns = sum(len(r) - 1 for r in runs.values())
    for tid, records in runs.items():
        job = obs.jobs.get(tid)
        if job is None or job["backend"] not in obs.command_backends:
            fx.inconsistent.append(f"command ran for unknown trigger {tid!r}")
        elif any(set(r["events"]) != consumed.get(tid, set()) for r in records):
            fx.inconsistent.append(f"command run of {tid}: events differ from the store's")
    for tid, job in obs.jobs.items():
        done = acted[tid] if job["backend"] in obs.http_backends else len(runs.get(tid, []))
        if job["status"] == "succeeded" and done == 0:
            fx.missing += 1
            fx.inconsistent.append(f"job {tid} succeeded without a side effect")
    fx.duplicates += _events_in_two_effects(obs, {d.key for d in obs.deliveries if d.acted}
                                            | set(runs))
    return fx


def _events_in_two_effects(obs: Observed, effected: Iterable[str]) -> int:
    """Events that reached a backend in the side effects of more than one trigger of a rule."""
    per_event: Counter[tuple[str, str]] = Counter()
    consumed = _events_of(obs)
    for tid in set(effected):
        trig = obs.triggers.get(tid)
        if trig is not None:
            for ev in consumed.get(tid, ()):
                per_event[(trig["rule"], ev)] += 1
    return sum(n - 1 for n in per_event.values() if n > 1)


def _resume_one(obs: Observed, fault: FaultRecord) -> float | str | None:
    """Seconds to resume dispatching after `fault` (see bench/chaos.py); "n/a" when the
    definition has nothing to measure (a replica running no job when killed or paused)."""
    if fault.kind in ("kill", "pause"):
        if not fault.jobs:
            return "n/a"
        worst = 0.0
        for job_id, n in fault.jobs.items():
            job = next((j for j in obs.jobs.values() if j["id"] == job_id), None)
            later = [a["started_at"] for a in obs.attempts.get(job_id, []) if a["n"] > n]
            ends = [job["finished_at"]] if job and job["status"] in FINAL and \
                job["finished_at"] is not None else []
            if not later and not ends:
                return None
            worst = max(worst, min(later + ends) - fault.t0)
        return worst
    if fault.t1 is None:
        return None
    if fault.kind == "pgcut":
        daemon = obs.daemons.get(fault.pid or -1)
        seen = [b for b in obs.beats.get(daemon or "", []) if b > fault.t1]
        seen += [t for a in (x for xs in obs.attempts.values() for x in xs)
                 if a["owner"] == daemon for t in (a["started_at"], a["finished_at"])
                 if t is not None and t > fault.t1]
        return min(seen) - fault.t1 if seen else None
    return _broker_resume(obs, fault.t1)  # broker (outage) and restart alike


def _broker_resume(obs: Observed, t1: float) -> float | str | None:
    """From the broker's return (the proxy started again, or the broker itself) to the first
    attempt of a job whose trigger holds a message acknowledged after it; "n/a" when none was
    (a fault that the drain ended just before the workload stopped)."""
    after = {m for m, at in obs.messages.items() if at > t1}
    if not after:
        return "n/a"
    by_fp = {e["id"]: e["fingerprint"] for e in obs.events if e["source"] == "metrics"}
    first: float | None = None
    for tid, evs in _events_of(obs).items():
        if not any(by_fp.get(ev) in after for ev in evs):
            continue
        job = obs.jobs.get(tid)
        starts = [a["started_at"] for a in obs.attempts.get(job["id"], [])] if job else []
        if starts and (first is None or min(starts) < first):
            first = min(starts)
    return None if first is None else max(0.0, first - t1)


def resume_times(obs: Observed) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        faults = [f for f in obs.faults if f.kind == kind]
        if not faults:
            continue
        values = [_resume_one(obs, f) for f in faults]
        samples = sorted(v for v in values if isinstance(v, float))
        out[kind] = {"n": len(faults), "samples": len(samples),
                     "never": sum(v is None for v in values),
                     "p50": round(statistics.median(samples), 1) if samples else None,
                     "max": round(samples[-1], 1) if samples else None,
                     # each fault: when it began (local time, as in the logs), its target,
                     # the seconds to resume (or "n/a", or None: never)
                     "each": [(time.strftime("%H:%M:%S", time.localtime(f.t0)), f.target,
                               round(v, 1) if isinstance(v, float) else v)
                              for f, v in zip(faults, values, strict=True)]}
    return out


def check(obs: Observed, matches: Mapping[str, Match]) -> Figures:
    lost = lost_inputs(obs)
    not_consumed, exempt = consumption(obs, matches)
    fx = side_effects(obs)
    statuses = Counter(j["status"] for j in obs.jobs.values())
    return Figures(
        faults=dict(Counter(f.kind for f in obs.faults)),
        events=len(obs.events),
        events_by_source=dict(Counter(e["source"] for e in obs.events)),
        triggers=len(obs.triggers), jobs_by_status=dict(statuses),
        deliveries=fx.deliveries, duplicate_deliveries=fx.duplicate_deliveries,
        duplicate_side_effects=fx.duplicates, missing_side_effects=fx.missing,
        command_runs=fx.runs, command_reruns=fx.reruns,
        lost_events=len(lost) + len(not_consumed), lost_detail=(lost + not_consumed)[:50],
        unfinished=unfinished(obs)[:50], inconsistent=fx.inconsistent[:50],
        pending_exempt=exempt, resume=resume_times(obs), log_findings=obs.log_findings)


def _name(event: Mapping[str, Any]) -> str:
    return f"{event['source']}:{event['fingerprint'][:60]}"


def table(fig: Figures) -> str:
    """The figures as two plain-text tables (run summary; resume time per fault kind)."""
    rows = [("faults", ", ".join(f"{k} {v}" for k, v in sorted(fig.faults.items())) or "0"),
            ("events", f"{fig.events} (" + ", ".join(
                f"{k} {v}" for k, v in sorted(fig.events_by_source.items())) + ")"),
            ("triggers", str(fig.triggers)),
            ("jobs", ", ".join(f"{k} {v}" for k, v in sorted(fig.jobs_by_status.items()))),
            ("deliveries (http)", str(fig.deliveries)),
            ("duplicate deliveries (same key)", str(fig.duplicate_deliveries)),
            ("command runs / re-runs (same id)", f"{fig.command_runs} / {fig.command_reruns}"),
            ("duplicate side effects", str(fig.duplicate_side_effects)),
            ("missing side effects", str(fig.missing_side_effects)),
            ("lost events", str(fig.lost_events)),
            ("unfinished triggers", str(len(fig.unfinished))),
            ("inconsistencies", str(len(fig.inconsistent))),
            ("pending after the drain (exempt)", str(fig.pending_exempt))]
    rows += [(f"log: {k}", str(v)) for k, v in sorted(fig.log_findings.items())]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += ["", f"{'resume after':<14}{'faults':>7}{'measured':>10}{'p50 s':>8}{'max s':>8}"
              f"{'never':>7}"]
    for kind, r in fig.resume.items():
        lines.append(f"{kind:<14}{r['n']:>7}{r['samples']:>10}{_s(r['p50']):>8}"
                     f"{_s(r['max']):>8}{r['never']:>7}")
    lines.append("")
    lines.append("verdict: " + ("OK" if fig.ok else "FAILED"))
    for what in (fig.lost_detail, fig.unfinished, fig.inconsistent):
        lines += [f"  {x}" for x in what[:20]]
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
