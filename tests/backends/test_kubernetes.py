"""The `kubernetes` backend through the official client, over HTTP, against the Job API
stand-in of tests/kube_server.py (a kubeconfig points the client at it)."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from backend_rig import FakeHandle, RunJob
from hypothesis import given
from hypothesis import strategies as st
from kube_server import DNS1123_LABEL, KubeApi
from pydantic import ValidationError

from triggerd.backends.kubernetes import (
    KubernetesBackend,
    KubernetesOptions,
    job_name,
    label_value,
)
from triggerd.errors import ConfigError, PermanentDispatchError, TransientDispatchError
from triggerd.model import JobStatus, TriggerContext

MANIFEST: dict[str, Any] = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"labels": {"team": "ml"}},
    "spec": {"backoffLimit": 2, "template": {"spec": {
        "restartPolicy": "Never",
        "containers": [{
            "name": "train", "image": "registry.local/train:{params.tag}",
            "args": ["--model", "{params.model}", "--trigger", "{trigger_id}"],
            "env": [{"name": "TRIGGERD_RULE", "value": "spoofed"}, {"name": "X", "value": "1"}],
        }]}}}}


def ctx(trigger_id: str = "r.1", **params: Any) -> TriggerContext:
    return TriggerContext(
        trigger_id=trigger_id, rule="r", group="", fired_at=datetime(2026, 1, 2, tzinfo=UTC),
        reason="manual", manual=True, params={"tag": "1.5", "model": "churn", **params},
        events=[{"id": "e1", "subject": "/data/$(rm -rf /).parquet", "payload": {"n": 1}}])


def backend(kube: KubeApi, tmp_path: Path, **options: Any) -> KubernetesBackend:
    opts = {"type": "kubernetes", "manifest": MANIFEST,
            "kubeconfig": str(kube.kubeconfig(tmp_path / "kubeconfig")), **options}
    return KubernetesBackend("k8s", KubernetesOptions.model_validate(opts))


async def test_creates_a_named_labelled_job_with_the_context_as_data(kube: KubeApi,
                                                                      tmp_path: Path) -> None:
    hostile = "churn --admin"
    handle = FakeHandle()
    result = await backend(kube, tmp_path).dispatch(ctx(model=hostile), handle)
    (job,) = kube.creates
    name = job["metadata"]["name"]
    assert name == job_name("r", "r.1") and DNS1123_LABEL.match(name)
    assert job["metadata"]["namespace"] == "ml"  # the kubeconfig context's namespace
    assert result.external_id == handle.external_ids[0] == f"ml/{name}"
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        assert meta["annotations"] == {"triggerd.io/rule": "r", "triggerd.io/trigger-id": "r.1"}
        assert meta["labels"]["triggerd.io/trigger"] == "r.1"
    assert job["metadata"]["labels"]["team"] == "ml"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.local/train:1.5"
    assert container["args"] == ["--model", hostile, "--trigger", "r.1"]  # one arg, as data
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TRIGGERD_RULE"] == "r" and env["X"] == "1" and env["TRIGGERD_TRIGGER_ID"] == "r.1"
    assert json.loads(env["TRIGGERD_CONTEXT"])["events"] == ctx().events
    assert MANIFEST["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == "spoofed"


async def test_already_exists_for_the_same_trigger_reattaches_and_waits(
        kube: KubeApi, tmp_path: Path) -> None:
    """A restart after the create: the retry's POST answers 409, the attempt follows the
    existing Job to completion; one Job in all."""
    await backend(kube, tmp_path).dispatch(ctx(), FakeHandle())
    kube.complete_after = 2
    result = await backend(kube, tmp_path, wait=True, poll="20ms").dispatch(ctx(), FakeHandle())
    assert len(kube.creates) == 1
    assert result.detail is not None and "already existed (reattached); complete" in result.detail
    assert ("POST", "/apis/batch/v1/namespaces/ml/jobs") in kube.requests


async def test_a_job_of_that_name_from_elsewhere_is_not_taken_over(kube: KubeApi,
                                                                   tmp_path: Path) -> None:
    await backend(kube, tmp_path).dispatch(ctx(), FakeHandle())
    stranger = kube.jobs[("ml", job_name("r", "r.1"))]
    stranger["metadata"]["annotations"]["triggerd.io/trigger-id"] = "someone-else"
    with pytest.raises(PermanentDispatchError, match=r"was not created for trigger r\.1"):
        await backend(kube, tmp_path).dispatch(ctx(), FakeHandle())


async def test_wait_follows_the_job_to_complete(kube: KubeApi, tmp_path: Path,
                                                run_job: RunJob) -> None:
    kube.complete_after = 3
    job = await run_job(backend(kube, tmp_path, wait=True, poll="20ms"),
                        params={"tag": "2", "model": "m"})
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    assert job.external_id == f"ml/{job_name('r', 'r.1')}"
    assert job.detail is not None and "complete (succeeded 1, failed 0)" in job.detail


async def test_a_failed_job_fails_without_retry(kube: KubeApi, tmp_path: Path,
                                                run_job: RunJob) -> None:
    b = backend(kube, tmp_path, wait=True, poll="20ms", namespace="batch")

    async def fail_it() -> None:
        while not kube.creates:
            await asyncio.sleep(0.01)
        kube.finish(kube.creates[0]["metadata"]["name"], "Failed", namespace="batch")

    task = asyncio.create_task(fail_it())
    job = await run_job(b, retry={"attempts": 3, "backoff": "10ms"},
                        params={"tag": "2", "model": "m"})
    await task
    assert (job.status, job.attempts) == (JobStatus.FAILED, 1)
    assert job.detail is not None and "BackoffLimitExceeded" in job.detail
    assert len(kube.creates) == 1


async def test_api_errors_map_to_transient_and_permanent(kube: KubeApi, tmp_path: Path
                                                         ) -> None:
    b = backend(kube, tmp_path)
    kube.fail_next = [503]
    with pytest.raises(TransientDispatchError, match="HTTP 503: injected failure"):
        await b.dispatch(ctx(), FakeHandle())
    kube.token = "rotated"  # the kubeconfig's token is refused now
    with pytest.raises(PermanentDispatchError, match="HTTP 401: Unauthorized"):
        await b.dispatch(ctx(), FakeHandle())
    assert kube.creates == []


async def test_an_unreachable_api_server_is_transient(kube: KubeApi, tmp_path: Path) -> None:
    b = backend(kube, tmp_path, request_timeout="2s")
    kube.close()
    with pytest.raises(TransientDispatchError, match="creating Job"):
        await b.dispatch(ctx(), FakeHandle())


async def test_manifest_from_a_file(kube: KubeApi, tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(MANIFEST))
    b = backend(kube, tmp_path, manifest=None, manifest_file=str(path))
    await b.dispatch(ctx(), FakeHandle())
    assert kube.creates[0]["spec"]["backoffLimit"] == 2
    with pytest.raises(ConfigError, match="manifest_file"):
        backend(kube, tmp_path, manifest=None, manifest_file=str(tmp_path / "missing.yaml"))


def test_an_alias_bomb_in_a_manifest_file_is_refused(kube: KubeApi, tmp_path: Path) -> None:
    """The manifest file is YAML too: it gets the config's limits, not PyYAML's none."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")  # 10**9 nodes once expanded
    with pytest.raises(ConfigError, match="alias"):
        backend(kube, tmp_path, manifest=None, manifest_file=str(path))


def _with(path: str, value: Any) -> dict[str, Any]:
    m = copy.deepcopy(MANIFEST)
    node = m
    *parents, last = path.split(".")
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[last] = value  # type: ignore[index]
    return m


@pytest.mark.parametrize(("manifest", "message"), [
    (_with("metadata.generateName", "x-"), "must not set name or generateName"),
    (_with("metadata.name", "fixed"), "must not set name or generateName"),
    (_with("kind", "Deployment"), "must be a Job"),
    (_with("spec.template.spec.containers", []), "containers"),
    (_with("spec.template.spec.containers.0.image", "img:{events.0.subject}"),
     r"field \{events.0.subject\} is not allowed"),
    (_with("spec.template.spec.containers.0.image", "img:{oops"), "unclosed"),
])
def test_bad_manifests_are_config_errors(manifest: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        KubernetesOptions.model_validate({"type": "kubernetes", "manifest": manifest})


ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=200)


@given(rule=ids, trigger=ids)
def test_job_names_are_valid_dns_labels_and_deterministic(rule: str, trigger: str) -> None:
    name = job_name(rule, trigger)
    assert len(name) <= 63 and DNS1123_LABEL.match(name), name
    assert job_name(rule, trigger) == name
    value = label_value(trigger)
    assert len(value) <= 63 and re.match(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
                                         value), value


@given(rule=ids, a=ids, b=ids)
def test_distinct_triggers_get_distinct_job_names(rule: str, a: str, b: str) -> None:
    if a != b:
        assert job_name(rule, a) != job_name(rule, b)
        assert job_name(rule, "x" * 80 + a) != job_name(rule, "x" * 80 + b)  # cut stems
        assert job_name(rule, a.upper()) != job_name(rule, a.lower()) or a.upper() == a.lower()


def test_without_the_kubernetes_extra_the_type_is_a_config_error_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from triggerd import registry

    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "triggerd.backends.kubernetes")
    with pytest.raises(ConfigError, match=r"not installed \(kubernetes\).*extra"):
        registry.backend_class("kubernetes")
