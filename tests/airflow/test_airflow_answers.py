"""The airflow backend against answers outside the contract, and DAG ids that must not reach
a URL: every case ends in a transient or a permanent `DispatchError` with a clear detail (so
the dispatcher records it: the job never stays `running`), and no answer makes the backend
create a second DAG run for one trigger.

Against the `/api/v1` contract server of contract_v1.py (its `after_create`, `odd_runs` and
`redirect_next` faults), over real HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from contract_v1 import ContractV1
from fake_job import FakeJob
from test_airflow2_contract import PASSWORD, make_backend, make_ctx

from triggerd.backends.airflow import valid_dag_id
from triggerd.errors import PermanentDispatchError, TransientDispatchError


@pytest.fixture
async def server() -> AsyncIterator[ContractV1]:
    s = ContractV1({"retrain_churn": False, "retrain_é.v2": False}, "triggerd", PASSWORD)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_AIRFLOW2_PASSWORD", PASSWORD)


def posts(server: ContractV1) -> int:
    return sum(1 for m, p, _ in server.requests if m == "POST" and p.endswith("/dagRuns"))


@pytest.mark.parametrize("how", ["garbage", "list", "huge", "empty-202"])
async def test_a_2xx_with_an_odd_body_still_means_the_run_exists(server: ContractV1,
                                                                 how: str) -> None:
    server.after_create = [how]
    ctx, job = make_ctx(), FakeJob()
    result = await make_backend(server).dispatch(ctx, job)
    assert result.external_id == ctx.trigger_id == job.external_ids[0]
    assert result.detail is not None and "state unknown" in result.detail
    assert list(server.runs) == [("retrain_churn", ctx.trigger_id)]
    # a later attempt (or a restart) finds the run: never a second one
    again = await make_backend(server).dispatch(ctx, FakeJob())
    assert again.detail is not None and "already existed" in again.detail
    assert len(server.runs) == 1 and posts(server) == 2


@pytest.mark.parametrize(("how", "options", "said"), [
    ("cut", {}, "cannot reach Airflow"),
    ("stall", {"request_timeout": "300ms"}, "timed out on POST /api/v1/dags/retrain_churn/dagRuns"),
])
async def test_an_answer_lost_after_the_run_was_created_is_transient_and_the_retry_follows_it(
        server: ContractV1, how: str, options: dict[str, Any], said: str) -> None:
    server.after_create = [how]
    ctx = make_ctx()
    with pytest.raises(TransientDispatchError, match=said):
        await make_backend(server, **options).dispatch(ctx, FakeJob())
    result = await make_backend(server, **options).dispatch(ctx, FakeJob())
    assert result.detail is not None and "already existed" in result.detail
    assert list(server.runs) == [("retrain_churn", ctx.trigger_id)] and posts(server) == 2


async def test_odd_poll_answers_are_polled_through_until_the_run_ends(server: ContractV1
                                                                      ) -> None:
    server.odd_runs = ["garbage", "list", "stall"]
    ctx = make_ctx()
    backend = make_backend(server, wait=True, request_timeout="300ms")
    task = asyncio.create_task(backend.dispatch(ctx, FakeJob()))
    async with asyncio.timeout(10):
        while server.odd_runs or (("retrain_churn", ctx.trigger_id) not in server.runs):
            await asyncio.sleep(0.01)
    server.set_state("retrain_churn", ctx.trigger_id, "success")
    result = await asyncio.wait_for(task, 10)
    assert result.detail is not None and "succeeded" in result.detail
    assert len(server.runs) == 1


async def test_a_redirect_is_not_followed_and_fails_with_a_clear_detail(server: ContractV1
                                                                        ) -> None:
    backend = make_backend(server, api="v1")  # no probe: the POST is the first request
    server.redirect_next = True
    with pytest.raises(PermanentDispatchError, match=r"redirect \(HTTP 307 to "
                       r"http://elsewhere.invalid/\), not followed; point backends.af2.url"):
        await backend.dispatch(make_ctx(), FakeJob())
    assert not server.runs


async def test_a_redirect_while_probing_means_not_that_api_version(server: ContractV1
                                                                   ) -> None:
    server.redirect_next = True  # the probe of /api/v2/version
    result = await make_backend(server).dispatch(make_ctx(), FakeJob())
    assert result.detail is not None and "created" in result.detail
    assert [p for _, p, _ in server.requests[:2]] == ["/api/v2/version", "/api/v1/version"]


@pytest.mark.parametrize("model", ["../admin", ".", "a b", "x/y", "x?y=1", "x\n", "", "m" * 243,
                                   "%2e%2e"])
async def test_a_dag_id_that_renders_invalid_fails_before_any_request(
        server: ContractV1, model: str) -> None:
    backend = make_backend(server, dag_id="{params.model}" if model in (".", "") else
                           "retrain_{params.model}")
    with pytest.raises(PermanentDispatchError, match=r"not a valid Airflow DAG id .*check "
                       r"backends\.af2\.dag_id") as caught:
        await backend.dispatch(make_ctx(params={"model": model}), FakeJob())
    assert not server.requests
    assert len(caught.value.detail) < 400


async def test_a_valid_dag_id_outside_ascii_is_percent_encoded_in_the_path(
        server: ContractV1) -> None:
    ctx = make_ctx(params={"model": "é.v2"})
    await make_backend(server).dispatch(ctx, FakeJob())
    assert list(server.runs) == [("retrain_é.v2", ctx.trigger_id)]


@pytest.mark.parametrize(("dag_id", "valid"), [
    ("retrain_churn", True), ("retrain.v1-2", True), ("r" * 250, True), ("r" * 251, False),
    ("..", False), (".", False), ("...", True), ("retrain_é", True), ("a\n", False),
    ("a/b", False), ("", False)])
def test_dag_ids_follow_airflows_own_rule(dag_id: str, valid: bool) -> None:
    assert valid_dag_id(dag_id) is valid
