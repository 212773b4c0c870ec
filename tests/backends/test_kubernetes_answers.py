"""The `kubernetes` backend against API answers outside the contract (tests/kube_server.py's
`odd_gets` and `fail_next` faults), through the official client over real HTTP: each ends as
a transient or permanent `DispatchError` with a clear detail, or is polled through, and no
answer makes the backend create a second Job for one trigger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from backend_rig import FakeHandle, RunJob
from kube_server import KubeApi
from test_kubernetes import backend, ctx

from triggerd.backends.kubernetes import job_name
from triggerd.errors import TransientDispatchError
from triggerd.model import JobStatus

ODD = ["garbage", "list", "bad-status", "bad-conditions", "cut"]


async def test_odd_answers_while_waiting_are_polled_through(kube: KubeApi, tmp_path: Path,
                                                            run_job: RunJob) -> None:
    kube.odd_gets = list(ODD)
    kube.complete_after = len(ODD) + 2
    job = await run_job(backend(kube, tmp_path, wait=True, poll="10ms"), timeout=10,
                        params={"tag": "1", "model": "m"})
    assert job.status == JobStatus.SUCCEEDED, job.detail
    assert job.detail is not None and "complete (succeeded 1, failed 0)" in job.detail
    assert len(kube.creates) == 1 and not kube.odd_gets


@pytest.mark.parametrize("odd", [*ODD[:3], "cut"])
async def test_an_odd_answer_to_reading_an_existing_job_is_transient_then_reattaches(
        kube: KubeApi, tmp_path: Path, odd: str) -> None:
    await backend(kube, tmp_path).dispatch(ctx(), FakeHandle())
    kube.odd_gets = [odd]
    name = f"ml/{job_name('r', 'r.1')}"
    with pytest.raises(TransientDispatchError, match=f"reading Job {name}: "):
        await backend(kube, tmp_path).dispatch(ctx(), FakeHandle())
    result = await backend(kube, tmp_path).dispatch(ctx(), FakeHandle())
    assert result.detail == f"Job {name} already existed (reattached)"
    assert len(kube.creates) == 1


@pytest.mark.parametrize(("header", "hint"), [
    ({"Retry-After": "120"}, 120.0), ({"Retry-After": "soon"}, None),
    ({"Retry-After": "-3"}, None), ({"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0),
    ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, 3600.0), ({}, None)])
async def test_retry_after_of_the_api_is_read_as_rfc_9110_says(
        kube: KubeApi, tmp_path: Path, header: dict[str, str], hint: float | None) -> None:
    kube.fail_next = [(503, header)]
    with pytest.raises(TransientDispatchError, match="HTTP 503: injected failure") as caught:
        await backend(kube, tmp_path).dispatch(ctx(), FakeHandle())
    assert caught.value.retry_after == hint


async def test_a_retry_after_years_out_waits_no_longer_than_max_backoff(
        kube: KubeApi, tmp_path: Path, run_job: RunJob) -> None:
    far: Any = (429, {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"})
    kube.fail_next = [far, far]
    job = await run_job(backend(kube, tmp_path), retry={
        "attempts": 3, "backoff": "10ms", "max_backoff": "100ms"}, timeout=10,
        params={"tag": "1", "model": "m"})
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 3)
    assert len(kube.creates) == 1
