"""The `triggerd` command (SPEC section 5). Thin: parse, open the store, print.

Exit codes: 0 success; 1 a query found nothing or the rule is unknown; 2 bad usage or config.
Queries print a table by default and exact JSON with --json; times are ISO 8601 with offset.

Query commands (and the request-writing `fire`, `pause`, `resume`) never change the store's
schema: on a store that is missing, empty or at another revision they exit 2 and say what to
run (`db upgrade`, or start the daemon). Only `run` and `db upgrade` migrate, under a lock
(triggerd.store.migrate). No message shows the store's password (triggerd.store.connect).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from triggerd import __version__
from triggerd.config.loader import Config, load_config
from triggerd.config.types import parse_duration
from triggerd.errors import ConfigError, StoreError, StoreLockedError
from triggerd.settings import Settings

log = logging.getLogger("triggerd.cli")
EXIT_OK, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2
HEARTBEAT_STALE = timedelta(seconds=20)


class UsageError(Exception):
    pass


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise UsageError(f"bad environment setting: {exc.errors()[0]['msg']}") from None


def _load(args: argparse.Namespace) -> Config:
    settings = _settings()
    path = args.config or settings.config
    return load_config(path, store=settings.store, state_dir=settings.state_dir)


def _open_store(config: Config) -> Any:
    """The store for a query: it must already be at this triggerd's schema (never migrated
    here; see SchemaNotCurrentError in main)."""
    from triggerd.store import Store
    from triggerd.store.migrate import SchemaNotCurrentError, check_current

    store = Store(config.store_url, create_dir=False)
    try:
        check_current(store.engine, store.safe_url)
    except SchemaNotCurrentError as exc:
        store.close()
        if exc.state == "ahead":  # the message already says: upgrade triggerd
            raise
        hint = (f"run `triggerd db upgrade --config {config.path}`, or start the daemon "
                "(`triggerd run`), which upgrades it; query commands never change the schema")
        raise SchemaNotCurrentError(f"{exc}: {hint}", exc.state, exc.revision) from None
    except BaseException:
        store.close()
        raise
    return store


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: give a duration (2h, 7d) or an ISO time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[("" if v is None else str(v)).replace("\n", " ") for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def _short(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


# -- commands --------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    from triggerd.store.connect import store_url

    config = _load(args)
    try:
        url = store_url(config.store_url)  # parses, never connects
    except StoreError as exc:
        raise ConfigError([f"{config.path}: store: {exc}"]) from None
    files = ", ".join(str(f) for f in config.files)
    print(f"ok: {len(config.sources)} source(s), {len(config.backends)} backend(s), "
          f"{len(config.rules)} rule(s) in {files}")
    print(f"store: {url.render_as_string(hide_password=True)}")
    return EXIT_OK


def cmd_schema(_args: argparse.Namespace) -> int:
    from triggerd.config.schema import json_schema

    _print_json(json_schema())
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from triggerd.store import Store
    from triggerd.store.migrate import current

    config = _load(args)
    store = Store(config.store_url)
    try:
        store.upgrade()
        print(f"store {store.safe_url} is at revision {current(store.engine)}")
    finally:
        store.close()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from triggerd.daemon import run_daemon
    from triggerd.ops.logging import setup
    from triggerd.store.connect import RedactFilter

    settings = _settings()
    config = _load(args)
    setup(settings.log_level, settings.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactFilter())  # a driver's error may quote the store password
    try:
        return run_daemon(config, http=settings.http)
    except StoreLockedError as exc:
        log.error("%s", exc)
        return EXIT_NOTHING
    except StoreError as exc:
        from triggerd.store.connect import redact

        log.error("%s", redact(str(exc)))
        return EXIT_NOTHING


def cmd_status(args: argparse.Namespace) -> int:
    from triggerd.engine.engine import assess
    from triggerd.store import queries
    from triggerd.store.rejects import count_rejects

    config = _load(args)
    store = _open_store(config)
    now = datetime.now(UTC)
    try:
        daemon = queries.latest_daemon(store)
        found = assess(config, store, now)
        counts = queries.trigger_counts(store)
        jobs = store.job_counts()
        last = queries.last_trigger_times(store)
        srcs = queries.sources(store)
        rejected = count_rejects(store)
    finally:
        store.close()
    running = bool(daemon and daemon["stopped_at"] is None
                   and now - daemon["heartbeat_at"] < HEARTBEAT_STALE)
    rules = []
    for name, spec in config.rules.items():
        groups = sorted((a for k, a in found.items() if k[0] == name), key=lambda a: a.key[1])
        group_rows = []
        for a in groups:
            group_rows.append({
                "group": a.key[1], "state": _state(a, spec, now),
                "pending_events": a.pending.count, "pending_bytes": a.pending.bytes,
                "last_trigger_at": _iso(a.state.last_trigger_at),
                "waiting_for": a.decision.waiting_for,
                "next_check_at": _iso(a.decision.next_check_at)})
        order = ["idle", "pending", "cooldown", "running", "paused"]
        state = max((str(g["state"]) for g in group_rows), key=order.index, default="idle")
        nexts = [a.decision.next_check_at for a in groups if a.decision.next_check_at]
        waiting = [g for g in group_rows if g["waiting_for"]]
        row: dict[str, Any] = {
            "name": name, "state": state,
            "pending_events": sum(g["pending_events"] for g in group_rows),
            "pending_bytes": sum(g["pending_bytes"] for g in group_rows),
            "last_trigger_at": _iso(last.get(name)),
            "triggers": counts.get(name, (0, None))[0],
            "waiting_for": waiting[0]["waiting_for"] if waiting else None,
            "next_check_at": _iso(min(nexts)) if nexts else None,
            "running_jobs": jobs.get(name, {}).get("running", 0),
            "queued_jobs": jobs.get(name, {}).get("queued", 0)
            + jobs.get(name, {}).get("retrying", 0),
            "backend": spec.dispatch.backend,
        }
        if spec.group_by is not None:
            row["groups"] = group_rows
        rules.append(row)
    sources = []
    for name in config.sources:
        info = srcs.get(name, {})
        sources.append({"name": name, "type": config.source_type(name),
                        "healthy": bool(info.get("healthy", False)) and running,
                        "events": info.get("events", 0), "duplicates": info.get("duplicates", 0),
                        "last_event_at": _iso(info.get("last_event_at")),
                        "error": info.get("error") if running else
                        (info.get("error") or "the daemon is not running"),
                        "details": info.get("details") or {},
                        "rejected": rejected.get(name, {})})
    out: dict[str, Any] = {"daemon": {"running": running, "pid": daemon["pid"] if daemon else None,
                      "version": daemon["version"] if daemon else __version__,
                      "heartbeat_at": _iso(daemon["heartbeat_at"]) if daemon else None,
                      "id": daemon["id"] if daemon else None},
           "rules": rules, "sources": sources}
    if args.json:
        _print_json(out)
        return EXIT_OK
    d = out["daemon"]
    print(f"daemon: {'running' if running else 'not running'}"
          + (f" (pid {d['pid']}, heartbeat {d['heartbeat_at']})" if daemon else ""))
    print()
    print(_table([[r["name"], r["state"], r["pending_events"], r["triggers"],
                   _short(last.get(r["name"])), r["waiting_for"] or "-"] for r in rules],
                 ["rule", "state", "pending", "triggers", "last trigger", "waiting for"]))
    print()
    print(_table([[s["name"], s["type"], "yes" if s["healthy"] else "no", s["events"],
                   s["duplicates"], s["last_event_at"] or "-", s["error"] or "",
                   _details(s["details"])] for s in sources],
                 ["source", "type", "healthy", "events", "dups", "last event", "error",
                  "details"]))
    return EXIT_OK


def _details(details: dict[str, Any]) -> str:
    """A source's reported figures, compact: `roots_watched=1 files_tracked=22 ...`."""
    return " ".join(f"{k}={v}" for k, v in details.items()
                    if v not in (None, 0, "", {}) and not k.endswith("_at"))


def _state(a: Any, spec: Any, now: datetime) -> str:
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


def _history(args: argparse.Namespace, query: Callable[[Any], list[Any]],
             as_dict: Callable[[Any], dict[str, Any]], headers: list[str],
             row: Callable[[Any], list[Any]]) -> int:
    """The shape of `events`, `triggers` and `jobs`: check --rule, query, print table or JSON;
    exit 1 when nothing was found."""
    config = _load(args)
    if args.rule and args.rule not in config.rules:
        return _unknown_rule(args.rule, config)
    store = _open_store(config)
    try:
        rows = query(store)
    finally:
        store.close()
    if args.json:
        _print_json([as_dict(r) for r in rows])
    elif rows:
        print(_table([row(r) for r in rows], headers))
    return EXIT_OK if rows else EXIT_NOTHING


def cmd_events(args: argparse.Namespace) -> int:
    from triggerd.store import queries

    if args.rejected:
        return _rejected(args)
    return _history(
        args, lambda store: queries.list_events(store, rule=args.rule, source=args.source,
                                                since=_since(args.since), limit=args.limit),
        dict, ["observed at", "source", "kind", "subject", "id"],
        lambda r: [r["observed_at"], r["source"], r["kind"], r["subject"], r["id"]])


def _rejected(args: argparse.Namespace) -> int:
    """`events --rejected`: input a source could not turn into an event, newest first."""
    from triggerd.store.rejects import list_rejects

    return _history(
        args, lambda store: list_rejects(store, source=args.source, since=_since(args.since),
                                         limit=args.limit),
        lambda r: r.to_dict(), ["at", "source", "ref", "kind", "error", "head"],
        lambda r: [_iso(r.at), r.source, r.ref, r.kind, r.error[:80], (r.head or "")[:40]])


def cmd_triggers(args: argparse.Namespace) -> int:
    from triggerd.store import queries

    return _history(
        args, lambda store: queries.list_triggers(store, rule=args.rule,
                                                  since=_since(args.since), limit=args.limit),
        lambda t: t.to_dict(), ["fired at", "id", "rule", "events", "manual", "reason"],
        lambda t: [_short(t.fired_at), t.id, t.rule, t.events, "yes" if t.manual else "",
                   t.reason])


def cmd_jobs(args: argparse.Namespace) -> int:
    from triggerd.store import queries

    def last_line(text: str | None) -> str:
        lines = (text or "").strip().splitlines()
        return lines[-1][:80] if lines else ""

    return _history(
        args, lambda store: queries.list_jobs(store, rule=args.rule, status=args.status,
                                              limit=args.limit),
        lambda j: j.to_dict(),
        ["created", "id", "backend", "status", "attempts", "external id", "exit", "detail"],
        lambda j: [_short(j.created_at), j.id, j.backend, str(j.status), j.attempts,
                   j.external_id or "-", "" if j.exit_code is None else j.exit_code,
                   last_line(j.detail)])


def cmd_explain(args: argparse.Namespace) -> int:
    from triggerd.engine.engine import assess

    config = _load(args)
    if args.rule not in config.rules:
        return _unknown_rule(args.rule, config)
    store = _open_store(config)
    now = datetime.now(UTC)
    try:
        found = assess(config, store, now)
    finally:
        store.close()
    groups = sorted((a for k, a in found.items() if k[0] == args.rule), key=lambda a: a.key[1])
    out = {"rule": args.rule, "at": now.isoformat(), "groups": [{
        "group": a.key[1], "fires": a.decision.fire,
        "reason": a.decision.reason if a.decision.fire else None,
        "waiting_for": a.decision.waiting_for, "next_check_at": _iso(a.decision.next_check_at),
        "pending_events": a.pending.count, "pending_bytes": a.pending.bytes,
        "last_trigger_at": _iso(a.state.last_trigger_at),
        "last_success_at": _iso(a.state.last_success_at),
        "conditions": [{"name": c.name, "value": c.value, "required": c.required, "ok": c.ok}
                       for c in a.decision.conditions]} for a in groups]}
    if args.json:
        _print_json(out)
        return EXIT_OK
    if not groups:
        print(f"rule {args.rule}: no state yet (the daemon has not run with this rule)")
    for g in out["groups"]:
        title = f"rule {args.rule}" + (f" [group {g['group']}]" if g["group"] else "")
        verdict = (f"would fire now: {g['reason']}" if g["fires"]
                   else f"not firing: waiting for {g['waiting_for']}")
        print(f"{title}: {verdict}")
        print(_table([[c["name"], c["value"], c["required"], "ok" if c["ok"] else "NO"]
                      for c in g["conditions"]], ["condition", "now", "required", "verdict"]))
        if g["next_check_at"]:
            print(f"next check: {g['next_check_at']}")
        print()
    return EXIT_OK


def _unknown_rule(rule: str, config: Config) -> int:
    print(f"triggerd: unknown rule {rule!r} (rules: {', '.join(sorted(config.rules)) or 'none'})",
          file=sys.stderr)
    return EXIT_NOTHING


def cmd_fire(args: argparse.Namespace) -> int:
    from triggerd.store import queries

    config = _load(args)
    if args.rule not in config.rules:
        return _unknown_rule(args.rule, config)
    reason = args.reason or f"manual trigger by {getpass.getuser()}@{socket.gethostname()}"
    store = _open_store(config)
    try:
        req = store.add_request("fire", args.rule, {"reason": f"manual: {reason}"},
                                datetime.now(UTC))
        deadline = time.monotonic() + args.wait
        handled, result = None, None
        while time.monotonic() < deadline:
            handled, result = queries.request_result(store, req)
            if handled is not None and result is not None:
                break
            time.sleep(0.1)
    finally:
        store.close()
    if result is None:
        print(f"requested (request {req}); no running daemon has picked it up yet — it will be "
              "dispatched when the daemon runs")
        return EXIT_OK
    if result.startswith("error"):
        print(f"triggerd: {result}", file=sys.stderr)
        return EXIT_NOTHING
    print(result)
    return EXIT_OK


def cmd_pause(args: argparse.Namespace, pause: bool = True) -> int:
    config = _load(args)
    if args.rule not in config.rules:
        return _unknown_rule(args.rule, config)
    now = datetime.now(UTC)
    until = None
    if pause and args.duration:
        try:
            until = now + parse_duration(args.duration)
        except ValueError as exc:
            raise UsageError(f"--for: {exc}") from None
    store = _open_store(config)
    try:
        store.set_paused(args.rule, pause, until, getattr(args, "reason", None), now)
        store.add_request("pause" if pause else "resume", args.rule, {}, now)
    finally:
        store.close()
    if pause:
        print(f"paused {args.rule}" + (f" until {until.isoformat()}" if until else "")
              + "; events keep accumulating")
    else:
        print(f"resumed {args.rule}")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    return cmd_pause(args, pause=False)


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 if the running daemon answers /healthz (or /readyz) with 200: for a container
    HEALTHCHECK or a probe. Needs TRIGGERD_HTTP, the address the daemon listens on."""
    from triggerd.ops.http import probe

    settings = _settings()
    if not settings.http:
        raise UsageError("health asks the daemon's HTTP listener: set TRIGGERD_HTTP=host:port")
    path = "/readyz" if args.ready else "/healthz"
    try:
        status, body = probe(settings.http, path)
    except OSError as exc:
        print(f"triggerd: {settings.http}{path}: {exc}", file=sys.stderr)
        return EXIT_NOTHING
    print(body.strip())
    return EXIT_OK if status == 200 else EXIT_NOTHING


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="FILE",
                        help="main config file (default: $TRIGGERD_CONFIG or "
                             "config/triggerd.yaml)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print exact JSON")

    parser = argparse.ArgumentParser(prog="triggerd", parents=[common],
                                     description="Decide when to retrain, and start it.")
    parser.add_argument("--version", action="version", version=f"triggerd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Any, help_: str, *parents: argparse.ArgumentParser
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common, *parents], help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    add("run", cmd_run, "run the daemon in the foreground")
    add("check", cmd_check, "validate the config and rule files")
    p = add("status", cmd_status, "rules, sources and the daemon's heartbeat", as_json)
    p = add("events", cmd_events, "recent events", as_json)
    p.add_argument("--rule")
    p.add_argument("--source")
    p.add_argument("--since", help="a duration (2h) or an ISO time")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--rejected", action="store_true",
                   help="list input sources rejected (bad Kafka messages, failed `where`)")
    p = add("triggers", cmd_triggers, "trigger history with reasons", as_json)
    p.add_argument("--rule")
    p.add_argument("--since", help="a duration (2h) or an ISO time")
    p.add_argument("--limit", type=int, default=50)
    p = add("jobs", cmd_jobs, "jobs with status, attempts and outcome", as_json)
    p.add_argument("--rule")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "retrying",
                                        "cancelled"])
    p.add_argument("--limit", type=int, default=50)
    p = add("explain", cmd_explain, "why a rule did or did not fire", as_json)
    p.add_argument("rule")
    p = add("fire", cmd_fire, "a manual trigger: the running daemon dispatches it")
    p.add_argument("rule")
    p.add_argument("--reason")
    p.add_argument("--wait", type=float, default=5.0,
                   help="seconds to wait for the daemon to confirm (default 5)")
    p = add("pause", cmd_pause, "silence a rule; events keep accumulating")
    p.add_argument("rule")
    p.add_argument("--for", dest="duration", metavar="DURATION")
    p.add_argument("--reason")
    p = add("resume", cmd_resume, "resume a paused rule")
    p.add_argument("rule")
    add("schema", cmd_schema, "print the JSON Schema of the config")
    p = add("health", cmd_health, "exit 0 if the running daemon's /healthz answers (probes)")
    p.add_argument("--ready", action="store_true", help="ask /readyz instead of /healthz")
    p = add("db", cmd_db, "store maintenance")
    p.add_argument("action", choices=["upgrade"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"triggerd: {len(exc.problems)} configuration error(s)", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"triggerd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        from triggerd.store.connect import redact
        from triggerd.store.migrate import SchemaNotCurrentError

        print(f"triggerd: {redact(str(exc))}", file=sys.stderr)
        # a store not at this schema is a usage problem (run `db upgrade` first), not "nothing
        # found": scripts must not mistake it for an empty answer
        return EXIT_USAGE if isinstance(exc, SchemaNotCurrentError) else EXIT_NOTHING
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
