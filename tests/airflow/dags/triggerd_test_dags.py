"""DAGs of the Airflow test fixture (copied into its temporary AIRFLOW_HOME/dags; runs inside
Airflow 3's own virtualenv, never imported by the triggerd test suite).

Every DAG records each run's `conf` as `<out>/<dag_id>.<run_id>.json`, so a test can check what
triggerd sent. `<out>` is TRIGGERD_TEST_AIRFLOW_OUT, set by the fixture.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from airflow.sdk import DAG, get_current_context, task

OUT = Path(os.environ.get("TRIGGERD_TEST_AIRFLOW_OUT", "/nonexistent"))


def _record() -> str:
    run = get_current_context()["dag_run"]
    path = OUT / f"{run.dag_id}.{run.run_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run.conf))
    tmp.rename(path)
    return run.run_id


with DAG("triggerd_record", schedule=None, catchup=False, is_paused_upon_creation=False):
    @task(retries=0)
    def record() -> None:
        _record()

    record()


with DAG("triggerd_fail", schedule=None, catchup=False, is_paused_upon_creation=False):
    @task(retries=0)
    def record_then_fail() -> None:
        _record()
        raise RuntimeError("this task fails on purpose")

    record_then_fail()


with DAG("triggerd_gate", schedule=None, catchup=False, is_paused_upon_creation=False):
    @task(retries=0)
    def wait_for_release() -> None:
        """Runs until the test creates `<out>/release.<run_id>` (at most 100 s)."""
        run_id = _record()
        release = OUT / f"release.{run_id}"
        deadline = time.monotonic() + 100
        while not release.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{release} never appeared")
            time.sleep(0.1)

    wait_for_release()


with DAG("triggerd_paused", schedule=None, catchup=False, is_paused_upon_creation=True):
    @task(retries=0)
    def never_runs_while_paused() -> None:
        _record()

    never_runs_while_paused()
