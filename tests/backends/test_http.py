"""The `http` backend against a scripted receiver on loopback (tests/webhook_server.py).

Single attempts call `dispatch` directly; retry scenarios run through the real dispatcher and
store (`run_job`), so what is checked is what a user sees in `triggerd jobs`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
from datetime import UTC, datetime
from typing import Any

import pytest
from backend_rig import FakeHandle, RunJob
from pydantic import ValidationError
from webhook_server import Webhook

from triggerd.backends.http import HttpBackend, HttpOptions, signature
from triggerd.errors import ConfigError, PermanentDispatchError, TransientDispatchError
from triggerd.model import JobStatus, TriggerContext

SECRET = "It's a Secret to Everybody"


def ctx(**params: Any) -> TriggerContext:
    return TriggerContext(
        trigger_id="r.1", rule="r", group="", fired_at=datetime(2026, 1, 2, tzinfo=UTC),
        reason="manual", manual=True, params=params,
        events=[{"id": "e1", "subject": "/data/a.parquet", "payload": {"size": 3}}])


def backend(url: str, **options: Any) -> HttpBackend:
    return HttpBackend("hook", HttpOptions.model_validate({"type": "http", "url": url,
                                                           **options}))


async def test_posts_the_trigger_context_as_json_with_its_idempotency_key(hook: Webhook
                                                                         ) -> None:
    handle = FakeHandle()
    result = await backend(hook.url).dispatch(ctx(model="churn"), handle)
    (req,) = hook.received
    assert req.json() == json.loads(json.dumps(ctx(model="churn").to_dict()))
    assert req.headers["Idempotency-Key"] == "r.1"
    assert req.headers["Content-Type"] == "application/json"
    assert "X-Triggerd-Signature" not in req.headers
    assert (result.exit_code, result.external_id) == (201, "run-1")
    assert result.detail is not None and result.detail.startswith("HTTP 201 Created")
    assert handle.external_ids == ["run-1"]


async def test_body_template_renders_each_leaf_as_data_never_as_json_text(hook: Webhook
                                                                         ) -> None:
    hostile = '", "admin": true, "x": "'
    body = {"model": "{params.model}", "files": "{events}", "note": "trigger {trigger_id}",
            "epochs": "{params.epochs}", "fixed": [1, {"deep": "{rule}"}]}
    await backend(hook.url, body=body).dispatch(ctx(model=hostile, epochs=3), FakeHandle())
    assert hook.received[0].json() == {
        "model": hostile, "files": ctx().events, "note": "trigger r.1", "epochs": 3,
        "fixed": [1, {"deep": "r"}]}


async def test_a_missing_body_field_fails_the_job_permanently(hook: Webhook) -> None:
    with pytest.raises(PermanentDispatchError, match=r"no value for params\.model"):
        await backend(hook.url, body={"m": "{params.model}"}).dispatch(ctx(), FakeHandle())
    assert hook.received == []


def test_signature_matches_the_known_vector() -> None:
    # the example of GitHub's webhook documentation ("Validating webhook deliveries")
    assert signature(SECRET.encode(), b"Hello, World!") == \
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


async def test_signature_header_verifies_against_the_received_body(
        hook: Webhook, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.setenv("CI_TOKEN", "tok-123")
    caplog.set_level(logging.DEBUG)
    b = backend(hook.url, secret_env="HOOK_SECRET",
                headers={"Authorization": {"env": "CI_TOKEN", "prefix": "Bearer "},
                         "X-Team": "ml"})
    result = await b.dispatch(ctx(model="churn"), FakeHandle())
    (req,) = hook.received
    expected = hmac.new(SECRET.encode(), req.body, hashlib.sha256).hexdigest()
    assert req.headers["X-Triggerd-Signature"] == f"sha256={expected}"
    assert req.headers["Authorization"] == "Bearer tok-123"
    assert req.headers["X-Team"] == "ml"
    for text in (caplog.text, result.detail or "", repr(b.options)):
        assert "tok-123" not in text and SECRET not in text


def test_secrets_come_from_the_environment_or_a_file_it_names(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    monkeypatch.delenv("HOOK_SECRET_FILE", raising=False)
    with pytest.raises(ConfigError, match="environment variable HOOK_SECRET is not set"):
        backend("http://127.0.0.1:1/", secret_env="HOOK_SECRET")
    with pytest.raises(ConfigError, match=r"headers\.Authorization: environment variable T"):
        backend("http://127.0.0.1:1/", headers={"Authorization": {"env": "T"}})
    with pytest.raises(ConfigError, match=r"ca_file: cannot load .*missing\.pem"):
        backend("https://127.0.0.1:1/", ca_file=str(tmp_path / "missing.pem"))
    (tmp_path / "secret").write_text("from-file\n")
    monkeypatch.setenv("HOOK_SECRET_FILE", str(tmp_path / "secret"))
    b = backend("http://127.0.0.1:1/", secret_env="HOOK_SECRET")
    _body, headers = b.request(ctx(), 1)
    assert headers["X-Triggerd-Signature"] == signature(b"from-file", _body)


@pytest.mark.parametrize(("options", "message"), [
    ({"url": "ftp://x/"}, "absolute http"),
    ({"url": "/relative"}, "absolute http"),
    ({"headers": {"Idempotency-Key": "x"}}, "set by triggerd"),
    ({"headers": {"X-A": "a\r\nInjected: 1"}}, "invalid name or value"),
    ({"body": {"m": "{params.model"}}, r"body\.m|unclosed"),
    ({"secret": "inline"}, "Extra inputs"),
])
def test_bad_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HttpOptions.model_validate({"type": "http", "url": "http://h/", **options})


async def test_500_three_times_then_201_is_one_side_effect_with_one_key(
        hook: Webhook, run_job: RunJob) -> None:
    hook.script = [500, 502, 503, 201]
    job = await run_job(backend(hook.url), retry={"attempts": 5, "backoff": "10ms"})
    assert (job.status, job.attempts, job.exit_code, job.external_id) == \
        (JobStatus.SUCCEEDED, 4, 201, "run-4")
    assert hook.keys() == ["r.1"] * 4 and hook.effects == ["r.1"]


async def test_429_waits_for_retry_after(hook: Webhook, run_job: RunJob) -> None:
    hook.script = [(429, {"Retry-After": "1"}), 201]
    job = await run_job(backend(hook.url), retry={"attempts": 2, "backoff": "10ms"})
    assert job.status == JobStatus.SUCCEEDED
    first, second = hook.received
    assert second.at - first.at >= 0.95  # the server's hint, not the 10ms backoff


async def test_a_hanging_server_times_out_and_the_retry_succeeds(hook: Webhook,
                                                                 run_job: RunJob) -> None:
    hook.script = ["hang", 201]
    b = backend(hook.url, read_timeout="200ms")
    job = await run_job(b, retry={"attempts": 2, "backoff": "10ms"})
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 2)
    with pytest.raises(TransientDispatchError, match=r"no response data for 200ms"):
        hook.script = ["hang"]
        await b.dispatch(ctx(), FakeHandle())
    with pytest.raises(TransientDispatchError, match=r"request timed out after 300ms"):
        hook.script = ["hang"]
        await backend(hook.url, timeout="300ms").dispatch(ctx(), FakeHandle())


@pytest.mark.parametrize("failure", ["reset", "act-then-drop"])
async def test_a_dropped_connection_is_retried_with_the_same_key_and_acts_once(
        hook: Webhook, run_job: RunJob, failure: str) -> None:
    hook.script = [failure, 201]
    job = await run_job(backend(hook.url), retry={"attempts": 3, "backoff": "10ms"})
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 2)
    assert hook.keys() == ["r.1", "r.1"] and hook.effects == ["r.1"]


async def test_201_then_connection_dropped_is_a_success_without_retry(
        hook: Webhook, run_job: RunJob) -> None:
    hook.script = ["201-then-drop"]
    job = await run_job(backend(hook.url), retry={"attempts": 3, "backoff": "10ms"})
    assert (job.status, job.attempts, job.exit_code) == (JobStatus.SUCCEEDED, 1, 201)
    assert job.detail is not None and "response cut short" in job.detail
    assert hook.effects == ["r.1"] and len(hook.received) == 1


async def test_a_4xx_fails_at_once_with_the_first_bytes_of_the_response(
        hook: Webhook, run_job: RunJob) -> None:
    hook.script = [422]
    job = await run_job(backend(hook.url, response_bytes=6),
                        retry={"attempts": 3, "backoff": "10ms"})
    assert (job.status, job.attempts, job.exit_code) == (JobStatus.FAILED, 1, 422)
    assert job.detail == 'HTTP 422 Unprocessable Entity: {"id": [...]'
    assert len(hook.received) == 1


async def test_redirects_are_not_followed(hook: Webhook) -> None:
    hook.script = [(307, {"Location": "http://127.0.0.1:9/elsewhere"})]
    with pytest.raises(PermanentDispatchError, match=r"redirect to http://127\.0\.0\.1:9/elsewhere "
                                                     r"not followed") as err:
        await backend(hook.url).dispatch(ctx(), FakeHandle())
    assert err.value.exit_code == 307 and len(hook.received) == 1


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(TransientDispatchError, match=r"cannot connect to 127\.0\.0\.1"):
            await backend(f"http://127.0.0.1:{port}/hook").dispatch(ctx(), FakeHandle())
