"""On PostgreSQL a replica takes over the running jobs of a daemon whose heartbeat is 3 beats
old: a long call on the store thread must not stop the beat (it has its own thread)."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from tests_pg import truncate

import triggerd.runtime.housekeeping as daemon_module
from triggerd.config.loader import load_config
from triggerd.runtime import Daemon
from triggerd.store import Store
from triggerd.store import tables as t


def beats(url: str, daemon_id: str) -> datetime | None:
    store = Store(url)
    try:
        with store.read() as c:
            value: datetime | None = c.execute(select(t.daemons.c.heartbeat_at).where(
                t.daemons.c.id == daemon_id)).scalar()
        return value
    finally:
        store.close()


@pytest.mark.postgres
async def test_a_busy_store_thread_does_not_stop_the_heartbeat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _pg_migrated: str) -> None:
    truncate(_pg_migrated)
    monkeypatch.setattr(daemon_module, "HEARTBEAT", timedelta(seconds=0.2))
    config = tmp_path / "triggerd.yaml"
    config.write_text(f"state_dir: state\nstore: {_pg_migrated}\n"
                      "sources: {tick: {type: cron, every: 1h}}\n"
                      "backends: {b: {type: command, argv: ['true']}}\n"
                      "rules: {r: {on: [tick], dispatch: {backend: b}}}\n")
    daemon = Daemon(load_config(config))
    entered, release = threading.Event(), threading.Event()
    run = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(30):
            while not daemon.ready or await asyncio.to_thread(beats, _pg_migrated,
                                                              daemon.id) is None:
                await asyncio.sleep(0.05)

        def long_call() -> None:  # a prune or a scrape holding the store thread
            entered.set()
            release.wait(20)
        blocked = asyncio.ensure_future(daemon.call(long_call))
        assert await asyncio.to_thread(entered.wait, 10)
        first = await asyncio.to_thread(beats, _pg_migrated, daemon.id)
        assert first is not None
        later = first
        async with asyncio.timeout(10):  # three beats' worth while the store thread is held
            while later is None or later - first < timedelta(seconds=0.6):
                await asyncio.sleep(0.05)
                later = await asyncio.to_thread(beats, _pg_migrated, daemon.id)
        assert not blocked.done()  # still held: the beats came from elsewhere
        release.set()
        await blocked
    finally:
        release.set()
        daemon.stop()
        assert await asyncio.wait_for(run, 20) == 0
