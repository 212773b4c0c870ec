"""What /metrics, /healthz and /readyz answer, from a running daemon.

- /healthz (liveness): 200 while the event loop answers; it needs nothing else, so a slow or
  unreachable store never gets a live daemon killed.
- /readyz (readiness): 200 when start-up is done, the store answers a trivial query within
  `STORE_TIMEOUT`, no write failed in the last 30 s (a full disk refuses writes while reads
  still work) and every source reports itself healthy; else 503. The JSON body says which.
- /metrics: the daemon's Prometheus registry; store-derived gauges are read at scrape time on
  the store thread (never on the loop), and omitted with `triggerd_store_up 0` when the store
  does not answer in time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST

from triggerd.errors import StoreError
from triggerd.ops.http import Handler, Response
from triggerd.ops.metrics import Metrics, StoreSnapshot, ping, read_snapshot
from triggerd.store.sql import Store

T = TypeVar("T")
STORE_TIMEOUT = 2.0  # seconds
SCRAPE_TIMEOUT = 5.0
SNAPSHOT_REUSE = 1.0  # seconds


class Health(Protocol):
    healthy: bool
    error: str | None


class DaemonView(Protocol):
    """The parts of the daemon the endpoints read."""

    store: Store
    metrics: Metrics
    ready: bool

    def call(self, fn: Callable[[], T]) -> Awaitable[T]: ...

    def rule_names(self) -> list[str]: ...

    def source_health(self) -> Mapping[str, Health]: ...

    def now(self) -> Any: ...


def _json(status: int, body: dict[str, Any]) -> Response:
    return status, "application/json", (json.dumps(body, sort_keys=True) + "\n").encode()


async def _store_problem(daemon: DaemonView) -> tuple[str, str] | None:
    """What is wrong with the store, as (state, detail): "unreachable" or "failing writes"."""
    try:
        async with asyncio.timeout(STORE_TIMEOUT):
            await daemon.call(lambda: ping(daemon.store))
    except TimeoutError:
        return "unreachable", f"did not answer within {STORE_TIMEOUT:g}s"
    except StoreError as exc:
        return "unreachable", str(exc)
    failed = daemon.store.failing_writes(daemon.now())
    if failed is not None:
        return "failing writes", f"last at {failed[0].isoformat(timespec='seconds')}: {failed[1]}"
    return None


class _Snapshots:
    """Store reads for scrapes, single-flight: concurrent scrapes (two Prometheus servers)
    share one read, and a read younger than `SNAPSHOT_REUSE` serves again; so scrapers never
    queue work on the store thread (bench/metrics.py: the read grows with rule groups and
    jobs)."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self._running: asyncio.Future[StoreSnapshot | None] | None = None
        self._last: tuple[float, list[str], StoreSnapshot | None] | None = None

    async def get(self, rules: list[str]) -> StoreSnapshot | None:
        loop = asyncio.get_running_loop()
        if self._last is not None and self._last[1] == rules and \
                loop.time() - self._last[0] < SNAPSHOT_REUSE:
            return self._last[2]
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._read(rules))
        return await asyncio.shield(self._running)

    async def _read(self, rules: list[str]) -> StoreSnapshot | None:
        now = self.daemon.now()
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                snap: StoreSnapshot | None = await self.daemon.call(
                    lambda: read_snapshot(self.daemon.store, rules, now))
        except (TimeoutError, StoreError):
            snap = None
        self._last = (asyncio.get_running_loop().time(), rules, snap)
        return snap


def routes(daemon: DaemonView) -> dict[str, Handler]:
    async def healthz() -> Response:
        return _json(200, {"status": "ok"})

    async def readyz() -> Response:
        problems: list[str] = []
        if not daemon.ready:
            problems.append("starting up")
        store = await _store_problem(daemon)
        if store is not None:
            problems.append(f"store {store[0]}: {store[1]}")
        sources = {name: {"healthy": h.healthy, "error": h.error}
                   for name, h in sorted(daemon.source_health().items())}
        problems += [f"source {name} unhealthy: {s['error'] or 'no detail'}"
                     for name, s in sources.items() if not s["healthy"]]
        body = {"ready": not problems, "store": "ok" if store is None else store[0],
                "sources": sources, "problems": problems}
        return _json(200 if not problems else 503, body)

    snapshots = _Snapshots(daemon)

    async def metrics() -> Response:
        rules = daemon.rule_names()
        snap = await snapshots.get(rules)
        return 200, CONTENT_TYPE_LATEST, await asyncio.to_thread(daemon.metrics.render, snap,
                                                                 rules)

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}
