"""Running `triggerd replay` as a user does (the CLI's `main`) in a directory with a config,
and writing arrivals logs (the `rp` fixture of conftest.py)."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from triggerd.cli import main

START = datetime(2026, 11, 2, tzinfo=UTC)
CONFIG = """
    state_dir: state
    sources:
      landing:
        type: filesystem
        paths: [/data/landing]
        patterns: ["**/*.parquet"]
      nightly: {type: cron, schedule: "0 2 * * *"}
    backends:
      train: {type: command, argv: [echo]}
    rules:
      on-data:
        on: [landing]
        when: {debounce: 10m}
        dispatch: {backend: train}
      nightly-if-new:
        on: [landing]
        when: {schedule: nightly}
        dispatch: {backend: train}
"""


@dataclass
class Replay:
    tmp: Path
    capsys: pytest.CaptureFixture[str]

    def file(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    def run(self, *args: str) -> tuple[int, str, str]:
        code = main(["replay", "--config", str(self.tmp / "triggerd.yaml"), *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> Any:
        code, out, err = self.run(*args, "--json")
        assert code == 0, err
        return json.loads(out)


def bursts(days: int = 2, per_hour: int = 4) -> list[dict[str, Any]]:
    """Every hour, `per_hour` files one minute apart (a day: 24 bursts)."""
    rows = []
    for hour in range(24 * days):
        for i in range(per_hour):
            at = START + timedelta(hours=hour, minutes=i)
            rows.append({"time": at.isoformat(), "source": "landing",
                         "subject": f"/data/landing/h{hour}/{i}.parquet", "size": 1000})
    return rows


def write_log(rp: Replay, rows: list[dict[str, Any]], name: str = "arrivals.jsonl") -> Path:
    return rp.file(name, "".join(json.dumps(r) + "\n" for r in rows))


