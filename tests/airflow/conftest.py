"""The session's Airflow 3 (how it is built and run: airflow_server.py), booted in the background.

Airflow takes 20-45 s to start and its first task run is slow, so when the selected tests use
the `airflow` fixture, this conftest launches Airflow right after collection, lets a thread
wait for it and run one warm-up DAG run, and moves the tests that need it to the end of the
run: the rest of the suite runs meanwhile. The fixture waits for readiness (a poll, never a
sleep); the session's end stops Airflow's process groups, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from airflow_server import AIRFLOW_VERSION, Airflow, airflow_install, launch, wait_ready, warm_up


class Boot:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="triggerd-airflow-"))
        self.airflow: Airflow | None = None
        self.install_error: Exception | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        try:
            self.airflow = launch(airflow_install(), self.home)
        except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
            self.install_error = exc
            self.ready.set()
            return
        threading.Thread(target=self._prepare, name="airflow-boot", daemon=True).start()

    def _prepare(self) -> None:
        assert self.airflow is not None
        try:
            wait_ready(self.airflow)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()
        if self.error is None:
            with contextlib.suppress(Exception):  # a test failing on its own says more
                warm_up(self.airflow)

    def stop(self) -> None:
        if self.airflow is not None:
            self.airflow.stop()
        shutil.rmtree(self.home, ignore_errors=True)


_boot: Boot | None = None


@pytest.hookimpl(trylast=True)  # after deselection: only the tests that will run count
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    global _boot
    uses = [i for i in items if "airflow" in getattr(i, "fixturenames", ())]
    if uses and _boot is None:
        later = set(uses)
        items[:] = [i for i in items if i not in later] + uses
        _boot = Boot()


def pytest_sessionfinish() -> None:
    if _boot is not None:
        _boot.stop()


@pytest.fixture(scope="session")
def airflow() -> Airflow:
    global _boot
    if _boot is None:  # asked for outside collection (getfixturevalue)
        _boot = Boot()
    if not _boot.ready.wait(timeout=300):
        pytest.fail("Airflow did not become ready in 300 s")
    if _boot.install_error is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Airflow {AIRFLOW_VERSION} is required in CI: {_boot.install_error}")
        pytest.skip(f"Airflow {AIRFLOW_VERSION} cannot be installed here: {_boot.install_error}")
    if _boot.error is not None:
        raise _boot.error
    assert _boot.airflow is not None
    return _boot.airflow
