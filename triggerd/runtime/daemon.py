"""The daemon: the composition root. Builds everything from the config and runs it.

The runtime package holds the rest: `build` (plugins from the config), `flow` (the engine and
the dispatcher, connected: the path from an event to its job), `supervisor` (sources in their
tasks), `housekeeping` (heartbeat, CLI requests, recovery, retention) and `reload`
(SIGHUP: each component is `reconfigure`d).

Start-up order: open the store (migrate, lock), register with a heartbeat, build backends and
the dispatcher, re-queue jobs left unfinished by a previous run (a trigger written before a
crash is dispatched now, once), decide for every rule, then start the sources under a
supervisor that restarts a failing source with backoff. SIGTERM/SIGINT stop the sources
first, let the store thread finish what it holds, and exit 0. SIGHUP reloads the config
(`triggerd.runtime.reload`). Operations hooks (`triggerd.ops`): metrics, the TRIGGERD_HTTP
endpoints, and systemd notification (READY, WATCHDOG, RELOADING, STOPPING).

All SQL runs on one dedicated thread (`call`), so the event loop never blocks on the store
and this daemon never contends with itself for SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from triggerd.clock import SystemClock
from triggerd.config.loader import Config
from triggerd.dispatcher import Dispatcher
from triggerd.engine.engine import Engine
from triggerd.errors import StoreError
from triggerd.interfaces import Clock
from triggerd.ops import looplag, sdnotify
from triggerd.ops.endpoints import routes
from triggerd.ops.http import HttpServer
from triggerd.ops.metrics import Metrics
from triggerd.runtime.build import Services, build_backends, build_sources
from triggerd.runtime.flow import Flow
from triggerd.runtime.housekeeping import heartbeat, housekeeping, recover
from triggerd.runtime.reload import reload
from triggerd.runtime.supervisor import SourceContext, Supervisor
from triggerd.store.files import StoreFileTable
from triggerd.store.rejects import StoreRejectLog
from triggerd.store.sql import Store

log = logging.getLogger("triggerd.daemon")
T = TypeVar("T")


class Daemon:
    """One daemon: its store thread (`call`), its components, and its lifecycle (`run`)."""

    def __init__(self, config: Config, clock: Clock | None = None,
                 http: str | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.id = f"{uuid.uuid4().hex[:12]}"
        self.metrics = Metrics(self.id)  # ops: /metrics, /healthz, /readyz (TRIGGERD_HTTP)
        self.http = HttpServer(http, routes(self)) if http else None
        self.ready = False
        self.store = Store(config.store_url)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triggerd-store")
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.supervisor = Supervisor(self)
        self._reloading = asyncio.Lock()
        self._reload_at_ready = False  # a SIGHUP arrived during start-up
        self.engine: Engine
        self.dispatcher: Dispatcher

    async def call(self, fn: Callable[[], T]) -> T:
        """Run a store operation on the store thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def spawn(self, coro: Any, name: str) -> None:
        """Run a side task; its failure is logged, never left unobserved."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._side_task_done)

    def _side_task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s failed: %s", task.get_name(), task.exception())

    def stop(self) -> None:
        self.stopping.set()

    # -- what the ops endpoints read (triggerd.ops.endpoints.DaemonView) ----------------------
    def rule_names(self) -> list[str]:
        return list(self.config.rules)

    def source_health(self) -> dict[str, SourceContext]:
        return dict(self.supervisor.contexts)

    def now(self) -> Any:
        return self.clock.now()

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop: a hung loop stops the pings and systemd restarts us."""
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _reload_requested(self) -> None:
        """SIGHUP: re-read the config and rule files; see triggerd.runtime.reload. One that
        arrives during start-up is applied as soon as start-up is done (an operator or a
        deployment tool reloading right after a start must not lose the reload); one during
        shutdown is ignored."""
        if self.stopping.is_set():
            log.warning("SIGHUP during shutdown ignored")
            return
        if not self.ready:
            log.info("SIGHUP during start-up: reloading once started")
            self._reload_at_ready = True
            return
        self.spawn(self._reload(), "reload")

    async def _reload(self) -> None:
        async with self._reloading:  # one reload at a time, in the order asked
            if self.stopping.is_set():
                return
            sdnotify.notify("RELOADING=1")
            try:
                await reload(self)
            finally:
                sdnotify.notify(f"READY=1\nSTATUS=running: {len(self.config.rules)} rule(s)")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested)
        try:
            backends = build_backends(self.config)  # a missing secret stops us before anything
            if self.http is not None:
                try:
                    await self.http.start()
                except OSError as exc:
                    log.error("TRIGGERD_HTTP: cannot listen on %s:%d: %s", self.http.host,
                              self.http.port, os.strerror(exc.errno) if exc.errno else exc)
                    return 1
            await self.call(self.store.lock)
            await self.call(self.store.upgrade)
            await self.call(self.store.pin)
            await self.call(lambda: self.store.register_daemon(self.id, self.clock.now()))
            log.info("triggerd started: daemon %s, store %s, %d rule(s), %d source(s)",
                     self.id, self.store.safe_url, len(self.config.rules),
                     len(self.config.sources))
            flow = Flow(self.config, self.store, backends, self.clock, self.call, self.id,
                        spawn=self.spawn, metrics=self.metrics)
            self.engine, self.dispatcher = flow.engine, flow.dispatcher
            self.metrics.config_rules.set(len(self.config.rules))
            await recover(self, starting=True)
            workers = [
                asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
                asyncio.create_task(heartbeat(self), name="heartbeat"),
                asyncio.create_task(housekeeping(self), name="housekeeping"),
                asyncio.create_task(looplag.watch(self.metrics), name="loop-lag"),
            ]
            await self.engine.start()
            workers.append(asyncio.create_task(self.engine.run_timers(), name="timers"))
            for name, source in build_sources(self.config, self.services()).items():
                self.supervisor.start(name, source)
            self.ready = True
            sdnotify.notify(f"READY=1\nSTATUS=running: {len(self.config.rules)} rule(s)")
            if self._reload_at_ready:  # a SIGHUP came during start-up
                self.spawn(self._reload(), "reload")
            interval = sdnotify.watchdog_interval()
            if interval is not None:
                workers.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
            stop = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait([stop, *workers], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception() is not None:
                    log.error("internal task %s failed", task.get_name(),
                              exc_info=task.exception())
            log.info("triggerd stopping")
            self.dispatcher.stop_starting()  # no attempt starts that nobody would follow
            self.ready = False
            sdnotify.notify("STOPPING=1")
            async with self._reloading:  # a reload under way finishes first, then sees _stop
                log.debug("stopping: the sources")
                await self.supervisor.stop(list(self.supervisor.tasks))  # sources first
            log.debug("stopping: timers, housekeeping, heartbeat, dispatcher")
            for task in reversed(workers):  # the dispatcher last
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            stop.cancel()
            for ctx in self.supervisor.contexts.values():  # the last figures, for `status`
                with contextlib.suppress(StoreError):
                    await ctx.flush()
            if self._tasks:
                log.debug("stopping: %d side task(s)", len(self._tasks))
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.call(lambda: self.store.daemon_stopped(self.id, self.clock.now()))
            return 0 if not any(t is not stop and t.exception() for t in done) else 1
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self.http is not None:
                await self.http.close()
            log.debug("stopping: the store")
            await self.call(self.store.close)
            self._executor.shutdown(wait=True)

    def services(self, config: Config | None = None) -> Services:
        """The daemon services a source may ask for (`wants`; see interfaces.Source);
        `sources`: the options of every source of `config` (default the running one)."""
        config = config if config is not None else self.config
        return {"files": lambda: StoreFileTable(self.store, self.call),
                "sources": lambda: dict(config.sources),
                "rejects": lambda: StoreRejectLog(self.store, self.call)}


def run_daemon(config: Config, http: str | None = None) -> int:
    return asyncio.run(Daemon(config, http=http).run())
