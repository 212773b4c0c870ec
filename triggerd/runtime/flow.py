"""The path from an event to its job, wired in one place.

    on the store thread, in one trip:
        engine unit (store the batch, decide, write triggers) -> dispatcher.claim_fired
        (claim the fired triggers' jobs; a `Launcher` backend begins its attempt)
    then on the event loop:
        engine (arms its timers, logs) -> Flow.handed_on -> dispatcher.follow (start the
        claimed attempts, queue the rest) and the trigger metrics
    and back, when a job ends:
        dispatcher -> Flow.job_finished -> engine.evaluate_rule (its rule may fire again)

The engine and the dispatcher do not know each other: each is given the functions of this
module (`then`, `on_round`, `on_finished`), and what passes between them is data (a `Round`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from triggerd.config.loader import Config
from triggerd.dispatcher import Dispatcher
from triggerd.engine.engine import Engine
from triggerd.engine.rounds import Round
from triggerd.interfaces import Backend, Clock
from triggerd.model import Job
from triggerd.ops.metrics import Metrics
from triggerd.store.sql import Store

log = logging.getLogger("triggerd.daemon")
T = TypeVar("T")
Call = Callable[[Callable[[], T]], Awaitable[T]]
Spawn = Callable[[Coroutine[Any, Any, Any], str], None]


class Flow:
    """Builds the engine and the dispatcher of one daemon and connects them."""

    def __init__(self, config: Config, store: Store, backends: Mapping[str, Backend],
                 clock: Clock, call: Call[Any], owner: str, *, spawn: Spawn | None = None,
                 metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self._spawn = spawn or _spawn
        self.dispatcher = Dispatcher(config, store, backends, clock, call, owner,
                                     on_finished=self.job_finished, metrics=metrics)
        self.engine = Engine(config, store, clock, call, on_round=self.handed_on,
                             then=self.claim_fired)

    def claim_fired(self, done: Round) -> Round:
        """Store thread, in the engine's trip: the dispatcher claims the fired jobs."""
        if not done.fired:
            return done
        return replace(done, claims=self.dispatcher.claim_fired(done.fired))

    def handed_on(self, done: Round) -> None:
        """Event loop, after the trip: the dispatcher follows the claims; triggers counted."""
        self.dispatcher.follow(done.fired, done.claims)
        if self.metrics is not None:
            for trig in done.fired:
                self.metrics.triggered(trig.rule, trig.kind or (
                    "manual" if trig.manual else "unknown"))

    def job_finished(self, job: Job) -> None:
        """A job ended: decide for its rule again (a slot is free; `on_busy` may fire)."""
        self._spawn(self.engine.evaluate_rule(job.rule), f"after:{job.id}")


_tasks: set[asyncio.Task[Any]] = set()


def _spawn(coro: Coroutine[Any, Any, Any], name: str) -> None:
    """Without a daemon's `spawn` (tests, benches): a task kept until it ends, its failure
    logged."""
    task = asyncio.ensure_future(coro)
    task.set_name(name)
    _tasks.add(task)

    def done(task: asyncio.Task[Any]) -> None:
        _tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s failed: %s", task.get_name(), task.exception())
    task.add_done_callback(done)
