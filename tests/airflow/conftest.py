"""The session-scoped Airflow 3 of these tests; how it is built and run: airflow_server.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from airflow_server import AIRFLOW_VERSION, Airflow, airflow_install, start


@pytest.fixture(scope="session")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    try:
        install = airflow_install()
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Airflow {AIRFLOW_VERSION} is required in CI: {exc}")
        pytest.skip(f"Airflow {AIRFLOW_VERSION} cannot be installed here: {exc}")
    running = start(install, tmp_path_factory.mktemp("airflow-home"))
    try:
        yield running
    finally:
        running.stop()
