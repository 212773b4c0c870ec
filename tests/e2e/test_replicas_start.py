"""Replicas starting together on a fresh PostgreSQL database, as a deployment does it.

Three `triggerd run` and two `triggerd status` start at the same moment on a database nobody
has migrated: every daemon comes up (one migrates under the lock, the others wait and find
nothing to do), the `status` commands either answer or say what to run (never a traceback),
and every cron tick is dispatched exactly once across the replicas.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Triggerd, wait_for
from pg_fresh import fresh_database
from sqlalchemy import create_engine, text

TICKS = 4  # ticks to see dispatched (one a second) before stopping


def live_daemons(url: str) -> set[int]:
    """The pids of the daemons registered in the store and not stopped."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT pid FROM daemons WHERE stopped_at IS NULL"))
            return {int(pid) for (pid,) in rows}
    finally:
        engine.dispose()


@pytest.fixture
def cold_pg() -> Iterator[str]:
    with fresh_database("triggerd_cold") as url:
        yield url


def test_three_replicas_and_status_start_together_on_a_fresh_database(
        tmp_path: Path, cold_pg: str) -> None:
    td = Triggerd(tmp_path, store_url=cold_pg)
    td.env["TRIGGERD_LOG_LEVEL"] = "INFO"
    calls = tmp_path / "calls.log"
    td.write(f"""
        state_dir: state
        sources:
          tick: {{type: cron, every: 1s, catch_up: none}}
        backends:
          mark:
            type: command
            argv: [sh, -c, 'echo "$TRIGGERD_TRIGGER_ID" >> {calls}']
            timeout: 30s
        rules:
          periodic:
            on: [tick]
            dispatch: {{backend: mark}}
    """)
    status_cmd = [sys.executable, "-m", "triggerd", "status", "--json", "--config",
                  str(td.config)]
    try:
        daemons = [td.start(log=f"daemon{i}.log") for i in range(3)]
        queries = [subprocess.Popen(status_cmd, env=td.env, cwd=tmp_path, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                   for _ in range(2)]
        for proc in daemons:
            td.wait_running(proc, timeout=60)  # fails at once if a daemon exits

        for query in queries:
            out, err = query.communicate(timeout=60)
            assert "Traceback" not in err, err
            if query.returncode == 0:
                assert "daemon" in json.loads(out)
            else:  # it ran before the first daemon had migrated: it says what to run
                assert query.returncode == 2, err
                assert "triggerd db upgrade --config" in err and out == "", err

        def dispatched() -> list[str]:
            text = calls.read_text() if calls.exists() else ""
            return text.split()
        wait_for(lambda: len(set(dispatched())) >= TICKS, 30, f"{TICKS} ticks dispatched")
        assert all(proc.poll() is None for proc in daemons), "a daemon exited"
        status = td.json("status")
        assert status["daemon"]["running"] is True
        assert live_daemons(cold_pg) == {p.pid for p in daemons}  # each one registered
        upgraded = td.cli("db", "upgrade")  # beside running daemons: a no-op
        assert upgraded.returncode == 0 and "at revision" in upgraded.stdout, upgraded.stderr
    finally:
        try:
            stopped = [td.stop(proc, timeout=30) for proc in td.procs]
        finally:
            td.close()
    assert stopped == [0, 0, 0], [td.log(f"daemon{i}.log")[-2000:] for i in range(3)]

    lines = dispatched()
    twice = [tid for tid, n in Counter(lines).items() if n > 1]
    assert twice == [], f"triggers dispatched more than once: {twice}"
    triggers = td.json("triggers", "--rule", "periodic", "--limit", "1000")
    assert len({t["id"] for t in triggers}) == len(triggers)  # one trigger per tick
    assert set(lines) <= {t["id"] for t in triggers}
    events = td.json("events", "--source", "tick", "--limit", "1000")
    slots = Counter(e["payload"]["scheduled_for"] for e in events)
    assert max(slots.values()) == 1, "a tick was stored twice"
    for i in range(3):
        log = td.log(f"daemon{i}.log")
        assert "Traceback" not in log, log[-3000:]
