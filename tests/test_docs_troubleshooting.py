"""docs/troubleshooting.md cannot drift from what `triggerd explain` (and `status`) print.

The page marks its checked examples with a `<!-- check: NAME -->` line before the fenced
block. Here the page's own demo config (`demo-config`) is written to tmp_path, its store
(SQLite) is brought into each situation the page shows through the engine's store-side unit
of work (`Rounds`: the daemon's own ingest and decision code, without a daemon, sources or
backends), and the real `triggerd explain` output must have the same lines as the page's
block: the same verdict line, condition names, values' words and verdicts, and `next:`
lines, ignoring times, durations and numbers (which differ from run to run).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from store_helpers import claim_job

from triggerd.cli import main
from triggerd.clock import ManualClock
from triggerd.config.loader import load_config
from triggerd.engine.rounds import Rounds
from triggerd.model import Event, JobStatus
from triggerd.store import Store

PAGE = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"
DEMO_ROOT = "/tmp/demo/landing"  # the demo config's watched folder, as the page shows it
CHECKED = re.compile(r"^( *)<!-- check: ([\w-]+) -->\n\n?\1```\w*\n(.*?)^\1```", re.M | re.S)

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?")
DURATION = re.compile(r"(?<![\w.])(?:\d+[dhms])+(?!\w)")
NUMBER = re.compile(r"\d+")


def page_blocks() -> dict[str, str]:
    """The page's checked blocks by name, their indentation (inside an admonition) removed."""
    blocks = {}
    for m in CHECKED.finditer(PAGE.read_text()):
        indent, name, body = m.groups()
        blocks[name] = "\n".join(line[len(indent):] for line in body.splitlines())
    return blocks


def shape(text: str) -> list[str]:
    """The lines of an output without what changes between runs: times, durations, numbers
    and the table's column widths."""
    lines = []
    for line in text.splitlines():
        line = NUMBER.sub("N", DURATION.sub("<duration>", TIME.sub("<time>", line)))
        line = " ".join(line.split())
        if line:
            lines.append(line)
    return lines


class Demo:
    """The page's demo config in a temporary directory, its store migrated, the rules known
    and a daemon beating (as a running daemon leaves them), and the engine's store side to
    feed it with."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root, self.capsys = root, capsys
        self.path = root / "triggerd.yaml"
        self.path.write_text(page_blocks()["demo-config"].replace(DEMO_ROOT,
                                                                   str(root / "landing")))
        config = load_config(self.path)
        self.now = datetime.now(UTC)
        self.clock = ManualClock(self.now - timedelta(minutes=10))
        self.store = Store(config.store_url)
        self.store.upgrade()
        self.store.ensure_rules(config.rules, list(config.rules), self.clock.now())
        # the page's outputs come from a running daemon: its row and a fresh heartbeat
        self.store.register_daemon("demo-daemon", self.now - timedelta(minutes=10))
        self.store.heartbeat("demo-daemon", datetime.now(UTC))
        self.rounds = Rounds(config, self.store, self.clock)
        self.files_made = 0

    def files(self, seconds_ago: float, *names: str) -> list[str]:
        """Files of the `landing` source settled `seconds_ago`, as one batch; the ids of the
        triggers that fired on them."""
        self.clock.set(self.now - timedelta(seconds=seconds_ago))
        events = []
        for name in names:
            self.files_made += 1
            path = str(self.root / "landing" / name)
            events.append(Event(source="landing", kind="created", subject=path,
                                fingerprint=f"sha256-{self.files_made}",
                                payload={"path": path, "name": Path(name).name, "size": 4},
                                observed_at=self.clock.now()))
        return [t.id for t in self.rounds.ingest("landing", events, None).fired]

    def decide(self, seconds_ago: float) -> list[str]:
        """The daemon's timer falling due `seconds_ago`: the ids of the triggers it wrote."""
        self.clock.set(self.now - timedelta(seconds=seconds_ago))
        return [t.id for t in self.rounds.decide(None, None).fired]

    def job_runs(self, job_id: str) -> None:
        assert claim_job(self.store, job_id, "demo-daemon", 1, self.clock.now()) is not None

    def job_succeeds(self, job_id: str) -> None:
        self.job_runs(job_id)
        assert self.store.finish_attempt(job_id, "demo-daemon", JobStatus.SUCCEEDED,
                                         self.clock.now(), attempt=1, exit_code=0)

    def cli(self, *args: str, code: int = 0) -> str:
        """`triggerd ARGS --config <the demo>`, as the user runs it: its stdout."""
        self.capsys.readouterr()
        got = main([*args, "--config", str(self.path)])
        out = self.capsys.readouterr()
        assert got == code, out.err
        return out.out + out.err


@pytest.fixture
def demo(tmp_path: Path, capsys: pytest.CaptureFixture[str],
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Demo]:
    for name in ("TRIGGERD_CONFIG", "TRIGGERD_STORE", "TRIGGERD_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "landing").mkdir()
    made = Demo(tmp_path, capsys)
    try:
        yield made
    finally:
        made.store.close()


def in_cooldown(demo: Demo) -> None:
    """The page's cooldown story: three files, the debounce ends and the rule fires, its job
    succeeds, and three more files come while the cooldown runs."""
    assert demo.files(300, "churn/batch-1.csv", "churn/batch-2.csv", "churn/batch-3.csv") == []
    assert demo.decide(240) == ["churn-on-data.1"]
    demo.job_succeeds("churn-on-data.1")
    assert demo.files(180, "churn/batch-4.csv", "churn/batch-5.csv", "churn/batch-6.csv") == []


def test_the_page_has_its_checked_examples() -> None:
    assert set(page_blocks()) >= {"demo-config", "explain-min-events", "explain-debounce",
                                  "explain-cooldown", "explain-paused", "explain-busy",
                                  "explain-json", "status"}


def test_waiting_for_min_events_explains_as_the_page_shows(demo: Demo) -> None:
    assert demo.files(2, "churn/batch-1.csv") == []
    out = demo.cli("explain", "churn-on-data")
    assert shape(out) == shape(page_blocks()["explain-min-events"]), out


def test_waiting_for_the_debounce_explains_as_the_page_shows(demo: Demo) -> None:
    assert demo.files(3, "churn/batch-1.csv", "churn/batch-2.csv", "churn/batch-3.csv") == []
    out = demo.cli("explain", "churn-on-data")
    assert shape(out) == shape(page_blocks()["explain-debounce"]), out
    as_json = demo.cli("explain", "churn-on-data", "--json")
    assert shape(as_json) == shape(page_blocks()["explain-json"]), as_json
    assert json.loads(as_json)["groups"][0]["pending_events"] == 3


def test_cooldown_and_status_as_the_page_shows(demo: Demo) -> None:
    in_cooldown(demo)
    out = demo.cli("explain", "churn-on-data")
    assert shape(out) == shape(page_blocks()["explain-cooldown"]), out
    # `status`: the same daemon line, headers and rule rows (the sources' rows differ: no
    # source runs here)
    page_status = shape(page_blocks()["status"])
    status = shape(demo.cli("status"))
    assert status[0] == page_status[0]  # daemon: running (pid N, heartbeat <time>)
    rules = slice(1, 1 + 1 + 5)  # the header and the five rules
    assert status[rules] == page_status[rules], status
    assert status[7] == page_status[7]  # the sources' header


def test_a_paused_rule_explains_as_the_page_shows(demo: Demo) -> None:
    in_cooldown(demo)
    said = demo.cli("pause", "churn-on-data", "--for", "2h", "--reason", "backfill running")
    quoted = re.search(r"printed `(paused churn-on-data until [^`]+)`", PAGE.read_text())
    assert quoted is not None and shape(said) == shape(quoted.group(1)), said
    out = demo.cli("explain", "churn-on-data")
    assert shape(out) == shape(page_blocks()["explain-paused"]), out
    assert "next: pause ends at" in out
    assert demo.cli("resume", "churn-on-data").strip() == "resumed churn-on-data"
    assert "not firing: waiting for cooldown to end at" in demo.cli("explain", "churn-on-data")


def test_a_busy_rule_explains_as_the_page_shows(demo: Demo) -> None:
    assert demo.files(10, "fraud/day-1.csv") == ["fraud-on-data.1"]
    demo.job_runs("fraud-on-data.1")
    assert demo.files(5, "fraud/day-2.csv", "fraud/day-3.csv") == []  # coalesced: no trigger
    out = demo.cli("explain", "fraud-on-data")
    assert shape(out) == shape(page_blocks()["explain-busy"]), out
    assert "next:" not in out


def test_events_lists_what_the_source_stored_and_what_the_rule_matched(demo: Demo) -> None:
    demo.files(6, "churn/batch-1.csv")
    demo.files(2, "other.csv")
    by_source = demo.cli("events", "--source", "landing")
    by_rule = demo.cli("events", "--rule", "churn-on-data")
    assert "other.csv" in by_source and "batch-1.csv" in by_source
    assert "other.csv" not in by_rule and "batch-1.csv" in by_rule


def test_check_refuses_a_bad_duration_as_the_page_shows(demo: Demo) -> None:
    demo.path.write_text(demo.path.read_text().replace("cooldown: 10m", "cooldown: 10 minutes"))
    out = demo.cli("check", code=2)
    first, summary = out.splitlines()
    assert summary == "triggerd: 1 configuration error(s)"
    assert first.startswith(f"{demo.path}:") and ": rules.churn-on-data.when.cooldown: " in first
    assert first.replace(str(demo.root), "/tmp/demo") in PAGE.read_text()  # line and words
