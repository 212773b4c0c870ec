"""Sources under supervision: each runs in its own task, restarted with backoff when it fails.

`Supervisor.start` runs a built source; `stop` cancels sources and waits for them (what they
emitted is stored); a source's `SourceContext` is how it reaches the daemon (emit into the
engine, checkpoints, health, reported figures, flushed to the store by housekeeping).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from triggerd.errors import StoreError
from triggerd.interfaces import Source, StoreWork
from triggerd.model import Event

if TYPE_CHECKING:
    from triggerd.runtime.daemon import Daemon

log = logging.getLogger("triggerd.daemon")


class SourceContext:
    """What a running source is given (`triggerd.interfaces.SourceContext`): `emit` into the
    engine, its checkpoint, its health and the figures it reports."""

    def __init__(self, daemon: Daemon, name: str, source_type: str) -> None:
        self.daemon = daemon
        self.name = name
        self.type = source_type
        self.clock = daemon.clock
        self.details: dict[str, Any] | None = None
        self._written: dict[str, Any] | None = None
        self.healthy = True  # as last reported (for /readyz and metrics)
        self.error: str | None = None
        daemon.metrics.source_health(name, source_type, True)

    async def emit(self, events: Sequence[Event], also: StoreWork | None = None) -> None:
        if events:
            result = await self.daemon.engine.submit(self.name, events, also)
            self.daemon.metrics.ingested(self.name, len(result.new), result.duplicates)

    async def load_checkpoint(self) -> dict[str, Any] | None:
        return await self.daemon.call(lambda: self.daemon.store.load_checkpoint(self.name))

    async def save_checkpoint(self, data: dict[str, Any]) -> None:
        now = self.clock.now()
        await self.daemon.call(
            lambda: self.daemon.store.save_checkpoint(self.name, self.type, data, now))

    def set_health(self, healthy: bool, error: str | None = None) -> None:
        self.healthy, self.error = healthy, None if healthy else error
        self.daemon.metrics.source_health(self.name, self.type, healthy)
        now = self.clock.now()
        self.daemon.spawn(self.daemon.call(lambda: self.daemon.store.set_source_health(
            self.name, self.type, healthy, error, now)), f"health:{self.name}")

    def report(self, details: dict[str, Any]) -> None:
        self.details = dict(details)  # written by the daemon's housekeeping, ~once a second

    async def flush(self) -> None:
        """Write the latest reported details, if they changed since the last write."""
        if self.details is not None and self.details != self._written:
            details, now = self.details, self.clock.now()
            await self.daemon.call(lambda: self.daemon.store.set_source_details(
                self.name, self.type, details, now))
            self._written = details


class Supervisor:
    """The running sources of one daemon, by name."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.contexts: dict[str, SourceContext] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}  # supervisor task per source

    def start(self, name: str, source: Source) -> None:
        self.tasks[name] = asyncio.create_task(self._supervise(name, source),
                                               name=f"source:{name}")

    def forget(self, name: str) -> SourceContext | None:
        return self.contexts.pop(name, None)

    async def stop(self, names: Sequence[str]) -> None:
        """Cancel these sources and wait for them (what they emitted is stored)."""
        tasks = [self.tasks.pop(n) for n in names if n in self.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self, name: str, source: Source) -> None:
        ctx = SourceContext(self.daemon, name, self.daemon.config.source_type(name))
        self.contexts[name] = ctx
        restarts = Restarts()
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await source.run(ctx)
                delay = restarts.after(loop.time() - started)
                log.warning("source %s stopped by itself; restarting in %.0fs", name, delay,
                            extra={"source": name})
            except asyncio.CancelledError:
                raise
            except StoreError as exc:  # an outage, not a bug: no traceback
                delay = restarts.after(loop.time() - started)
                log.error("source %s failed: store unavailable (%s); restarting in %.0fs",
                          name, exc, delay, extra={"source": name})
                ctx.set_health(False, f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                delay = restarts.after(loop.time() - started)
                log.exception("source %s failed; restarting in %.0fs", name, delay,
                              extra={"source": name})
                ctx.set_health(False, f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(delay)


class Restarts:
    """The wait before a stopped or failed source runs again: 1 s, doubling up to 60 s, and
    1 s again after a run that lasted `STABLE` seconds (a source that worked for a while is
    not kept down for the failures before it: after a few store outages it would otherwise
    sit out every later blip for a minute)."""

    STABLE = 30.0
    FIRST, MOST = 1.0, 60.0

    def __init__(self) -> None:
        self._next = self.FIRST

    def after(self, ran: float) -> float:
        """The delay after a run that lasted `ran` seconds."""
        if ran >= self.STABLE:
            self._next = self.FIRST
        delay = self._next
        self._next = min(delay * 2, self.MOST)
        return delay
