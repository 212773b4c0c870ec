"""The airflow backend against a real Airflow 3 (`/api/v2`, simple auth manager, LocalExecutor).

Each test uses its own trigger ids, so the tests share one Airflow (see conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from airflow_server import Airflow, free_port
from fake_job import FakeJob

from triggerd import registry
from triggerd.backends.airflow import AirflowBackend, AirflowOptions
from triggerd.errors import ConfigError, PermanentDispatchError, TransientDispatchError
from triggerd.interfaces import Backend
from triggerd.model import DispatchResult, TriggerContext

pytestmark = pytest.mark.slow
PASSWORD_ENV = "TEST_AIRFLOW_PASSWORD"


def make_ctx(dag: str = "record", **changes: Any) -> TriggerContext:
    values: dict[str, Any] = {
        "trigger_id": f"retrain.{uuid.uuid4().hex[:10]}",
        "rule": "retrain",
        "group": "",
        "fired_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "reason": "10 new events (≥10), quiet for 2m",
        "manual": False,
        "params": {"dag": dag, "model": "churn"},
        "events": [{"id": "e1", "source": "landing", "kind": "created",
                    "payload": {"path": "/data/a.parquet", "size": 12}}],
    }
    values.update(changes)
    return TriggerContext(**values)


def make_backend(airflow: Airflow, **options: Any) -> AirflowBackend:
    values: dict[str, Any] = {"type": "airflow", "url": airflow.url,
                              "dag_id": "triggerd_{params.dag}", "username": "triggerd",
                              "password_env": PASSWORD_ENV, "poll_interval": "100ms"}
    values.update(options)
    return AirflowBackend("airflow-test", AirflowOptions.model_validate(values))


@pytest.fixture(autouse=True)
def _password(airflow: Airflow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, airflow.password)


async def dispatch(backend: AirflowBackend, ctx: TriggerContext, job: FakeJob) -> DispatchResult:
    """`backend.dispatch`, retried on a transient error as the dispatcher would: Airflow on
    SQLite answers a few requests with HTTP 500 "database is locked" while its scheduler
    writes (a read-then-write transaction cannot wait for the lock)."""
    for attempt in range(1, 6):
        try:
            return await backend.dispatch(ctx, job)
        except TransientDispatchError as exc:
            if attempt == 5 or "HTTP 500" not in exc.detail:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return value


def test_registered_and_satisfies_the_backend_protocol(airflow: Airflow) -> None:
    assert registry.backend_class("airflow") is AirflowBackend
    assert isinstance(make_backend(airflow), Backend)


async def test_trigger_creates_one_run_named_by_the_trigger_with_the_context_as_conf(
        airflow: Airflow) -> None:
    backend, ctx, job = make_backend(airflow), make_ctx(), FakeJob()
    result = await dispatch(backend, ctx, job)
    assert result.external_id == ctx.trigger_id
    assert job.external_ids == [ctx.trigger_id]
    assert result.detail is not None
    assert f"DAG run {ctx.trigger_id} of triggerd_record created" in result.detail
    assert backend.api.version == "v2"  # detected
    assert airflow.runs("triggerd_record")[ctx.trigger_id] in ("queued", "running", "success")
    conf = wait_until(lambda: airflow.recorded_conf("triggerd_record", ctx.trigger_id),
                      "the DAG run to record its conf")
    assert conf == json.loads(json.dumps(ctx.to_dict()))
    assert conf["params"]["model"] == "churn" and conf["events"][0]["payload"]["size"] == 12


async def test_second_dispatch_of_a_trigger_is_a_409_success_without_a_second_run(
        airflow: Airflow) -> None:
    backend, ctx = make_backend(airflow), make_ctx()
    await dispatch(backend, ctx, FakeJob())
    again = await dispatch(make_backend(airflow), ctx, FakeJob(attempt=2))  # e.g. a new daemon
    assert again.external_id == ctx.trigger_id
    assert again.detail is not None and "already existed" in again.detail
    assert list(airflow.runs("triggerd_record")).count(ctx.trigger_id) == 1


async def test_wait_follows_the_run_to_success(airflow: Airflow) -> None:
    backend, ctx = make_backend(airflow, wait=True), make_ctx()
    result = await dispatch(backend, ctx, FakeJob())
    assert result.detail == f"DAG run {ctx.trigger_id} of triggerd_record succeeded"
    assert airflow.run_state("triggerd_record", ctx.trigger_id) == "success"
    assert airflow.recorded_conf("triggerd_record", ctx.trigger_id)["trigger_id"] == \
        ctx.trigger_id


async def test_wait_on_a_failing_dag_fails_the_job_naming_the_failed_task(
        airflow: Airflow) -> None:
    backend, ctx, job = make_backend(airflow, wait=True), make_ctx("fail"), FakeJob()
    with pytest.raises(PermanentDispatchError) as err:
        await dispatch(backend, ctx, job)
    assert err.value.detail == (f"DAG run {ctx.trigger_id} of triggerd_fail ended in state "
                                "failed; failed tasks: record_then_fail")
    assert err.value.external_id == ctx.trigger_id == job.external_ids[0]


async def test_a_run_of_a_paused_dag_is_queued_and_the_detail_says_why(
        airflow: Airflow) -> None:
    ctx = make_ctx("paused")
    result = await dispatch(make_backend(airflow), ctx, FakeJob())
    assert result.detail == (f"DAG run {ctx.trigger_id} of triggerd_paused created; state "
                             "queued; DAG triggerd_paused is paused: the run stays queued "
                             "until the DAG is unpaused")
    # waiting on it ends at the timeout, with the same explanation; the run is left alone
    waiting = make_backend(airflow, wait=True, timeout="1s")
    with pytest.raises(PermanentDispatchError) as err:
        await dispatch(waiting, ctx, FakeJob(attempt=2))
    assert err.value.detail.startswith(
        f"gave up waiting after 1s: DAG run {ctx.trigger_id} of triggerd_paused is still queued")
    assert "DAG triggerd_paused is paused" in err.value.detail
    assert airflow.run_state("triggerd_paused", ctx.trigger_id) == "queued"


async def test_a_ready_token_from_token_env(airflow: Airflow,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_AIRFLOW_TOKEN", airflow.token())
    backend = make_backend(airflow, username=None, password_env=None,
                           token_env="TEST_AIRFLOW_TOKEN", api="v2")
    ctx = make_ctx()
    assert (await dispatch(backend, ctx, FakeJob())).external_id == ctx.trigger_id
    assert ctx.trigger_id in airflow.runs("triggerd_record")


async def test_a_password_from_the_file_named_by_env_FILE(
        airflow: Airflow, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(airflow.password + "\n")
    monkeypatch.delenv(PASSWORD_ENV)
    monkeypatch.setenv(f"{PASSWORD_ENV}_FILE", str(secret))
    ctx = make_ctx()
    assert (await dispatch(make_backend(airflow), ctx, FakeJob())).external_id == ctx.trigger_id


async def test_a_refused_login_token_is_replaced_by_one_new_login(airflow: Airflow) -> None:
    backend = make_backend(airflow)
    await dispatch(backend, make_ctx(), FakeJob())
    backend.api._token = "signed.with-an.old-secret"  # Airflow answers 403 (expired: 401)
    ctx = make_ctx()
    assert (await dispatch(backend, ctx, FakeJob())).external_id == ctx.trigger_id


async def test_a_wrong_password_fails_permanently_without_showing_it(
        airflow: Airflow, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(PASSWORD_ENV, "wrong-Secret-123")
    with pytest.raises(PermanentDispatchError) as err:
        await dispatch(make_backend(airflow), make_ctx(), FakeJob())
    assert err.value.detail.startswith("Airflow refused the login of user 'triggerd' at "
                                       "POST /auth/token (HTTP 401)")
    assert "wrong-Secret-123" not in err.value.detail + caplog.text


async def test_a_user_without_the_right_to_trigger_gets_a_permission_error(
        airflow: Airflow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, airflow.passwords["viewer"])
    ctx = make_ctx()
    with pytest.raises(PermanentDispatchError) as err:
        await dispatch(make_backend(airflow, username="viewer"), ctx, FakeJob())
    assert err.value.detail == "Airflow permission denied (HTTP 403) for user 'viewer'"
    assert ctx.trigger_id not in airflow.runs("triggerd_record")


async def test_an_unknown_dag_fails_permanently_naming_it(airflow: Airflow) -> None:
    with pytest.raises(PermanentDispatchError) as err:
        await dispatch(make_backend(airflow), make_ctx("nope"), FakeJob())
    assert err.value.detail.startswith(
        f"DAG 'triggerd_nope' not found in Airflow at {airflow.url} (HTTP 404")
    assert "check backends.airflow-test.dag_id" in err.value.detail


async def test_a_refused_request_fails_permanently_with_airflows_reason(
        airflow: Airflow) -> None:
    ctx = make_ctx(trigger_id="not a valid run id")  # Airflow's run id pattern refuses spaces
    with pytest.raises(PermanentDispatchError) as err:
        await dispatch(make_backend(airflow), ctx, FakeJob())
    assert err.value.detail.startswith("Airflow refused to create DAG run not a valid run id "
                                       "of triggerd_record: HTTP 400: ")
    assert "not a valid run id" in err.value.detail.split("HTTP 400: ", 1)[1]


async def test_a_dag_id_rendering_to_an_invalid_id_is_refused_before_any_request(
        airflow: Airflow) -> None:
    with pytest.raises(PermanentDispatchError) as err:
        await dispatch(make_backend(airflow), make_ctx("x/../y"), FakeJob())
    assert "dag_id renders to 'triggerd_x/../y', not a valid Airflow DAG id" in err.value.detail


async def test_a_missing_secret_names_the_variable_at_start(
        airflow: Airflow, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like every backend: a secret is read when the backend is built (the daemon exits 2
    before it starts), not discovered by the first job."""
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ConfigError) as err:
        make_backend(airflow)
    assert err.value.problems == [
        f"backends.airflow-test.password_env: environment variable {PASSWORD_ENV} is not set "
        f"(nor {PASSWORD_ENV}_FILE naming a file that holds it)"]


async def test_an_unreachable_airflow_is_a_transient_error(airflow: Airflow) -> None:

    backend = make_backend(airflow, url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientDispatchError) as err:
        await backend.dispatch(make_ctx(), FakeJob())
    assert err.value.detail.startswith("cannot reach Airflow at http://127.0.0.1:")
