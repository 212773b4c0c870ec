"""The engine under unlucky timing: a commit whose answer was lost, a batch cancelled while the
store thread works on it as a reload comes in. Both run on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from test_engine import Harness, make_config

from triggerd.errors import StoreError
from triggerd.store import Store


async def test_a_batch_retried_after_a_lost_commit_is_decided(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first delivery was committed but the source heard an error (PostgreSQL's answer to
    COMMIT lost with the connection), so it sends the batch again: every event is a duplicate,
    and the rule must still fire for them now, not when some later event arrives."""
    h = Harness(store, {"r": {"on": ["landing"], "when": {"min_events": 2}}})
    await h.start()
    real = store.ingest
    lost = {"left": 1}

    def commit_then_fail(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if lost["left"]:
            lost["left"] -= 1
            raise StoreError("server closed the connection unexpectedly (simulated)")
        return result

    monkeypatch.setattr(store, "ingest", commit_then_fail)
    batch = [h.event(), h.event()]
    with pytest.raises(StoreError):
        await h.submit(*batch)
    assert h.fired == []
    await h.submit(*batch)  # the source's retry: both are duplicates now
    assert len(h.fired) == 1 and h.fired[0].events == 2


async def test_duplicates_of_consumed_events_fire_nothing(store: Store) -> None:
    h = Harness(store, {"r": {"on": ["landing"]}})
    await h.start()
    batch = [h.event()]
    await h.submit(*batch)
    assert len(h.fired) == 1
    await h.submit(*batch)  # a redelivery of an event a trigger already consumed
    assert len(h.fired) == 1


class Gate:
    """Holds a store method on the store thread until released: `entered` is set once the
    store thread is inside it. The engine's store calls go to a real thread (as in the
    daemon), so the loop runs on while the call is held."""

    def __init__(self, h: Harness, store: Store, method: str,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        real = getattr(store, method)

        def held(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            assert self.release.wait(10)
            return real(*args, **kwargs)

        async def on_a_thread(fn: Callable[[], Any]) -> Any:
            return await asyncio.to_thread(fn)

        h.engine.call = on_a_thread
        monkeypatch.setattr(store, method, held)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10)


async def test_a_reload_waits_for_a_cancelled_batch_still_on_the_store_thread(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source cancelled mid-submit (a restart of the source, the daemon stopping) cannot stop
    the store thread's work on its batch. A reload arriving meanwhile must not swap the rules
    under it: it waits until that work is done, then applies."""
    h = Harness(store, {"old": {"on": ["landing"]}})
    await h.start()
    gate = Gate(h, store, "ingest", monkeypatch)
    submit = asyncio.create_task(h.engine.submit("landing", [h.event()]))
    await gate.wait_entered()
    submit.cancel()
    new_config = make_config({"new": {"on": ["landing"]}})
    reload = asyncio.create_task(h.engine.reconfigure(new_config))
    for _ in range(20):  # let every ready task run: the reload must not get the lock
        await asyncio.sleep(0)
    assert "old" in h.engine.rules and not reload.done()
    gate.release.set()
    await reload
    assert "new" in h.engine.rules
    with pytest.raises(asyncio.CancelledError):
        await submit
    # the batch was matched and decided under the rules it started with, all of it
    assert [t.rule for t in h.fired] == ["old"]


async def test_a_decision_round_cancelled_on_the_store_thread_still_hands_on_its_trigger(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The timers' task is cancelled (the daemon stops) while a decision round runs on the
    store thread: the trigger it writes (and the job it may have claimed) must still reach the
    dispatcher, or a claimed job would be left `running` with nobody following it."""
    h = Harness(store, {"r": {"on": ["landing"], "when": {"min_events": 1, "debounce": "1m"}}})
    await h.start()
    await h.engine.submit("landing", [h.event()])
    assert h.fired == []  # waiting for the quiet minute
    h.clock.advance(timedelta(minutes=2))
    gate = Gate(h, store, "snapshot", monkeypatch)
    round_ = asyncio.create_task(h.engine.evaluate({("r", "")}))
    await gate.wait_entered()
    round_.cancel()
    gate.release.set()
    with pytest.raises(asyncio.CancelledError):
        await round_
    assert [t.rule for t in h.fired] == ["r"]
