"""Fixtures of the backend tests: one job through the real dispatcher and store.

`run_job(backend, retry=...)` fires a manual trigger of a one-rule config on a SQLite store,
lets the real `Dispatcher` run its attempts (retry policy, backoff, Retry-After) against the
backend, and returns the job once it is final, with its attempts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from backend_rig import RunJob

from triggerd.clock import SystemClock
from triggerd.config.loader import Config
from triggerd.config.schema import RuleSpec
from triggerd.interfaces import Backend
from triggerd.model import Job
from triggerd.runtime.flow import Flow
from triggerd.sources.cron import CronOptions
from triggerd.store import Store, queries


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


@pytest.fixture
async def run_job(tmp_path: Path) -> AsyncIterator[RunJob]:
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.upgrade()
    tasks: list[asyncio.Task[None]] = []

    async def run(backend: Backend, retry: dict[str, Any] | None = None,
                  params: dict[str, Any] | None = None, timeout: float = 30.0) -> Job:
        spec = RuleSpec.model_validate({"on": ["src"], "dispatch": {
            "backend": backend.name, "retry": retry or {}, "params": params or {}}})
        config = Config(path=tmp_path / "x.yaml", store_url=store.url, state_dir=tmp_path,
                        retention=timedelta(days=1),
                        sources={"src": CronOptions(type="cron", every="1h")},
                        backends={}, rules={"r": spec})
        clock = SystemClock()
        flow = Flow(config, store, {backend.name: backend}, clock, _call, "test")
        dispatcher, engine = flow.dispatcher, flow.engine
        tasks.append(asyncio.create_task(dispatcher.run()))
        (trig,) = await engine.fire("r", "test")
        async with asyncio.timeout(timeout):
            while True:
                job = queries.job(store, trig.id)
                if job is not None and job.status.final:
                    return job
                await asyncio.sleep(0.01)

    yield run
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    store.close()

