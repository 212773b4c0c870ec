"""The example config `make run` starts (config/triggerd.example.yaml) shows what triggerd is
for: three files dropped into ./data/landing make one data-driven retrain once the batch is
quiet, and `explain` says what the rule waits for before that. The daemon runs as `make run`
runs it, from the directory holding `config/` (only the state directory is moved into the
test's own directory)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from harness import Triggerd, wait_for

REPO = Path(__file__).resolve().parents[2]


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
    (landing / "batch-3.csv").write_text("x,y\n3,3\n")

    def on_data() -> list[dict[str, Any]]:
        return [j for j in td.json("jobs") if j["rule"] == "churn-on-data"]

    (job,) = wait_for(lambda: (jobs := on_data()) and jobs[0]["status"] == "succeeded"
                      and jobs, 30, "the data-driven retrain")
    (trigger,) = [t for t in td.json("triggers") if t["id"] == job["trigger_id"]]
    assert trigger["events"] == 3 and "3 new events" in trigger["reason"]
    assert "retraining churn" in job["detail"]  # the example's training script ran
    assert td.stop(proc) == 0
