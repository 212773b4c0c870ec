"""Dispatch overhead: trigger written -> HTTP request received by the backend's server.

What runs is the daemon's own dispatch path, in one process: `Engine.fire` writes a trigger
and its job (one transaction on the store thread, as in the daemon), the `Dispatcher` claims
the job and reads its context, and the `http` backend POSTs it (signed, one fresh connection
per attempt). The receiver is a separate process (`http.server`, loopback) that notes
`time.time()` when it has read a request. Per trigger:

    written -> dispatch    from the moment `fire` returns (the trigger is committed) until
                           the backend's `dispatch` is called: the dispatcher wakes, claims
                           the job (a write) and reads the trigger context and params
    written -> received    ... until the receiver has read the request: + rendering, signing,
                           a new connection and the POST (the figure the issue asks for)

Triggers are fired one at a time (the next when the previous request arrived), so this is
latency, not queueing. The first `--warmup` triggers are not counted.

    .venv/bin/python bench/dispatch.py                        # 300 triggers on SQLite
    .venv/bin/python bench/dispatch.py --store postgresql+psycopg://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from triggerd.backends.http import HttpBackend, HttpOptions
from triggerd.clock import SystemClock
from triggerd.config.loader import Config
from triggerd.config.schema import RuleSpec
from triggerd.runtime.flow import Flow
from triggerd.sources.cron import CronOptions
from triggerd.store import Store

RECEIVER = textwrap.dedent("""
    import sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a):
            pass
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            now = time.time()
            print(self.headers["Idempotency-Key"], now, len(body), flush=True)
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print("port", server.server_address[1], flush=True)
    server.serve_forever()
""")


class Receiver:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().split()[1])
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            key, at, _size = line.split()
            with self.cond:
                self.arrived[key] = float(at)
                self.cond.notify_all()

    def wait(self, key: str, timeout: float = 30) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: key in self.arrived, timeout):
                raise TimeoutError(f"request for {key} never arrived")
            return self.arrived[key]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def run(store_url: str, count: int, warmup: int) -> list[tuple[float, float]]:
    receiver = Receiver()
    store = Store(store_url)
    store.upgrade()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
    loop = asyncio.get_running_loop()

    async def call(fn: Callable[[], Any]) -> Any:
        return await loop.run_in_executor(executor, fn)

    os.environ.setdefault("BENCH_HOOK_SECRET", "bench-secret")
    backend = HttpBackend("hook", HttpOptions.model_validate({
        "type": "http", "url": f"http://127.0.0.1:{receiver.port}/hook",
        "secret_env": "BENCH_HOOK_SECRET"}))
    spec = RuleSpec.model_validate({"on": ["src"], "dispatch": {
        "backend": "hook", "on_busy": "queue", "concurrency": 1000,
        "params": {"model": "churn"}}})
    config = Config(path=Path("bench.yaml"), store_url=store_url, state_dir=Path("."),
                    retention=timedelta(days=1),
                    sources={"src": CronOptions(type="cron", every="1h")},
                    backends={}, rules={"r": spec})
    clock = SystemClock()
    flow = Flow(config, store, {"hook": backend}, clock, call, "bench")
    dispatcher, engine = flow.dispatcher, flow.engine
    called: dict[str, float] = {}
    real_dispatch = backend.dispatch

    async def timed(ctx: Any, job: Any) -> Any:
        called[ctx.trigger_id] = time.time()
        return await real_dispatch(ctx, job)

    dispatcher.backends["hook"] = timed_backend = type("Timed", (), {})()
    timed_backend.name = "hook"
    timed_backend.dispatch = timed
    worker = asyncio.create_task(dispatcher.run())
    latencies: list[tuple[float, float]] = []
    try:
        await engine.start()
        for i in range(warmup + count):
            (trig,) = await engine.fire("r", f"bench {i}")
            written = time.time()
            arrived = await asyncio.to_thread(receiver.wait, trig.id)
            if i >= warmup:
                latencies.append((called[trig.id] - written, arrived - written))
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        executor.shutdown()
        store.close()
        receiver.close()
    return latencies


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="SQLAlchemy URL (default: SQLite in a temp dir)")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="triggerd-bench-") as tmp:
        url = args.store or f"sqlite:///{tmp}/state.db"
        latencies = asyncio.run(run(url, args.count, args.warmup))
    db = url.split(":", 1)[0]
    load = os.getloadavg()[0]
    print(f"store: {db}, triggers: {len(latencies)} (after {args.warmup} warm-up), "
          f"load {load:.1f}")
    for i, what in enumerate(("written -> dispatch called", "written -> request received")):
        ms = [pair[i] * 1000 for pair in latencies]
        print(f"{what:28} (ms): p50 {pct(ms, 50):5.1f}  p90 {pct(ms, 90):5.1f}  "
              f"p99 {pct(ms, 99):5.1f}  max {max(ms):5.1f}  mean {statistics.fmean(ms):5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
