"""Unit tests of the example plugin: no daemon, no store; pytest alone.

The source runs against a fake `SourceContext`, the backend is called as the dispatcher calls
it, with a fake `JobHandle`.
"""
# ruff: noqa: S101

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from triggerd_example.jsonl import JsonlBackend, JsonlOptions, sign
from triggerd_example.lines import LinesOptions, LinesSource

from triggerd.plugin import Clock as PluginClock
from triggerd.plugin import (
    Event,
    PermanentDispatchError,
    StoreWork,
    TriggerContext,
)


class Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeContext:
    """A `SourceContext` that keeps what the source emits, saves and reports."""

    def __init__(self, name: str, checkpoint: dict[str, Any] | None = None) -> None:
        self.name = name
        self.clock: PluginClock = Clock()
        self.events: list[Event] = []
        self.checkpoint = checkpoint
        self.health: list[tuple[bool, str | None]] = []
        self.details: dict[str, Any] = {}
        self.until, self.reached = 0, asyncio.Event()

    async def emit(self, events: Sequence[Event], also: StoreWork | None = None) -> None:
        self.events.extend(events)
        if len(self.events) >= self.until:
            self.reached.set()

    async def load_checkpoint(self) -> dict[str, Any] | None:
        return self.checkpoint

    async def save_checkpoint(self, data: dict[str, Any]) -> None:
        self.checkpoint = data

    def set_health(self, healthy: bool, error: str | None = None) -> None:
        self.health.append((healthy, error))

    def report(self, details: dict[str, Any]) -> None:
        self.details = details


class FakeJob:
    """A `JobHandle`: the dispatcher's side of one attempt."""

    def __init__(self, attempt: int = 1) -> None:
        self.job_id = "retrain-churn.1"
        self.attempt = attempt
        self.launched: Future[Any] | None = None
        self.external_ids: list[str] = []

    async def set_external_id(self, external_id: str) -> None:
        self.external_ids.append(external_id)


def trigger(trigger_id: str = "retrain-churn.1") -> TriggerContext:
    return TriggerContext(trigger_id=trigger_id, rule="retrain-churn", group="",
                          fired_at=datetime(2026, 3, 2, tzinfo=UTC), reason="1 new event",
                          manual=False, params={"model": "churn"}, events=[{"subject": "x"}])


async def follow(source: LinesSource, ctx: FakeContext, until: int) -> None:
    """Run the source until it emitted `until` events in all (at most 5 s), then stop it."""
    ctx.until, ctx.reached = until, asyncio.Event()  # an Event of this loop
    task = asyncio.create_task(source.run(ctx))
    try:
        await asyncio.wait_for(ctx.reached.wait(), timeout=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_backend_appends_one_line_per_trigger(tmp_path: Path) -> None:
    backend = JsonlBackend("ledger", JsonlOptions(type="jsonl", path="retrains.jsonl"), tmp_path)
    first = asyncio.run(backend.dispatch(trigger(), FakeJob()))
    again = asyncio.run(backend.dispatch(trigger(), FakeJob(attempt=2)))  # a retry
    other = asyncio.run(backend.dispatch(trigger("retrain-churn.2"), FakeJob()))
    lines = (tmp_path / "retrains.jsonl").read_text().splitlines()
    assert [json.loads(line)["trigger_id"] for line in lines] == ["retrain-churn.1",
                                                                    "retrain-churn.2"]
    assert (first.detail, again.detail) == ("appended", "already recorded")
    assert (first.external_id, again.external_id, other.external_id) == (
        "retrains.jsonl:1", "retrains.jsonl:1", "retrains.jsonl:2")


def test_the_backend_signs_with_the_key_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_KEY", "s3cret-key")
    options = JsonlOptions(type="jsonl", path="retrains.jsonl", hmac_key_env="LEDGER_KEY")
    asyncio.run(JsonlBackend("ledger", options, tmp_path).dispatch(trigger(), FakeJob()))
    text = (tmp_path / "retrains.jsonl").read_text()
    record = json.loads(text)
    assert record["signature"] == sign(b"s3cret-key", record)
    assert "s3cret-key" not in text


def test_an_unwritable_path_fails_the_job_without_retry(tmp_path: Path) -> None:
    options = JsonlOptions(type="jsonl", path="no/such/dir/retrains.jsonl")
    with pytest.raises(PermanentDispatchError, match="cannot write"):
        asyncio.run(JsonlBackend("ledger", options, tmp_path).dispatch(trigger(), FakeJob()))


def test_the_source_emits_each_complete_line_once(tmp_path: Path) -> None:
    log = tmp_path / "published.log"
    log.write_bytes(b"churn v7\n\nfraud v2\nchurn v")  # a blank line, a line being written
    options = LinesOptions(type="lines", path=str(log), poll="10ms")
    ctx = FakeContext("published")
    asyncio.run(follow(LinesSource("published", options), ctx, until=2))
    assert [(e.subject, e.fingerprint) for e in ctx.events] == [("churn v7", "0:0"),
                                                                ("fraud v2", "0:10")]
    assert ctx.checkpoint is not None and ctx.checkpoint["offset"] == 19
    assert ctx.health == [(True, None)]

    with log.open("ab") as fh:
        fh.write(b"8\n")  # the line is complete now
    restarted = FakeContext("published", checkpoint=ctx.checkpoint)  # a restart
    asyncio.run(follow(LinesSource("published", options), restarted, until=1))
    assert [(e.subject, e.fingerprint) for e in restarted.events] == [("churn v8", "0:19")]


def test_a_truncated_file_starts_a_new_generation(tmp_path: Path) -> None:
    log = tmp_path / "published.log"
    log.write_text("churn v7\nfraud v2\n")
    options = LinesOptions(type="lines", path=str(log), poll="10ms")
    ctx = FakeContext("published")
    asyncio.run(follow(LinesSource("published", options), ctx, until=2))
    log.write_text("churn v9\n")  # rewritten from its start: not a duplicate of "0:0"
    asyncio.run(follow(LinesSource("published", options), ctx, until=3))
    assert [e.fingerprint for e in ctx.events] == ["0:0", "0:9", "1:0"]


def test_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="poll must be at least 10ms"):
        LinesOptions.model_validate({"type": "lines", "path": "x.log", "poll": "0s"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        JsonlOptions.model_validate({"type": "jsonl", "path": "x", "paht": "y"})
