"""`triggerd status` while no daemon runs: a source's last error is stale, so the row says
first that the daemon is not running, and keeps the error as what it last was."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from triggerd.cli import views
from triggerd.config.loader import load_config


def test_a_source_row_without_a_running_daemon_says_so_before_its_last_error(
        tmp_path: Path) -> None:
    path = tmp_path / "triggerd.yaml"
    path.write_text("state_dir: state\nsources:\n  tick: {type: cron, every: 1h}\n"
                    "  feed: {type: kafka, brokers: ['k:9092'], topic: t, group: g}\n"
                    "backends:\n  b: {type: command, argv: ['true']}\n"
                    "rules:\n  r: {on: [tick, feed], dispatch: {backend: b}}\n")
    config = load_config(path)

    def rows(running: bool) -> dict[str, dict[str, object]]:
        facts = views.StatusFacts(
            now=datetime.now(UTC), running=running, daemon=None, found={}, counts={}, jobs={},
            last={}, rejected={},
            sources={"feed": {"healthy": False, "error": "broker unreachable: k:9092"},
                     "tick": {"healthy": True, "error": None}})
        return {s["name"]: s for s in views.status_json(config, facts)["sources"]}

    stopped = rows(running=False)
    assert stopped["feed"]["error"] == ("the daemon is not running (last error: broker "
                                        "unreachable: k:9092)")
    assert stopped["tick"]["error"] == "the daemon is not running"
    assert not stopped["tick"]["healthy"]
    running = rows(running=True)
    assert running["feed"]["error"] == "broker unreachable: k:9092"
    assert running["tick"]["healthy"] and running["tick"]["error"] is None
