"""What each `triggerd` command does: load the config, open the store, query or request.

Query commands (and the request-writing `fire`, `pause`, `resume`) open the store as it is:
one that is missing, empty or at another revision is refused (triggerd.cli.common's
`open_store`), never migrated. Only `run` and `db upgrade` migrate. What a command prints
comes from triggerd.cli.views; the exit codes are in triggerd.cli.common, and
triggerd.cli.main turns the errors raised here into them.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from triggerd.cli import views
from triggerd.cli.common import (
    EXIT_NOTHING,
    EXIT_OK,
    UsageError,
    config_from,
    open_store,
    read_settings,
    since_time,
)
from triggerd.config.loader import Config
from triggerd.errors import ConfigError, StoreError, StoreLockedError
from triggerd.language.units import parse_duration
from triggerd.model import daemon_alive

log = logging.getLogger("triggerd.cli")


# -- shared by the commands ------------------------------------------------------------------
def _unknown_rule(rule: str, config: Config) -> int:
    print(f"triggerd: unknown rule {rule!r} (rules: {', '.join(sorted(config.rules)) or 'none'})",
          file=sys.stderr)
    return EXIT_NOTHING


# -- config, schema, store maintenance, the daemon -------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config; exit 0 when it is valid, with a warning for each secret variable
    an option names that this environment does not hold (a CI runner often has none)."""
    from triggerd.config.types import secret_env_options
    from triggerd.store.connect import store_url

    config = config_from(args)
    try:
        url = store_url(config.store_url)  # parses, never connects
    except StoreError as exc:
        raise ConfigError([f"{config.path}: store: {exc}"]) from None
    files = ", ".join(str(f) for f in config.files)
    print(f"ok: {len(config.sources)} source(s), {len(config.backends)} backend(s), "
          f"{len(config.rules)} rule(s) in {files}")
    print(f"store: {url.render_as_string(hide_password=True)}")
    for where, name in secret_env_options({"sources": config.sources,
                                           "backends": config.backends}):
        if name not in os.environ and f"{name}_FILE" not in os.environ:
            print(f"warning: {where}: environment variable {name} is not set here (nor "
                  f"{name}_FILE): the daemon needs it where it runs", file=sys.stderr)
    return EXIT_OK


def cmd_test(args: argparse.Namespace) -> int:
    """`triggerd test FILE...`: exit 0 all passed, 1 a test failed, 2 a bad test file (or a
    bad config under test), every problem of every file printed as `file:line: ...`."""
    from triggerd.simulate import report
    from triggerd.simulate.runner import run_loaded
    from triggerd.simulate.testfile import load_test_file

    loaded, problems = [], []
    for path in args.files:  # every file checked before any test runs
        try:
            loaded.append(load_test_file(path))
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    reports = [run_loaded(one) for one in loaded]
    if args.json:
        views.print_json(report.as_json(reports))
    else:
        for found in reports:
            print("\n".join(report.text(found, verbose=args.verbose)))
        print(report.summary(reports))
    return EXIT_NOTHING if any(r.failed for r in reports) else EXIT_OK


def cmd_schema(_args: argparse.Namespace) -> int:
    from triggerd.config.schema import json_schema

    views.print_json(json_schema())
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from triggerd.store import Store
    from triggerd.store.migrate import current

    config = config_from(args)
    store = Store(config.store_url)
    try:
        store.upgrade()
        print(f"store {store.safe_url} is at revision {current(store.engine)}")
    finally:
        store.close()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from triggerd.ops.logging import setup
    from triggerd.runtime import run_daemon
    from triggerd.store.connect import RedactFilter

    settings = read_settings()
    config = config_from(args)
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


# -- queries ---------------------------------------------------------------------------------
def _daemon_running(daemon: dict[str, Any] | None, now: datetime) -> bool:
    return daemon is not None and daemon_alive(daemon["stopped_at"], daemon["heartbeat_at"], now)


def _status_facts(config: Config) -> views.StatusFacts:
    """Everything `status` shows, read from the store in one go."""
    from triggerd.engine.assess import assess
    from triggerd.store import queries
    from triggerd.store.rejects import count_rejects

    store = open_store(config)
    now = datetime.now(UTC)
    try:
        daemon = queries.latest_daemon(store)
        return views.StatusFacts(
            now=now, running=_daemon_running(daemon, now), daemon=daemon,
            found=assess(config, store, now), counts=queries.trigger_counts(store),
            jobs=store.job_counts(), last=queries.last_trigger_times(store),
            sources=queries.sources(store), rejected=count_rejects(store))
    finally:
        store.close()


def cmd_status(args: argparse.Namespace) -> int:
    config = config_from(args)
    facts = _status_facts(config)
    out = views.status_json(config, facts)
    if args.json:
        views.print_json(out)
    else:
        views.print_status(out, facts)
    return EXIT_OK


def _history(args: argparse.Namespace, query: Callable[[Any], list[Any]],
             view: views.HistoryView, config: Config | None = None) -> int:
    """The shape of `events`, `triggers` and `jobs`: check --rule, query, print table or JSON;
    exit 1 when nothing was found. `config`: the caller's, if it loaded it already."""
    config = config if config is not None else config_from(args)
    if args.rule and args.rule not in config.rules:
        return _unknown_rule(args.rule, config)
    store = open_store(config)
    try:
        rows = query(store)
    finally:
        store.close()
    views.print_history(view, rows, args.json)
    return EXIT_OK if rows else EXIT_NOTHING


def cmd_events(args: argparse.Namespace) -> int:
    from triggerd.store import queries

    if args.rejected:
        return _rejected(args)
    return _history(
        args, lambda store: queries.list_events(store, rule=args.rule, source=args.source,
                                                since=since_time(args.since), limit=args.limit),
        views.EVENTS)


def _rejected(args: argparse.Namespace) -> int:
    """`events --rejected`: input a source could not turn into an event, newest first."""
    from triggerd.store.rejects import list_rejects

    config = config_from(args)
    rule = (args.rule, config.rules[args.rule].on) if args.rule in config.rules else None
    return _history(
        args, lambda store: list_rejects(store, source=args.source, since=since_time(args.since),
                                         limit=args.limit, rule=rule),
        views.REJECTS, config)


def cmd_triggers(args: argparse.Namespace) -> int:
    from triggerd.store import queries

    return _history(
        args, lambda store: queries.list_triggers(store, rule=args.rule,
                                                  since=since_time(args.since), limit=args.limit),
        views.TRIGGERS)


def cmd_jobs(args: argparse.Namespace) -> int:
    from triggerd.store import queries

    return _history(
        args, lambda store: queries.list_jobs(store, rule=args.rule, status=args.status,
                                              limit=args.limit),
        views.JOBS)


def cmd_explain(args: argparse.Namespace) -> int:
    from triggerd.engine.assess import assess
    from triggerd.store import queries

    config = config_from(args)
    if args.rule not in config.rules:
        return _unknown_rule(args.rule, config)
    store = open_store(config)
    now = datetime.now(UTC)
    try:
        found = assess(config, store, now)
        running = _daemon_running(queries.latest_daemon(store), now)
    finally:
        store.close()
    out = views.explain_json(args.rule, now, views.rule_groups(found, args.rule))
    if args.json:
        views.print_json(out)
    else:
        views.print_explain(out)
        if not running:  # the verdicts are what a daemon would decide; none is deciding
            print("note: no daemon is running: nothing fires until one starts "
                  "(`triggerd status` shows its heartbeat)")
    return EXIT_OK


# -- requests to the daemon: fire, pause, resume ----------------------------------------------
def _await_result(store: Any, req: int, wait: float) -> str | None:
    """Poll for up to `wait` seconds until the daemon has handled request `req`: its result,
    or None if no daemon has picked it up yet."""
    from triggerd.store import queries

    deadline = time.monotonic() + wait
    result: str | None = None
    while time.monotonic() < deadline:
        handled, result = queries.request_result(store, req)
        if handled is not None and result is not None:
            break
        time.sleep(0.1)
    return result


def cmd_fire(args: argparse.Namespace) -> int:
    config = config_from(args)
    if args.rule not in config.rules:
        return _unknown_rule(args.rule, config)
    reason = args.reason or f"manual trigger by {getpass.getuser()}@{socket.gethostname()}"
    store = open_store(config)
    try:
        req = store.add_request("fire", args.rule, {"reason": f"manual: {reason}"},
                                datetime.now(UTC))
        result = _await_result(store, req, args.wait)
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


def _pause_until(args: argparse.Namespace, now: datetime) -> datetime | None:
    """The end of a `pause --for DURATION`, None for a pause until `resume`."""
    if not args.duration:
        return None
    try:
        return now + parse_duration(args.duration)
    except ValueError as exc:
        raise UsageError(f"--for: {exc}") from None


def cmd_pause(args: argparse.Namespace, pause: bool = True) -> int:
    config = config_from(args)
    if args.rule not in config.rules:
        return _unknown_rule(args.rule, config)
    now = datetime.now(UTC)
    until = _pause_until(args, now) if pause else None
    store = open_store(config)
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


# -- probes ----------------------------------------------------------------------------------
def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 if the running daemon answers /healthz (or /readyz) with 200: for a container
    HEALTHCHECK or a probe. Needs TRIGGERD_HTTP, the address the daemon listens on."""
    from triggerd.ops.http import probe

    settings = read_settings()
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
