"""The airflow backend's `/api/v1` (Airflow 2) side, against a server that follows Airflow 2's
documented dagRuns contract (contract_v1.py), and the backend's option checks."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from contract_v1 import ContractV1
from fake_job import FakeJob
from pydantic import ValidationError

from triggerd.backends.airflow import AirflowBackend, AirflowOptions
from triggerd.errors import PermanentDispatchError, TransientDispatchError
from triggerd.model import TriggerContext

PASSWORD = "s3cret-Pa55word"


def make_ctx(**changes: Any) -> TriggerContext:
    values: dict[str, Any] = {
        "trigger_id": f"retrain.{uuid.uuid4().hex[:10]}", "rule": "retrain", "group": "",
        "fired_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC), "reason": "manual",
        "manual": True, "params": {"model": "churn"}, "events": []}
    values.update(changes)
    return TriggerContext(**values)


@pytest.fixture
async def server() -> AsyncIterator[ContractV1]:
    s = ContractV1({"retrain_churn": False, "retrain_paused": True}, "triggerd", PASSWORD)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_AIRFLOW2_PASSWORD", PASSWORD)


def make_backend(server: ContractV1, **options: Any) -> AirflowBackend:
    values: dict[str, Any] = {"type": "airflow", "url": server.url,
                              "dag_id": "retrain_{params.model}", "username": "triggerd",
                              "password_env": "TEST_AIRFLOW2_PASSWORD",
                              "poll_interval": "20ms"}
    values.update(options)
    return AirflowBackend("af2", AirflowOptions.model_validate(values))


async def wait_polled(server: ContractV1, run_id: str, times: int) -> None:
    async with asyncio.timeout(10):
        while sum(1 for m, p, _ in server.requests
                  if m == "GET" and p.endswith(f"/dagRuns/{run_id}")) < times:
            await asyncio.sleep(0.01)


async def test_detects_v1_and_triggers_with_basic_auth_run_id_and_conf(
        server: ContractV1) -> None:
    backend, ctx, job = make_backend(server), make_ctx(), FakeJob()
    result = await backend.dispatch(ctx, job)
    assert backend.api.version == "v1"
    assert result.external_id == ctx.trigger_id and job.external_ids == [ctx.trigger_id]
    assert result.detail == f"DAG run {ctx.trigger_id} of retrain_churn created; state queued"
    posts = [(p, b) for m, p, b in server.requests if m == "POST"]
    # Airflow 2 gets no logical_date (it would take null as an error on some 2.x releases)
    assert posts == [("/api/v1/dags/retrain_churn/dagRuns",
                      {"dag_run_id": ctx.trigger_id, "conf": ctx.to_dict()})]
    assert ("GET", "/api/v2/version", None) in server.requests  # probed first: not there


async def test_a_409_is_success_and_wait_follows_the_existing_run(server: ContractV1) -> None:
    ctx = make_ctx()
    await make_backend(server).dispatch(ctx, FakeJob())
    task = asyncio.create_task(make_backend(server, wait=True).dispatch(ctx, FakeJob()))
    await wait_polled(server, ctx.trigger_id, 2)
    server.set_state("retrain_churn", ctx.trigger_id, "running")
    await wait_polled(server, ctx.trigger_id, 4)
    assert not task.done()
    server.set_state("retrain_churn", ctx.trigger_id, "success")
    result = await asyncio.wait_for(task, 10)
    assert result.detail == (f"DAG run {ctx.trigger_id} of retrain_churn succeeded (followed "
                             "the run created by an earlier attempt)")
    assert len(server.runs) == 1


async def test_a_failed_run_fails_the_job_naming_the_failed_tasks(server: ContractV1) -> None:
    ctx = make_ctx()
    task = asyncio.create_task(make_backend(server, wait=True).dispatch(ctx, FakeJob()))
    await wait_polled(server, ctx.trigger_id, 1)
    server.set_state("retrain_churn", ctx.trigger_id, "failed", ["train", "evaluate"])
    with pytest.raises(PermanentDispatchError) as err:
        await asyncio.wait_for(task, 10)
    assert err.value.detail == (f"DAG run {ctx.trigger_id} of retrain_churn ended in state "
                                "failed; failed tasks: evaluate, train")


async def test_errors_while_polling_are_polled_through(server: ContractV1,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    ctx = make_ctx()
    task = asyncio.create_task(make_backend(server, wait=True).dispatch(ctx, FakeJob()))
    await wait_polled(server, ctx.trigger_id, 1)
    server.fail_next(503, times=3)
    await wait_polled(server, ctx.trigger_id, 5)
    server.set_state("retrain_churn", ctx.trigger_id, "success")
    result = await asyncio.wait_for(task, 10)
    assert result.detail == f"DAG run {ctx.trigger_id} of retrain_churn succeeded"
    assert "cannot poll DAG run (Airflow answered GET" in caplog.text
    assert caplog.text.count("cannot poll DAG run") == 1  # once per outage, not per poll


async def test_a_paused_dag_is_named_in_the_detail(server: ContractV1) -> None:
    ctx = make_ctx(params={"model": "paused"})
    result = await make_backend(server).dispatch(ctx, FakeJob())
    assert result.detail is not None and result.detail.endswith(
        "; DAG retrain_paused is paused: the run stays queued until the DAG is unpaused")


async def test_a_run_deleted_while_followed_fails_the_job(server: ContractV1) -> None:
    ctx = make_ctx()
    task = asyncio.create_task(make_backend(server, wait=True).dispatch(ctx, FakeJob()))
    await wait_polled(server, ctx.trigger_id, 1)
    del server.runs[("retrain_churn", ctx.trigger_id)]
    with pytest.raises(PermanentDispatchError, match="disappeared from Airflow"):
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize(("status", "error"), [(500, TransientDispatchError),
                                               (503, TransientDispatchError),
                                               (429, TransientDispatchError),
                                               (422, PermanentDispatchError)])
async def test_trigger_answers_map_to_retry_or_fail(server: ContractV1, status: int,
                                                    error: type[Exception]) -> None:
    backend = make_backend(server, api="v1")
    server.fail_next(status)
    with pytest.raises(error) as err:
        await backend.dispatch(make_ctx(), FakeJob())
    assert f"HTTP {status}" in str(err.value) and "injected fault" in str(err.value)


async def test_wrong_basic_auth_fails_permanently_without_showing_the_password(
        server: ContractV1, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEST_AIRFLOW2_PASSWORD", "not-the-Password")
    with pytest.raises(PermanentDispatchError) as err:
        await make_backend(server).dispatch(make_ctx(), FakeJob())
    assert err.value.detail == "Airflow authentication failed (HTTP 401) for user 'triggerd'"
    shown = err.value.detail + caplog.text
    assert "not-the-Password" not in shown
    assert base64.b64encode(b"triggerd:not-the-Password").decode() not in shown


async def test_no_airflow_api_at_the_url_is_a_permanent_error(server: ContractV1) -> None:
    backend = make_backend(server, url=f"{server.url}/not-airflow")
    with pytest.raises(PermanentDispatchError) as err:
        await backend.dispatch(make_ctx(), FakeJob())
    assert err.value.detail == (f"no Airflow REST API at {server.url}/not-airflow: GET "
                                "/api/v2/version and /api/v1/version both failed (last: HTTP "
                                "404); check backends.af2.url")


@pytest.mark.parametrize(("options", "message"), [
    ({"url": "http://u:p@airflow"}, "must not hold credentials"),
    ({"url": "ftp://airflow"}, "must be an http:// or https:// URL"),
    ({"token_env": "T"}, "set either token_env or username with password_env, not both"),
    ({"password_env": None}, "username and password_env go together"),
    ({"dag_id": "retrain_{params.model"}, "unclosed '{' in template"),
    ({"password_env": "NOT-A-NAME"}, "String should match pattern"),
    ({"api": "v3"}, "Input should be 'auto', 'v1' or 'v2'"),
])
def test_options_are_checked_with_a_clear_message(options: dict[str, Any], message: str) -> None:
    values = {"type": "airflow", "url": "http://airflow", "dag_id": "d", "username": "u",
              "password_env": "P", **options}
    with pytest.raises(ValidationError) as err:
        AirflowOptions.model_validate(values)
    assert message in str(err.value)
    assert "u:p" not in str(err.value)  # an input value is never echoed
