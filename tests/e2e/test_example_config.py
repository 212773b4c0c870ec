"""The example config `make run` starts (config/triggerd.example.yaml) shows what triggerd is
for: three files dropped into ./data/landing make one data-driven retrain once the batch is
quiet, and `explain` says what the rule waits for before that. The daemon runs as `make run`
runs it, from the directory holding `config/` (only the state directory is moved into the
test's own directory).

The getting-started page (docs/getting-started.md) walks a new user through exactly this run:
its commands are ones the CLI accepts, and the outputs it shows are the ones this run prints
(the same condition lines and verdicts, the same trigger reason; times and ids aside)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from harness import Triggerd, wait_for

from triggerd.cli.parser import build_parser

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "getting-started.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", PAGE.read_text(), re.S)


def _conditions(explain_text: str) -> list[tuple[str, str]]:
    """(condition, verdict) per line of `triggerd explain`'s table."""
    rows = [line.split() for line in explain_text.splitlines()[2:] if line.split()
            and not line.startswith(("next", "CONDITION"))]
    return [(row[0], row[-1]) for row in rows]


def test_every_command_on_the_getting_started_page_is_one_the_cli_accepts() -> None:
    parser = build_parser()
    lines = [line.split("#")[0] for block in _blocks("sh") for line in block.splitlines()]
    lines += re.findall(r"`(\.venv/bin/triggerd [^`]+)`", PAGE.read_text())  # inline ones
    commands = [shlex.split(line) for line in lines
                if line.startswith((".venv/bin/triggerd ", "../.venv/bin/triggerd "))]
    assert len(commands) >= 9
    for argv in commands:
        parser.parse_args(argv[1:])  # exits (fails the test) on an unknown command or option


def test_files_dropped_into_the_landing_folder_make_one_retrain(td: Triggerd) -> None:
    example = (REPO / "config" / "triggerd.example.yaml").read_text()
    assert "state_dir: ../.triggerd" in example
    td.write(example.replace("state_dir: ../.triggerd", "state_dir: .triggerd"))
    (td.root / "config").mkdir()
    shutil.copy(REPO / "config" / "example_train.py", td.root / "config")
    landing = td.root / "data" / "landing"
    landing.mkdir(parents=True)  # as `make run` does
    proc = td.start()
    td.wait_running(proc)
    for i in (1, 2):
        (landing / f"batch-{i}.csv").write_text(f"x,y\n{i},{i}\n")

    def group() -> dict[str, Any]:
        found: dict[str, Any] = td.json("explain", "churn-on-data")["groups"][0]
        return found

    waiting = wait_for(lambda: (g := group())["pending_events"] == 2 and g, 20,
                       "the two files pending")
    assert not waiting["fires"]
    assert {c["name"]: c["ok"] for c in waiting["conditions"]}["min_events"] is False
    shown = [b for b in _blocks("text") if b.startswith("rule churn-on-data:")]
    explained = td.cli("explain", "churn-on-data", check=True).stdout
    # within the 10 s debounce, as the page shows it
    assert _conditions(explained) == _conditions(shown[0])
    assert explained.splitlines()[0].split(";")[0] == shown[0].splitlines()[0].split(";")[0]
    (landing / "batch-3.csv").write_text("x,y\n3,3\n")

    def on_data() -> list[dict[str, Any]]:
        return [j for j in td.json("jobs") if j["rule"] == "churn-on-data"]

    (job,) = wait_for(lambda: (jobs := on_data()) and jobs[0]["status"] == "succeeded"
                      and jobs, 30, "the data-driven retrain")
    (trigger,) = [t for t in td.json("triggers") if t["id"] == job["trigger_id"]]
    assert trigger["events"] == 3 and "3 new events" in trigger["reason"]
    assert "retraining churn" in job["detail"]  # the example's training script ran
    (page_trigger,) = [line for b in _blocks("text") for line in b.splitlines()
                       if line.startswith("20") and "churn-on-data.1 " in line
                       and "quiet for" in line]
    assert page_trigger.endswith(trigger["reason"])
    in_cooldown = td.cli("explain", "churn-on-data", check=True).stdout
    assert _conditions(in_cooldown) == _conditions(shown[1])
    assert td.stop(proc) == 0
