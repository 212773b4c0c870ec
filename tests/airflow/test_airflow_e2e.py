"""The real daemon with the airflow backend against the real Airflow 3: `kill -9` while a
`wait: true` job follows its DAG run, restart, and the same run is followed to success."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_server import Airflow

sys.path.insert(0, str(Path(__file__).parent.parent / "e2e"))
from harness import Triggerd, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def td(tmp_path: Path, airflow: Airflow) -> Iterator[Triggerd]:
    t = Triggerd(tmp_path)
    t.env["TEST_AIRFLOW_PASSWORD"] = airflow.password
    try:
        yield t
    finally:
        t.close()


def airflow_config(td: Triggerd, airflow: Airflow, rule: str) -> None:
    td.write(f"""
        state_dir: state
        sources:
          tick: {{type: cron, every: 1h, catch_up: none}}
        backends:
          airflow-prod:
            type: airflow
            url: {airflow.url}
            dag_id: triggerd_{{params.dag}}
            username: triggerd
            password_env: TEST_AIRFLOW_PASSWORD
            wait: true
            poll_interval: 200ms
        rules:
          {rule}:
            on: [tick]
            match: {{kinds: [manual]}}
            dispatch:
              backend: airflow-prod
              params: {{dag: gate}}
              retry: {{attempts: 3, backoff: 1s}}
    """)


def the_job(td: Triggerd, rule: str) -> dict[str, object] | None:
    jobs = td.json("jobs", "--rule", rule)
    return jobs[0] if jobs else None


def test_kill_9_while_following_a_run_reattaches_to_the_same_run_after_restart(
        td: Triggerd, airflow: Airflow) -> None:
    rule = f"e2e{uuid.uuid4().hex[:8]}"  # run ids are unique across the shared Airflow
    run_id = f"{rule}.1"
    airflow_config(td, airflow, rule)
    first = td.start(log="first.log")
    td.wait_running(first)
    fired = td.cli("fire", rule, "--reason", "retrain now")
    assert fired.returncode == 0 and fired.stdout.startswith(f"fired {run_id}"), fired

    # the DAG run is running (its task recorded the conf) and the job knows the run id
    conf = wait_for(lambda: airflow.recorded_conf("triggerd_gate", run_id), 60,
                    "the DAG run to start")
    assert conf["trigger_id"] == run_id and conf["rule"] == rule and conf["manual"] is True
    job = wait_for(lambda: the_job(td, rule), 10, "the job")
    assert job["status"] == "running" and job["external_id"] == run_id
    first.kill()  # kill -9 while the job follows the run
    first.wait(timeout=10)
    assert airflow.run_state("triggerd_gate", run_id) == "running"

    second = td.start(log="second.log")
    td.wait_running(second)
    # attempt 2 (or 3 if Airflow-on-SQLite answered one POST with a 500 that was retried) of
    # 4: the attempt the kill interrupted is given back
    wait_for(lambda: re.search(rf"job {re.escape(run_id)}: attempt [23]/4 started",
                               td.log("second.log")), 20,
             "the restarted daemon to take the job up again")
    job = the_job(td, rule)
    assert job is not None and job["status"] == "running"  # following the run, not done
    airflow.release(run_id)  # let the DAG run finish
    done = wait_for(lambda: (j := the_job(td, rule)) and j["status"] == "succeeded" and j,
                    60, "the job to follow the run to success")
    assert done["external_id"] == run_id and done["attempts"] in (2, 3)
    assert done["detail"] == (f"DAG run {run_id} of triggerd_gate succeeded (followed the "
                              "run created by an earlier attempt)")
    assert td.stop(second) == 0

    assert airflow.run_state("triggerd_gate", run_id) == "success"
    runs = airflow.api("GET", "/dags/triggerd_gate/dagRuns?limit=1000")["dag_runs"]
    assert [r["dag_run_id"] for r in runs if r["conf"].get("rule") == rule] == [run_id]
    assert airflow.password not in td.log("first.log") + td.log("second.log")
