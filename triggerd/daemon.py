"""The daemon: the composition root. Builds everything from the config and runs it.

Start-up order: open the store (migrate, lock), register with a heartbeat, build backends and
the dispatcher, re-queue jobs left unfinished by a previous run (a trigger written before a
crash is dispatched now, once), decide for every rule, then start the sources under a
supervisor that restarts a failing source with backoff. SIGTERM/SIGINT stop the sources
first, let the store thread finish what it holds, and exit 0. SIGHUP reloads the config
(`triggerd.ops.reload`). Operations hooks (`triggerd.ops`): metrics, the TRIGGERD_HTTP
endpoints, and systemd notification (READY, WATCHDOG, RELOADING, STOPPING).

All SQL runs on one dedicated thread (`call`), so the event loop never blocks on the store
and this daemon never contends with itself for SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

from triggerd import registry
from triggerd.aio import wait_event
from triggerd.clock import SystemClock
from triggerd.config.loader import Config
from triggerd.dispatcher import Dispatcher
from triggerd.engine.engine import Engine
from triggerd.errors import StoreError
from triggerd.interfaces import Backend, Clock, Source, StoreWork
from triggerd.model import Event, Job, Trigger
from triggerd.ops import looplag, reload, sdnotify
from triggerd.ops.endpoints import routes
from triggerd.ops.http import HttpServer
from triggerd.ops.metrics import Metrics
from triggerd.store.files import StoreFileTable
from triggerd.store.rejects import StoreRejectLog
from triggerd.store.sql import Store

log = logging.getLogger("triggerd.daemon")
T = TypeVar("T")

HEARTBEAT = timedelta(seconds=5)
REQUEST_POLL = 0.25  # seconds: `triggerd fire` is picked up well within a second
PRUNE_EVERY = timedelta(hours=1)
RECOVER_EVERY = timedelta(seconds=10)  # look for work orphaned by a dead replica
DETAILS_EVERY = timedelta(seconds=1)  # how often sources' reported figures are written


class _SourceContext:
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


class Daemon:
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
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._contexts: dict[str, _SourceContext] = {}
        self._sources: dict[str, asyncio.Task[None]] = {}  # supervisor task per source
        self._reloading = asyncio.Lock()
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
        self._stop.set()

    # -- what the ops endpoints read (triggerd.ops.endpoints.DaemonView) ----------------------
    def rule_names(self) -> list[str]:
        return list(self.config.rules)

    def source_health(self) -> dict[str, _SourceContext]:
        return dict(self._contexts)

    def now(self) -> Any:
        return self.clock.now()

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop: a hung loop stops the pings and systemd restarts us."""
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _reload_requested(self) -> None:
        """SIGHUP: re-read the config and rule files; see triggerd.ops.reload."""
        if not self.ready:
            log.warning("SIGHUP during start-up or shutdown ignored; send it again once "
                        "triggerd has started")
            return
        self.spawn(self._reload(), "reload")

    async def _reload(self) -> None:
        async with self._reloading:  # one reload at a time, in the order asked
            if self._stop.is_set():
                return
            sdnotify.notify("RELOADING=1")
            try:
                await reload.reload(self)
            finally:
                sdnotify.notify(f"READY=1\nSTATUS=running: {len(self.config.rules)} rule(s)")

    def _build_backends(self) -> dict[str, Backend]:
        return {name: self.build_backend(name, options)
                for name, options in self.config.backends.items()}

    def build_backend(self, name: str, options: Any) -> Backend:
        cls = registry.backend_class(str(getattr(options, "type", "")))
        backend: Backend = cls(name, options, self.config.state_dir)
        return backend

    def _build_sources(self) -> dict[str, Source]:
        return {name: self.build_source(name, options)
                for name, options in self.config.sources.items()}

    def build_source(self, name: str, options: Any) -> Source:
        cls = registry.source_class(str(getattr(options, "type", "")))
        # a source names the daemon services it wants (`wants = ("files",)`) and gets
        # them as keyword arguments; see interfaces.Source
        services: dict[str, Callable[[], object]] = {
            "files": lambda: StoreFileTable(self.store, self.call),
            "rejects": lambda: StoreRejectLog(self.store, self.call)}
        extra = {want: services[want]() for want in getattr(cls, "wants", ())}
        source: Source = cls(name, options, **extra)
        return source

    def start_source(self, name: str, source: Source) -> None:
        self._sources[name] = asyncio.create_task(self._supervise(name, source),
                                                  name=f"source:{name}")

    def forget_source(self, name: str) -> _SourceContext | None:
        return self._contexts.pop(name, None)

    async def stop_sources(self, names: Sequence[str]) -> None:
        """Cancel these sources and wait for them (what they emitted is stored)."""
        tasks = [self._sources.pop(n) for n in names if n in self._sources]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested)
        try:
            backends = self._build_backends()  # a missing secret stops us before anything
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
            self.dispatcher = Dispatcher(self.config, self.store, backends,
                                         self.clock, self.call, self.id, self._job_finished)
            self.engine = Engine(self.config, self.store, self.clock, self.call,
                                 self._triggered, claimer=self.dispatcher)
            self.dispatcher.metrics = self.metrics
            self.metrics.config_rules.set(len(self.config.rules))
            await self._recover(starting=True)
            workers = [
                asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
                asyncio.create_task(self._heartbeat(), name="heartbeat"),
                asyncio.create_task(self._housekeeping(), name="housekeeping"),
                asyncio.create_task(looplag.watch(self.metrics), name="loop-lag"),
            ]
            await self.engine.start()
            workers.append(asyncio.create_task(self.engine.run_timers(), name="timers"))
            for name, source in self._build_sources().items():
                self.start_source(name, source)
            self.ready = True
            sdnotify.notify(f"READY=1\nSTATUS=running: {len(self.config.rules)} rule(s)")
            interval = sdnotify.watchdog_interval()
            if interval is not None:
                workers.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
            stop = asyncio.create_task(self._stop.wait())
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
                await self.stop_sources(list(self._sources))  # sources first
            log.debug("stopping: timers, housekeeping, heartbeat, dispatcher")
            for task in reversed(workers):  # the dispatcher last
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            stop.cancel()
            for ctx in self._contexts.values():  # the last figures, for `status` after stop
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

    async def _recover(self, starting: bool = False) -> None:
        """Re-queue jobs left by a previous run or a dead replica (see Store.recover_jobs)."""
        now = self.clock.now()
        exclusive = self.store.exclusive
        found = await self.call(lambda: self.store.recover_jobs(
            self.id, now - 3 * HEARTBEAT, now, exclusive=exclusive))
        requeued = await self.call(lambda: self.store.requeue_requests(
            self.id, now - 3 * HEARTBEAT, exclusive=exclusive))
        if requeued:
            log.info("%d CLI request(s) left unanswered by a stopped daemon taken back", requeued)
        for job_id, not_before in found:
            if job_id in self.dispatcher.wanted or job_id in self.dispatcher.running:
                continue
            if starting:
                log.info("job %s: resuming dispatch after restart", job_id,
                         extra={"job_id": job_id})
            else:
                log.info("job %s: taking over (queued, or its daemon is gone)", job_id,
                         extra={"job_id": job_id})
            self.dispatcher.submit(job_id, not_before)

    def _triggered(self, trig: Trigger) -> None:
        self.dispatcher.submit(trig.id)
        self.metrics.triggered(trig.rule, trig.kind or ("manual" if trig.manual else "unknown"))

    def _job_finished(self, job: Job) -> None:
        self.spawn(self.engine.evaluate_rule(job.rule), f"after:{job.id}")

    async def _supervise(self, name: str, source: Source) -> None:
        ctx = _SourceContext(self, name, self.config.source_type(name))
        self._contexts[name] = ctx
        delay = 1.0
        while True:
            try:
                await source.run(ctx)
                log.warning("source %s stopped by itself; restarting in %.0fs", name, delay,
                            extra={"source": name})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("source %s failed; restarting in %.0fs", name, delay,
                              extra={"source": name})
                ctx.set_health(False, f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def _heartbeat(self) -> None:
        """Say "alive" every HEARTBEAT. On PostgreSQL, replicas take over the running jobs of
        a daemon silent for 3 heartbeats, so the beat has its own thread and connection: a
        long store-thread call (a prune, a big batch, a /metrics scrape) must not make this
        daemon look dead while its jobs run. (SQLite: one daemon per file, nobody takes over;
        the beat shares the store thread, which holds the one write lock anyway.)"""
        own = self.store.dialect == "postgresql"
        beats = ThreadPoolExecutor(1, thread_name_prefix="triggerd-heartbeat") if own else None
        loop = asyncio.get_running_loop()
        try:
            while not self._stop.is_set():
                beat = functools.partial(self.store.heartbeat, self.id, self.clock.now())
                try:
                    await (loop.run_in_executor(beats, beat) if beats else self.call(beat))
                    self.metrics.heartbeat.set(time.time())
                except StoreError as exc:
                    log.warning("heartbeat: store unavailable (%s)", exc)
                await wait_event(self._stop, HEARTBEAT.total_seconds())
        finally:
            if beats is not None:
                beats.shutdown(wait=False)

    async def _housekeeping(self) -> None:
        """CLI requests (fire, pause, resume), job recovery, source details and retention
        pruning (the heartbeat is its own task: `_heartbeat`)."""
        next_prune = next_details = self.clock.now()
        next_recover = next_prune + RECOVER_EVERY
        while not self._stop.is_set():
            now = self.clock.now()
            try:
                if now >= next_recover:
                    await self._recover()
                    next_recover = now + RECOVER_EVERY
                if now >= next_details:
                    for ctx in list(self._contexts.values()):
                        await ctx.flush()
                    next_details = now + DETAILS_EVERY
                if now >= next_prune:
                    cutoff = now - self.config.retention
                    removed = await self.call(functools.partial(self.store.prune, cutoff))
                    if removed:
                        log.info("retention: pruned %d row(s) older than %s", removed,
                                 cutoff.isoformat())
                    next_prune = now + PRUNE_EVERY
                for req_id, kind, rule, args in await self.call(
                        lambda: self.store.take_requests(self.id, self.clock.now())):
                    result = await self._handle_request(req_id, kind, rule, args)
                    await self._finish_request(req_id, result)
            except StoreError as exc:  # a lost connection: log, and try again shortly
                log.warning("housekeeping: store unavailable (%s)", exc)
                await wait_event(self._stop, 2.0)
            await wait_event(self._stop, REQUEST_POLL)

    async def _finish_request(self, req_id: int, result: str) -> None:
        await self.call(lambda: self.store.finish_request(req_id, result))

    async def _handle_request(self, request_id: int, kind: str, rule: str,
                              args: dict[str, Any]) -> str:
        if rule not in self.config.rules:
            return f"error: unknown rule {rule!r}"
        if kind == "fire":
            reason = str(args.get("reason") or "manual trigger")
            fired = [t.id for t in await self.engine.fire(rule, reason, request_id)]
            if not fired:  # a retried request: report what it fired the first time
                fired = await self.call(lambda: self.store.triggers_of_request(request_id))
            return "fired " + ", ".join(fired) if fired else "error: not fired"
        if kind in ("pause", "resume"):
            await self.engine.evaluate_rule(rule)
            return f"{kind}d"
        return f"error: unknown request {kind!r}"


def run_daemon(config: Config, http: str | None = None) -> int:
    return asyncio.run(Daemon(config, http=http).run())
