"""What the query commands print: plain-text tables and the exact `--json` shapes.

The JSON shapes (keys, their order and value types) are a user contract: scripts parse them.
Tables are for people; times in JSON are ISO 8601 with offset. Nothing here opens the store:
the commands (triggerd.cli.commands) read it and hand the results to these functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from triggerd import __version__
from triggerd.config.loader import Config
from triggerd.engine.policy import verdict_line

# the order in which a rule's overall state is the "worst" of its groups' states
STATE_ORDER = ["idle", "pending", "cooldown", "running", "paused"]


# -- primitives ------------------------------------------------------------------------------
def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def short(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[("" if v is None else str(v)).replace("\n", " ") for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def details(values: dict[str, Any]) -> str:
    """A source's reported figures, compact: `roots_watched=1 files_tracked=22 ...`."""
    return " ".join(f"{k}={v}" for k, v in values.items()
                    if v not in (None, 0, "", {}) and not k.endswith("_at"))


# -- status ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatusFacts:
    """What `status` read from the store (triggerd.cli.commands), as the store returned it."""

    now: datetime
    running: bool  # the daemon's heartbeat is fresh and it has not stopped
    daemon: dict[str, Any] | None  # the latest daemon row, None if no daemon ever ran
    found: dict[Any, Any]  # assess(): (rule, group) -> Assessment
    counts: dict[str, tuple[int, datetime | None]]  # per rule: (triggers kept, last one)
    jobs: dict[str, dict[str, int]]  # per rule: active jobs per status
    last: dict[str, datetime | None]  # per rule: the last trigger
    sources: dict[str, dict[str, Any]]  # per source: what the daemon reported
    rejected: dict[str, dict[str, int]]  # per source: rejected input per kind


def group_state(a: Any, spec: Any, now: datetime) -> str:
    """One rule group's state: paused, running, cooldown, pending or idle."""
    if a.flags.is_paused(now):
        return "paused"
    if a.active_jobs:
        return "running"
    cd = spec.when.cooldown
    if cd is not None and a.state.last_trigger_at and now < a.state.last_trigger_at + cd:
        return "cooldown"
    if a.pending.count:
        return "pending"
    return "idle"


def _group_row(a: Any, spec: Any, now: datetime) -> dict[str, Any]:
    return {
        "group": a.key[1], "state": group_state(a, spec, now),
        "pending_events": a.pending.count, "pending_bytes": a.pending.bytes,
        "last_trigger_at": iso(a.state.last_trigger_at),
        "waiting_for": a.decision.waiting_for,
        "next_check_at": iso(a.decision.next_check_at)}


def rule_groups(found: dict[Any, Any], rule: str) -> list[Any]:
    """The assessments of one rule's groups, by group name."""
    return sorted((a for k, a in found.items() if k[0] == rule), key=lambda a: a.key[1])


def _rule_row(facts: StatusFacts, name: str, spec: Any) -> dict[str, Any]:
    groups = rule_groups(facts.found, name)
    group_rows = [_group_row(a, spec, facts.now) for a in groups]
    state = max((str(g["state"]) for g in group_rows), key=STATE_ORDER.index, default="idle")
    nexts = [a.decision.next_check_at for a in groups if a.decision.next_check_at]
    waiting = [g for g in group_rows if g["waiting_for"]]
    jobs = facts.jobs.get(name, {})
    row: dict[str, Any] = {
        "name": name, "state": state,
        "pending_events": sum(g["pending_events"] for g in group_rows),
        "pending_bytes": sum(g["pending_bytes"] for g in group_rows),
        "last_trigger_at": iso(facts.last.get(name)),
        "triggers": facts.counts.get(name, (0, None))[0],
        "waiting_for": waiting[0]["waiting_for"] if waiting else None,
        "next_check_at": iso(min(nexts)) if nexts else None,
        "running_jobs": jobs.get("running", 0),
        "queued_jobs": jobs.get("queued", 0) + jobs.get("retrying", 0),
        "backend": spec.dispatch.backend,
    }
    if spec.group_by is not None:
        row["groups"] = group_rows
    return row


def _stopped(error: str | None) -> str:
    """A source's error while no daemon runs: that first (what it says may be long past)."""
    return "the daemon is not running" + (f" (last error: {error})" if error else "")


def _source_row(facts: StatusFacts, config: Config, name: str) -> dict[str, Any]:
    info = facts.sources.get(name, {})
    return {"name": name, "type": config.source_type(name),
            "healthy": bool(info.get("healthy", False)) and facts.running,
            "events": info.get("events", 0), "duplicates": info.get("duplicates", 0),
            "last_event_at": iso(info.get("last_event_at")),
            "error": info.get("error") if facts.running else _stopped(info.get("error")),
            "details": info.get("details") or {},
            "rejected": facts.rejected.get(name, {})}


def _daemon_info(facts: StatusFacts) -> dict[str, Any]:
    daemon = facts.daemon
    return {"running": facts.running, "pid": daemon["pid"] if daemon else None,
            "version": daemon["version"] if daemon else __version__,
            "heartbeat_at": iso(daemon["heartbeat_at"]) if daemon else None,
            "id": daemon["id"] if daemon else None}


def status_json(config: Config, facts: StatusFacts) -> dict[str, Any]:
    """`status --json`: {"daemon": {...}, "rules": [...], "sources": [...]}."""
    return {"daemon": _daemon_info(facts),
            "rules": [_rule_row(facts, name, spec) for name, spec in config.rules.items()],
            "sources": [_source_row(facts, config, name) for name in config.sources]}


def print_status(out: dict[str, Any], facts: StatusFacts) -> None:
    """`status` as text: the daemon line, then a table of rules and one of sources."""
    d = out["daemon"]
    print(f"daemon: {'running' if facts.running else 'not running'}"
          + (f" (pid {d['pid']}, heartbeat {d['heartbeat_at']})" if facts.daemon else ""))
    print()
    print(table([[r["name"], r["state"], r["pending_events"], r["triggers"],
                  short(facts.last.get(r["name"])), r["waiting_for"] or "-"]
                 for r in out["rules"]],
                ["rule", "state", "pending", "triggers", "last trigger", "waiting for"]))
    print()
    print(table([[s["name"], s["type"], "yes" if s["healthy"] else "no", s["events"],
                  s["duplicates"], s["last_event_at"] or "-", s["error"] or "",
                  details(s["details"])] for s in out["sources"]],
                ["source", "type", "healthy", "events", "dups", "last event", "error",
                 "details"]))


# -- explain ---------------------------------------------------------------------------------
def _explain_group(a: Any) -> dict[str, Any]:
    return {
        "group": a.key[1], "fires": a.decision.fire,
        "reason": a.decision.reason if a.decision.fire else None,
        "waiting_for": a.decision.waiting_for, "next_check_at": iso(a.decision.next_check_at),
        "pending_events": a.pending.count, "pending_bytes": a.pending.bytes,
        "last_trigger_at": iso(a.state.last_trigger_at),
        "last_success_at": iso(a.state.last_success_at),
        "conditions": [{"name": c.name, "value": c.value, "required": c.required, "ok": c.ok}
                       for c in a.decision.conditions],
        "next": [{"what": what, "at": iso(at)} for what, at in a.decision.upcoming]}


def explain_json(rule: str, now: datetime, groups: list[Any]) -> dict[str, Any]:
    """`explain --json`: the rule, when it was assessed, and each group's conditions."""
    return {"rule": rule, "at": now.isoformat(), "groups": [_explain_group(a) for a in groups]}


def print_explain(out: dict[str, Any]) -> None:
    """`explain` as text: per group a verdict, a table of conditions and the next check."""
    rule = out["rule"]
    if not out["groups"]:
        print(f"rule {rule}: no state yet (the daemon has not run with this rule)")
    for g in out["groups"]:
        title = f"rule {rule}" + (f" [group {g['group']}]" if g["group"] else "")
        verdict = verdict_line(g["fires"], g["reason"] if g["fires"] else g["waiting_for"])
        print(f"{title}: {verdict}")
        print(table([[c["name"], c["value"], c["required"], "ok" if c["ok"] else "NO"]
                     for c in g["conditions"]], ["condition", "now", "required", "verdict"]))
        for item in g.get("next", []):
            print(f"next: {item['what']} at {item['at']}")
        if g["next_check_at"]:
            print(f"next check: {g['next_check_at']}")
        print()


# -- history: events, rejected input, triggers, jobs ------------------------------------------
@dataclass(frozen=True)
class HistoryView:
    """How a history query's rows print: as JSON objects, or as a table with these headers."""

    as_dict: Callable[[Any], dict[str, Any]]
    headers: list[str]
    row: Callable[[Any], list[Any]]


def print_history(view: HistoryView, rows: list[Any], as_json: bool) -> None:
    """A JSON list (even if empty), or a table (nothing at all if there are no rows)."""
    if as_json:
        print_json([view.as_dict(r) for r in rows])
    elif rows:
        print(table([view.row(r) for r in rows], view.headers))


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1][:80] if lines else ""


EVENTS = HistoryView(
    dict, ["observed at", "source", "kind", "subject", "id"],
    lambda r: [r["observed_at"], r["source"], r["kind"], r["subject"], r["id"]])

REJECTS = HistoryView(
    lambda r: r.to_dict(), ["at", "source", "ref", "kind", "error", "head"],
    lambda r: [iso(r.at), r.source, r.ref, r.kind, r.error[:80], (r.head or "")[:40]])

TRIGGERS = HistoryView(
    lambda t: t.to_dict(), ["fired at", "id", "rule", "kind", "events", "manual", "reason"],
    lambda t: [short(t.fired_at), t.id, t.rule, t.kind, t.events,
               "yes" if t.manual else "", t.reason])

JOBS = HistoryView(
    lambda j: j.to_dict(),
    ["created", "id", "backend", "status", "attempts", "external id", "exit", "detail"],
    lambda j: [short(j.created_at), j.id, j.backend, str(j.status), j.attempts,
               j.external_id or "-", "" if j.exit_code is None else j.exit_code,
               _last_line(j.detail)])
