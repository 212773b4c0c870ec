"""Airflow backend benchmark: dispatch overhead to a real Airflow 3 (issue 6).

Starts the test suite's Airflow 3.3.2 (tests/airflow/airflow_server.py: cached virtualenv,
api-server + scheduler + dag-processor on SQLite, loopback) and measures:

1. daemon: the REAL daemon (`python -m triggerd run`) with a cron source `every: 1s` and a rule
   dispatching each tick to the airflow backend (`wait: false`). Per trigger: trigger written
   (`triggers.fired_at` in the store) -> DAG run created (the run's `queued_at` in Airflow):
   engine + dispatcher claim + the backend's requests + Airflow's own insert. Same machine,
   same clock.
2. backend: `AirflowBackend.dispatch()` in this process, one trigger after another (one login
   per backend, then per dispatch: a new HTTP session, POST dagRuns, and for a queued run of
   a paused DAG a GET dags/{id} to say so in the detail). The round trip the daemon pays.

Both trigger the paused test DAG: its runs stay queued, so Airflow's scheduler and task
processes do not compete for the 2 cores and Airflow's SQLite file while we measure (with a
DAG that runs, Airflow-on-SQLite answers some triggers with HTTP 500 "database is locked",
which the dispatcher retries; production Airflow runs on PostgreSQL).

    .venv/bin/python bench/airflow.py                   # ~2 minutes, plus the first venv build
    .venv/bin/python bench/airflow.py --triggers 60 --calls 200
    .venv/bin/python bench/airflow.py --dag triggerd_record    # runs that execute a task
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "airflow"))
from airflow_server import Airflow, airflow_install, start  # noqa: E402

from triggerd.backends.airflow import AirflowBackend, AirflowOptions  # noqa: E402
from triggerd.errors import TransientDispatchError  # noqa: E402
from triggerd.model import TriggerContext  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, ms: list[float]) -> str:
    return (f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {pct(ms, 0.99):.1f} | "
            f"{min(ms):.1f} | {max(ms):.1f} |")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def bench_daemon(airflow: Airflow, work: Path, triggers: int, dag: str) -> list[float]:
    rule = f"bench{uuid.uuid4().hex[:6]}"
    config = work / "triggerd.yaml"
    config.write_text(textwrap.dedent(f"""
        state_dir: state
        sources:
          tick: {{type: cron, every: 1s, catch_up: none}}
        backends:
          airflow:
            type: airflow
            url: {airflow.url}
            dag_id: {dag}
            username: triggerd
            password_env: BENCH_AIRFLOW_PASSWORD
        rules:
          {rule}:
            on: [tick]
            dispatch: {{backend: airflow, concurrency: 4}}
    """).lstrip())
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERD_")}
    env["BENCH_AIRFLOW_PASSWORD"] = airflow.password
    with open(work / "daemon.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "triggerd", "run", "--config",
                                 str(config)], env=env, cwd=work, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + triggers + 60
        while len(runs := _bench_runs(airflow, rule, dag)) < triggers:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (work / "daemon.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"daemon: only {len(runs)} runs; its log ends:\n{tail}")
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    db = sqlite3.connect(work / "state" / "state.db")
    fired = {tid: parse_time(at) if isinstance(at, str) else at
             for tid, at in db.execute("select id, fired_at from triggers where rule = ?",
                                       (rule,))}
    db.close()
    out = []
    for run_id, queued_at in sorted(runs.items())[:triggers]:
        at = fired[run_id]
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        out.append((parse_time(queued_at) - at).total_seconds() * 1000)
    return out


def _bench_runs(airflow: Airflow, rule: str, dag: str) -> dict[str, str]:
    found = airflow.api("GET", f"/dags/{dag}/dagRuns?limit=1000")["dag_runs"]
    return {r["dag_run_id"]: r["queued_at"] for r in found
            if r["dag_run_id"].startswith(f"{rule}.")}


class _Job:
    job_id, attempt = "bench", 1

    async def set_external_id(self, external_id: str) -> None:
        return None


async def bench_backend(airflow: Airflow, calls: int, errors: list[str], dag: str) -> list[float]:
    os.environ["BENCH_AIRFLOW_PASSWORD"] = airflow.password
    backend = AirflowBackend("bench", AirflowOptions.model_validate({
        "type": "airflow", "url": airflow.url, "dag_id": dag,
        "username": "triggerd", "password_env": "BENCH_AIRFLOW_PASSWORD"}))
    prefix = f"call{uuid.uuid4().hex[:6]}"
    out: list[float] = []
    for i in range(calls + 1):
        ctx = TriggerContext(trigger_id=f"{prefix}.{i}", rule="bench", group="",
                             fired_at=datetime.now(UTC), reason="bench", manual=False,
                             params={}, events=[])
        t0 = time.perf_counter()
        while True:
            try:
                await backend.dispatch(ctx, _Job())
                break
            except TransientDispatchError as exc:  # what the dispatcher would retry
                errors.append(exc.detail[:160])
        if i:  # the first call also detects the API and logs in
            out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=40, help="at most 100")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--dag", default="triggerd_paused",
                        help="triggerd_record: runs that execute a task (Airflow busy too)")
    parser.add_argument("--keep", help="copy AIRFLOW_HOME (logs) here at the end")
    args = parser.parse_args()
    t0 = time.monotonic()
    install = airflow_install()
    with tempfile.TemporaryDirectory(prefix="triggerd-bench-airflow-") as tmp:
        home, work = Path(tmp) / "airflow", Path(tmp) / "work"
        home.mkdir()
        work.mkdir()
        airflow = start(install, home)
        started = time.monotonic() - t0
        try:
            # the daemon first: runs are listed in pages of 100
            daemon_ms = bench_daemon(airflow, work, args.triggers, args.dag)
            errors: list[str] = []
            backend_ms = asyncio.run(bench_backend(airflow, args.calls, errors, args.dag))
        finally:
            airflow.stop()
            if args.keep:
                subprocess.run(["cp", "-r", str(home), args.keep], check=False)
    load = os.getloadavg()[0]
    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "load": round(load, 1), "airflow start (s)": round(started, 1)}
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {info}")
    print("| measurement | n | p50 ms | p99 ms | min ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    print(summary("trigger written -> DAG run created (real daemon, cron every 1s)", daemon_ms))
    print(summary("AirflowBackend.dispatch() round trip (POST dagRuns)", backend_ms))
    print(f"transient errors retried in the backend run: {len(errors)}")
    for error in errors[:5]:
        print(f"  {error}")


if __name__ == "__main__":
    main()
