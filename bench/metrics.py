"""Scrape cost of /metrics: what one Prometheus scrape costs the daemon's store thread.

At scrape time the daemon reads per-rule pending counts, bytes and oldest age, the last success
per rule and jobs by backend and status (`triggerd.ops.metrics.read_snapshot`, one store-thread
call), then renders the exposition text (`Metrics.render`, in a worker thread). This builds a
SQLite store with `--rules` rules, `--pending` pending events spread over them (4 groups per
rule, each with its pending summary as ingest keeps it) and `--jobs` finished jobs, and times
both parts over `--runs` scrapes (median and max).

    .venv/bin/python bench/metrics.py
    .venv/bin/python bench/metrics.py --rules 1000 --pending 1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from triggerd.ops.metrics import Metrics, read_snapshot
from triggerd.store import Store
from triggerd.store import tables as t


def build(store: Store, rules: int, pending: int, jobs: int) -> list[str]:
    now = datetime.now(UTC)
    names = [f"rule-{i:04d}" for i in range(rules)]
    # each group's pending summary, as ingest keeps it beside the rows (tables.py)
    summary: dict[tuple[str, str], dict[str, Any]] = {
        (r, str(g)): {"pending_count": 0, "pending_bytes": 0, "pending_first_at": None,
                      "pending_last_at": None} for r in names for g in range(4)}
    for i in range(pending):
        at = now - timedelta(seconds=i % 3600)
        s = summary[(names[i % rules], str(i % 4))]
        s["pending_count"] += 1
        s["pending_bytes"] += 1000
        s["pending_first_at"] = min(s["pending_first_at"] or at, at)
        s["pending_last_at"] = max(s["pending_last_at"] or at, at)
    with store.write() as c:
        c.execute(t.rule_groups.insert(), [
            {"rule": r, "grp": g, "seq": 1, "created_at": now, "last_success_at": now, **s}
            for (r, g), s in summary.items()])
        for start in range(0, pending, 50_000):
            c.execute(t.rule_events.insert(), [
                {"rule": names[i % rules], "event_id": f"e{i:012d}", "grp": str(i % 4),
                 "size": 1000, "observed_at": now - timedelta(seconds=i % 3600),
                 "trigger_id": None} for i in range(start, min(pending, start + 50_000))])
        c.execute(t.jobs.insert(), [
            {"id": f"j{i}", "trigger_id": f"j{i}", "rule": names[i % rules], "grp": "",
             "backend": f"backend-{i % 5}", "status": ("succeeded", "failed")[i % 2],
             "attempts": 1, "max_attempts": 1, "created_at": now} for i in range(jobs)])
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=100)
    ap.add_argument("--pending", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'state.db'}")
        store.upgrade()
        names = build(store, args.rules, args.pending, args.jobs)
        metrics = Metrics("bench")
        reads, renders, size = [], [], 0
        for _ in range(args.runs):
            t0 = time.perf_counter()
            snap = read_snapshot(store, names, datetime.now(UTC))
            t1 = time.perf_counter()
            size = len(metrics.render(snap, names))
            t2 = time.perf_counter()
            reads.append(t1 - t0)
            renders.append(t2 - t1)
        store.close()
    got = sum(count for count, _size, _oldest in snap.pending.values())
    if got != args.pending:  # the figures are only worth something if the answer is right
        raise SystemExit(f"the scrape saw {got} pending events, not {args.pending}")
    print(f"rules={args.rules} pending={args.pending} jobs={args.jobs} runs={args.runs} "
          f"load={os.getloadavg()[0]:.1f}")
    print(f"store read (store thread): median {statistics.median(reads) * 1000:.1f} ms, "
          f"max {max(reads) * 1000:.1f} ms")
    print(f"render (worker thread):    median {statistics.median(renders) * 1000:.1f} ms, "
          f"max {max(renders) * 1000:.1f} ms, {size / 1024:.0f} KiB of text")


if __name__ == "__main__":
    main()
