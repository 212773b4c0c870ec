"""Replay benchmark: a month of one-file-a-minute arrivals (43,200 events) through 10 rules.

Measures `triggerd replay`'s simulation (`simulate.replay.run_variant`: the daemon's engine on
an in-memory store, the fast lane on) over the arrivals of an arrivals log, in events/s, for
three sets of 10 rules on one filesystem source:

- per-dataset: each rule watches one of 10 dataset folders (files rotate among them), with the
  policies of a real deployment (batches, debounce + max_delay, cooldowns, floors, a nightly
  scheduled check); each file is pending in one rule. ~1,400 triggers a month.
- all-match quiet: every rule takes every file; big batches and daily floors (~500 triggers).
- all-match busy: every rule takes every file; policies that fire every hour or so (~2,900).

Also, on the first 5,000 arrivals, the same replay with the fast lane off (each arrival its own
trip through the engine), for the speed-up; and the whole command (`triggerd replay
--arrivals month.jsonl --json`) as a user runs it, start-up included, alone and with a
`--sweep` of 3 values (4 variants over the same arrivals). Jobs take 20 minutes and succeed.

    .venv/bin/python bench/replay.py                 # everything (~1 minute)
    .venv/bin/python bench/replay.py --quick         # the month, fast lane only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from triggerd.config.loader import load_config
from triggerd.simulate.history import read_log
from triggerd.simulate.replay import JobPlans, Variant, run_variant

START = datetime(2026, 11, 1, tzinfo=UTC)
MONTH = 43_200
HEAD = """
state_dir: state
sources:
  landing: {type: filesystem, paths: [/data/landing], patterns: ["**/*.parquet"]}
  nightly: {type: cron, schedule: "0 2 * * *"}
backends:
  train: {type: command, argv: [echo]}
rules:
"""
PER_DATASET = [
    "{min_events: 60}", "{min_events: 30, debounce: 5m, max_delay: 2h}",
    "{debounce: 10m, max_delay: 6h, cooldown: 1h}", "{min_events: 100, at_least_every: 1d}",
    "{min_events: 20, cooldown: 6h}", "{min_events: 1, cooldown: 12h}",
    "{min_events: 60, cooldown: 6h}", "{debounce: 10m, max_delay: 2h, min_events: 50}",
    "{schedule: nightly}", "{min_events: 144, at_least_every: 12h}",
]
QUIET = [f"{{min_events: {500 + 100 * i}, at_least_every: 1d}}" for i in range(10)]
BUSY = [
    "{min_events: 60}", "{min_events: 30, debounce: 5m, max_delay: 2h}",
    "{debounce: 10m, max_delay: 6h, cooldown: 1h}", "{min_events: 1000, at_least_every: 1d}",
    "{min_events: 100}", "{min_events: 1, cooldown: 1h}", "{min_events: 60, cooldown: 6h}",
    "{debounce: 10m, max_delay: 2h, min_events: 50}", "{schedule: nightly}",
    "{min_events: 1440, at_least_every: 12h}",
]


SWEEP = ["--sweep", "when.cooldown=none,30m,2h"]  # 4 variants over the same arrivals


def config(policies: list[str], per_dataset: bool) -> str:
    rules = []
    for i, policy in enumerate(policies):
        match = f', match: {{subject: "/data/landing/d{i}/**"}}' if per_dataset else ""
        rules.append(f"  r{i}: {{on: [landing]{match}, when: {policy}, "
                     "dispatch: {backend: train}}\n")
    return HEAD + "".join(rules)


def write_month(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            at = START + timedelta(minutes=i)
            f.write(json.dumps({"time": at.isoformat(), "source": "landing",
                                "subject": f"/data/landing/d{i % 10}/f{i}.parquet",
                                "size": 1_000_000}) + "\n")


def replay(cfg: Path, log: Path, n: int, fast: bool) -> tuple[float, int]:
    arrivals = read_log(log)[:n]
    until = arrivals[-1].at + timedelta(minutes=11)
    started = time.perf_counter()
    result = run_variant(Variant("current", load_config(cfg)), arrivals, START, until,
                         JobPlans(timedelta(minutes=20), {}), fast=fast)
    return time.perf_counter() - started, len(result.triggers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the month, fast lane only")
    args = parser.parse_args()
    sets = [("per-dataset", PER_DATASET, True), ("all-match quiet", QUIET, False),
            ("all-match busy", BUSY, False)]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "month.jsonl"
        write_month(log, MONTH)
        print(f"{'rules':16} {'arrivals':>8} {'lane':>11} {'seconds':>8} {'events/s':>9} "
              f"{'triggers':>8}")
        for name, policies, per_dataset in sets:
            cfg = Path(tmp) / f"{name.replace(' ', '-')}.yaml"
            cfg.write_text(config(policies, per_dataset))
            runs = [(MONTH, True)] + ([] if args.quick else [(5000, True), (5000, False)])
            for n, fast in runs:
                seconds, triggers = replay(cfg, log, n, fast)
                print(f"{name:16} {n:>8} {'fast' if fast else 'one-by-one':>11} "
                      f"{seconds:>8.2f} {n / seconds:>9,.0f} {triggers:>8}", flush=True)
        if not args.quick:
            cfg = Path(tmp) / "per-dataset.yaml"
            for what, extra in (("", []), (", --sweep of 3 values", SWEEP)):
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "triggerd", "replay", "--config",
                                str(cfg), "--arrivals", str(log), "--job-duration", "20m",
                                "--json", *extra], check=True, capture_output=True)
                print(f"the command, per-dataset, the month{what}: "
                      f"{time.perf_counter() - started:.2f} s wall (start-up included)",
                      flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {rss:.0f} MB")


if __name__ == "__main__":
    main()
