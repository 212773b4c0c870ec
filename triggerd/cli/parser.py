"""The `triggerd` command line: every command, its options and help text (argparse).

Each command's parser carries `func`, the function in triggerd.cli.commands that runs it.
The order of the commands here is the order `triggerd --help` lists them in.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from triggerd import __version__
from triggerd.cli.commands import (
    cmd_check,
    cmd_db,
    cmd_events,
    cmd_explain,
    cmd_fire,
    cmd_health,
    cmd_jobs,
    cmd_pause,
    cmd_resume,
    cmd_run,
    cmd_schema,
    cmd_status,
    cmd_test,
    cmd_triggers,
)
from triggerd.cli.init import PATTERNS, cmd_init
from triggerd.cli.replay import cmd_replay

Command = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class _Subcommands:
    """Adds commands: each takes --config (`common`); queries also take --json (`as_json`)."""

    sub: argparse._SubParsersAction[argparse.ArgumentParser]
    common: argparse.ArgumentParser
    as_json: argparse.ArgumentParser

    def add(self, name: str, func: Command, help_: str, *, json: bool = False
            ) -> argparse.ArgumentParser:
        parents = [self.common, self.as_json] if json else [self.common]
        p = self.sub.add_parser(name, parents=parents, help=help_, description=help_)
        p.set_defaults(func=func)
        return p


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="FILE",
                        help="main config file (default: $TRIGGERD_CONFIG or "
                             "config/triggerd.yaml)")
    return common


def _json_option() -> argparse.ArgumentParser:
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print exact JSON")
    return as_json


def _add_daemon_commands(cmds: _Subcommands) -> None:
    cmds.add("run", cmd_run, "run the daemon in the foreground")
    help_ = "write a commented starter config for a pattern (check passes it)"
    p = cmds.sub.add_parser("init", help=help_, description=help_)
    p.set_defaults(func=cmd_init)
    p.add_argument("dir", nargs="?", default=".", metavar="DIR",
                   help="where to write triggerd.yaml (default: here; made if missing)")
    p.add_argument("--pattern", "-p", default="landing", choices=sorted(PATTERNS),
                   help="landing: files landing in a folder (the default); periodic: a "
                        "nightly retrain only if new data came; kafka-drift: sustained drift "
                        "on a metrics topic; bucket: objects landing under an S3 prefix")
    p.add_argument("--print", action="store_true", help="print it instead of writing it")
    p.add_argument("--force", action="store_true", help="replace an existing triggerd.yaml")
    cmds.add("check", cmd_check, "validate the config and rule files")
    p = cmds.add("test", cmd_test, "unit-test rules: run test files' timelines through the "
                 "engine and compare the triggers and explain verdicts", json=True)
    p.add_argument("files", nargs="+", metavar="FILE", help="test files (YAML)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also list the triggers of passing tests")
    p = cmds.add("replay", cmd_replay, "run the rules (and candidates) over the stored events "
                 "or an arrivals log, and compare retrains per day and data staleness",
                 json=True)
    p.add_argument("--since", help="replay from this time: a duration back (30d) or an ISO "
                   "time (default: the first event)")
    p.add_argument("--until", help="replay up to this ISO time (default: now for the store; "
                   "for a log, its last arrival plus the longest debounce)")
    p.add_argument("--arrivals", metavar="FILE",
                   help="an arrivals log (JSON lines, or CSV by its .csv name) instead of the "
                        "store's events")
    p.add_argument("--candidate", metavar="FILE", action="append", default=[],
                   help="another config to replay beside the current one (repeatable)")
    p.add_argument("--sweep", metavar="when.KEY=V1,V2,...",
                   help="replay the current config once per value of one `when` key")
    p.add_argument("--rule", action="append", help="only this rule (repeatable)")
    p.add_argument("--job-duration", metavar="DURATION",
                   help="every replayed job takes this long and succeeds (default: the "
                        "stored jobs' attempts)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained page: a "
                   "timeline per rule and the sweep's trade-off chart")


def _add_query_commands(cmds: _Subcommands) -> None:
    cmds.add("status", cmd_status, "rules, sources and the daemon's heartbeat", json=True)
    p = cmds.add("events", cmd_events, "recent events", json=True)
    p.add_argument("--rule")
    p.add_argument("--source")
    p.add_argument("--since", help="a duration (2h) or an ISO time")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--rejected", action="store_true",
                   help="list input sources rejected (bad Kafka messages, failed `where`); "
                        "with --rule, those of its sources and its own")
    p = cmds.add("triggers", cmd_triggers, "trigger history with reasons", json=True)
    p.add_argument("--rule")
    p.add_argument("--since", help="a duration (2h) or an ISO time")
    p.add_argument("--limit", type=int, default=50)
    p = cmds.add("jobs", cmd_jobs, "jobs with status, attempts and outcome", json=True)
    p.add_argument("--rule")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "retrying",
                                        "cancelled"])
    p.add_argument("--limit", type=int, default=50)
    p = cmds.add("explain", cmd_explain, "why a rule did or did not fire", json=True)
    p.add_argument("rule")


def _add_request_commands(cmds: _Subcommands) -> None:
    p = cmds.add("fire", cmd_fire, "a manual trigger: the running daemon dispatches it")
    p.add_argument("rule")
    p.add_argument("--reason")
    p.add_argument("--wait", type=float, default=5.0,
                   help="seconds to wait for the daemon to confirm (default 5)")
    p = cmds.add("pause", cmd_pause, "silence a rule; events keep accumulating")
    p.add_argument("rule")
    p.add_argument("--for", dest="duration", metavar="DURATION")
    p.add_argument("--reason")
    p = cmds.add("resume", cmd_resume, "resume a paused rule")
    p.add_argument("rule")


def _add_admin_commands(cmds: _Subcommands) -> None:
    cmds.add("schema", cmd_schema, "print the JSON Schema of the config")
    p = cmds.add("health", cmd_health,
                 "exit 0 if the running daemon's /healthz answers (probes)")
    p.add_argument("--ready", action="store_true", help="ask /readyz instead of /healthz")
    p = cmds.add("db", cmd_db, "store maintenance")
    p.add_argument("action", choices=["upgrade"])


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(prog="triggerd", parents=[common],
                                     description="Decide when to retrain, and start it.")
    parser.add_argument("--version", action="version", version=f"triggerd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cmds = _Subcommands(sub, common, _json_option())
    _add_daemon_commands(cmds)
    _add_query_commands(cmds)
    _add_request_commands(cmds)
    _add_admin_commands(cmds)
    return parser
