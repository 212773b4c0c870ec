"""`triggerd replay`: the rules of the current config (and of candidates, or a sweep of one
`when` key) run over the stored events or an arrivals log, by the daemon's own engine
(triggerd.simulate.replay); prints the figures per rule, `--json` exact, `--html FILE` a page."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

from triggerd.cli import views
from triggerd.cli.common import EXIT_OK, UsageError, config_from, open_store, since_time
from triggerd.config.loader import Config, load_config
from triggerd.language.units import parse_duration


def cmd_replay(args: argparse.Namespace) -> int:
    from triggerd.simulate import history, prebuilt, replay, replay_html
    from triggerd.simulate.actual import actual
    from triggerd.simulate.jobs import Plan
    from triggerd.simulate.replay_report import Report

    config = config_from(args)
    rules = _rules(args.rule, config)
    fixed = _duration("--job-duration", args.job_duration)
    candidates = [(path, load_config(path)) for path in args.candidate]
    sweep = replay.sweep(config, args.sweep, args.rule) if args.sweep else []
    variants = [(replay.Variant("current", config), "current", str(config.path))]
    variants += [(replay.Variant(Path(p).name, c), "candidate", p) for p, c in candidates]
    variants += [(v, "sweep", str(config.path)) for v in sweep]
    stored: dict[str, list[Plan]] = {}
    happened = None
    since = since_time(args.since)
    if args.arrivals:
        arrivals = history.read_log(args.arrivals)
        start = since or (arrivals[0].at if arrivals else datetime.now(UTC))
        until = _until(args.until) or _tail([v.config for v, _k, _p in variants],
                                            arrivals[-1].at if arrivals else start)
        arrivals = [a for a in arrivals if start <= a.at < until]
        origin = str(args.arrivals)
    else:
        store = open_store(config)
        try:
            until = _until(args.until) or datetime.now(UTC)
            arrivals = history.stored_arrivals(store, since, until)
            start = since or (arrivals[0].at if arrivals else until)
            stored = replay.stored_plans(store, start, until) if fixed is None else {}
            happened = actual(store, start, until)
        finally:
            store.close()
        origin = f"the store ({config.store_url.split(':', 1)[0]})"
    if until <= start:
        raise UsageError(f"nothing to replay: the span {start.isoformat()} .. "
                         f"{until.isoformat()} is empty")
    plans = replay.JobPlans(fixed, stored)
    built = prebuilt.Prebuilt(arrivals, start)  # the events, once for the variants
    runs: list[tuple[replay.RunResult, str, str | None, set[str]]] = []
    if happened is not None:
        runs.append((happened, "actual", None, set(config.rules)))
    for variant, kind, path in variants:
        runs.append((replay.run_variant(variant, arrivals, start, until, plans, built=built),
                     kind, path, set(variant.config.rules)))
    names = rules + [r for _p, c in candidates for r in c.rules if r not in rules
                     and not args.rule]
    report = Report.build(start, until, origin, len(arrivals), plans.source(), names, runs,
                          args.sweep.partition("=")[0] if args.sweep else None)
    if args.html:
        Path(args.html).write_text(replay_html.page(report), encoding="utf-8")
    if args.json:
        views.print_json(report.as_json())
    else:
        print("\n".join(report.text()))
        if args.html:
            print(f"\nwrote {args.html}")
    return EXIT_OK


def _rules(wanted: list[str] | None, config: Config) -> list[str]:
    if not wanted:
        return list(config.rules)
    unknown = [r for r in wanted if r not in config.rules]
    if unknown:
        raise UsageError(f"unknown rule(s) {', '.join(unknown)} (rules: "
                         f"{', '.join(sorted(config.rules)) or 'none'})")
    return wanted


def _duration(option: str, text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: give a duration (10m, 1h)") from None


def _until(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--until {text!r}: give an ISO time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _tail(configs: list[Config], last: datetime) -> datetime:
    """The end of a log's replay: its last arrival, plus the longest debounce or max_delay
    of the replayed rules (so that a last batch waiting for quiet can fire), plus a second."""
    waits = [w for config in configs for spec in config.rules.values()
             for w in (spec.when.debounce, spec.when.max_delay) if w is not None]
    return last + max(waits, default=timedelta(0)) + timedelta(seconds=1)
