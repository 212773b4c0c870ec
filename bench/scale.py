"""Scale run (issue 15): three replicas share one topic and one landing directory, at volume.

    .venv/bin/python bench/scale.py --messages 300000 --files 30000
    .venv/bin/python bench/scale.py --messages 300000 --files 30000 --faults kill,pgcut --json

To run another tree's triggerd under this harness, run it from that tree with its PYTHONPATH
(`cd <tree> && PYTHONPATH=<tree> .venv/bin/python <this tree>/bench/scale.py ...`): the
replicas and the drain's CLI import triggerd from the working directory first.

bench/chaos.py's world (`--replicas` `triggerd run` processes on one scratch PostgreSQL
database, each through its own TCP proxy; a tansu broker with a 4-partition topic behind a
`tansu proxy`; the idempotent HTTP receiver and the recording command) and its checker, with
two differences:
- **The workload is loaded before the replicas start**: `--files` files in the shared landing
  directory (spread over its three directories; every replica sees every file and the store
  keeps one event of each) and `--messages` JSON messages on the topic, the same as the chaos
  run's (a unique `mid`, a model, a kind), produced in bulk and acknowledged before the first
  replica starts (the consumer group gives each replica whole partitions of the topic's
  `--partitions`, 4 as in the chaos run: one replica then reads two). The cron tick goes on
  as in the chaos run.
- **The rules are the chaos run's six, batched**: same sources, matches, `group_by`, policies
  and backends, with thresholds that keep triggers few at this volume (`SCALE_RULES`); the
  checker mirrors the same matches.
The broker stores in memory (no `restart` fault: the other kinds can be scheduled with
`--faults` over the first `--fault-window` seconds; none by default).

**Figures.** Every `--every` seconds the sampler reads the sources' event counters (the
`sources` row of a source is shared: its `events` is the distinct events the replicas stored
from it together) and the CPU time of each process from /proc: every replica process (a
restarted one adds its new pid), the PostgreSQL backends connected to the scratch database
(ours only), PostgreSQL's shared background processes (WAL writer, checkpointer, background
writer, autovacuum: the whole server's, so other users of the server count in them too),
and tansu (broker and proxy). The run's span is from the first replica started to the
moment every file and message is an event:
- rate, first to last: the files and messages (`--files` + `--messages`) divided by the time
  from the first stored event to the last input stored;
- rate, steady state: the inputs stored between 10 % and 90 % of the total, by the time
  between those two marks (start-up and the tail of the last partitions left out);
- CPU: seconds per process (group) over the span, and as a share of one core.
The drain and the checker are the chaos run's (bench/chaos.py): lost events, one trigger per
matching (rule, event), one final job per trigger, one side effect per trigger id.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _chaos_check import check, table  # noqa: E402
from chaos import (  # noqa: E402
    DIRS,
    RULES,
    Faults,
    Monitor,
    Workload,
    World,
    drain,
    message,
    observe,
    plan,
    say,
    wait_for,
)
from ingest import proc_cpu  # noqa: E402
from sqlalchemy import text  # noqa: E402

from triggerd.store import Store  # noqa: E402

INPUT_SOURCES = ("landing", "metrics")

# the chaos run's rules (same matches, groups, policies, backends), with batches that keep
# the triggers few at volume
SCALE_SPECS = {
    "files-batch": """
        on: [landing]
        group_by: "{payload.dir}"
        when: {min_events: 2000}
        dispatch: {backend: hook, on_busy: queue, concurrency: 2, retry: RETRY}
    """,
    "files-debounce": """
        on: [landing]
        match: {where: "payload.dir == 'a'"}
        when: {debounce: 2s, max_delay: 10s}
        dispatch: {backend: rec, on_busy: coalesce}
    """,
    "msgs-drift": """
        on: [metrics]
        match: {where: "value.kind == 'drift'"}
        when: {cooldown: 4s}
        dispatch: {backend: hook, on_busy: skip, retry: RETRY}
    """,
    "msgs-model": """
        on: [metrics]
        group_by: "{value.model}"
        when: {min_events: 5000}
        dispatch: {backend: hook, on_busy: queue, concurrency: 2, retry: RETRY}
    """,
    "msgs-ping": """
        on: [metrics]
        match: {where: "value.kind == 'ping'"}
        when: {min_events: 2000}
        dispatch: {backend: hook, on_busy: queue, concurrency: 3, retry: RETRY}
    """,
    "ticks": """
        on: [tick]
        dispatch: {backend: rec, on_busy: coalesce}
    """,
}
SCALE_RULES: dict[str, tuple[str, Callable[[Mapping[str, Any]], bool]]] = {
    name: (spec, RULES[name][1]) for name, spec in SCALE_SPECS.items()}


class ScaleWorld(World):
    """The chaos world with the batched rules and a broker that stores in memory."""

    def rules(self) -> dict[str, tuple[str, Callable[[Mapping[str, Any]], bool]]]:
        return SCALE_RULES

    def _broker_storage(self) -> tuple[str, dict[str, str]]:
        return "memory://tansu/", {}


# -- the workload, loaded up front ----------------------------------------------------------------
def preload_files(landing: Path, n: int, seed: int) -> set[str]:
    """`n` files over the landing directory's directories; their relpaths."""
    rng = random.Random(f"{seed}-files")
    out = set()
    for i in range(1, n + 1):
        name, directory = f"f{i:06d}.csv", rng.choice(DIRS)
        (landing / directory / name).write_bytes(
            f"id,{i}\n{'x' * rng.randrange(10, 400)}\n".encode())
        out.add(f"{directory}/{name}")
    return out


async def preload_messages(bootstrap: str, topic: str, n: int, seed: int) -> dict[str, float]:
    """`n` messages produced in bulk (the chaos run's shape); mid -> when acknowledged."""
    from aiokafka import AIOKafkaProducer

    rng = random.Random(f"{seed}-messages")
    acked: dict[str, float] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=1 << 20)
    await producer.start()
    try:
        for start in range(1, n + 1, 5000):
            sent = []
            for i in range(start, min(start + 5000, n + 1)):
                mid, value, key = message(i, rng)
                sent.append((mid, await producer.send(topic, value, key=key)))
            for mid, future in sent:
                await future
                acked[mid] = time.time()
    finally:
        await producer.stop()
    return acked


# -- sampling -------------------------------------------------------------------------------------
@dataclass
class CpuGroup:
    """CPU seconds of a changing set of processes since `begin`: a pid seen at the first
    sample counts from its value then, one that appears later from its start."""

    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    began: bool = False

    def sample(self, pids: list[int]) -> None:
        for pid in pids:
            cpu = proc_cpu(pid)
            if cpu is None:
                continue
            if pid not in self.last:
                self.first[pid] = cpu if not self.began else 0.0
            self.last[pid] = cpu
        self.began = True

    @property
    def seconds(self) -> float:
        return sum(v - self.first[pid] for pid, v in self.last.items())


BACKGROUND = ("walwriter", "checkpointer", "background writer", "autovacuum launcher",
              "autovacuum worker")


class Sampler:
    """Every `every` seconds: the sources' event counts and the CPU of each process group."""

    def __init__(self, world: World, every: float) -> None:
        self.world, self.every = world, every
        self.counts: list[tuple[float, dict[str, int]]] = []
        self.cpu = {"replicas": CpuGroup(), "pg backends": CpuGroup(),
                    "pg background (shared)": CpuGroup(), "tansu": CpuGroup()}
        self.per_replica = [CpuGroup() for _ in world.replicas]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scale-sampler")

    def start(self) -> None:
        assert self.world.engine is not None
        # one connection of its own, left out of the backends' CPU (the harness's Monitor
        # polls heartbeats on another: a few queries a second, counted in)
        self._conn = self.world.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._pid = int(self._conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        self._sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._sample()
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(Exception):  # a cut connection: the next sample
                self._sample()

    def _sample(self) -> None:
        w, conn = self.world, self._conn
        counts = dict(conn.execute(text("SELECT name, events FROM sources")).all())
        activity = conn.execute(text("SELECT pid, datname = current_database(), backend_type "
                                     "FROM pg_stat_activity")).all()
        self.counts.append((time.time(), {k: int(v) for k, v in counts.items()}))
        own = [pid for pid, ours, kind in activity if ours and kind == "client backend"
               and pid != self._pid]
        self.cpu["pg backends"].sample(own)
        self.cpu["pg background (shared)"].sample(
            [pid for pid, _ours, kind in activity if kind in BACKGROUND])
        tansu = [p.pid for p in (w.broker.proc if w.broker else None,
                                 getattr(w.kafka_proxy, "proc", None)) if p is not None]
        self.cpu["tansu"].sample(tansu)
        pids = [r.pid for r in w.replicas if r.alive()]
        self.cpu["replicas"].sample(pids)
        for group, rep in zip(self.per_replica, w.replicas, strict=True):
            group.sample([rep.pid] if rep.alive() else [])

    def inputs(self, at: int) -> float | None:
        """When the sources' counters first reached `at` inputs (linear between samples)."""
        prev_t, prev_n = None, 0
        for ts, counts in self.counts:
            n = sum(counts.get(s, 0) for s in INPUT_SOURCES)
            if n >= at:
                if prev_t is None or n == prev_n:
                    return ts
                return prev_t + (ts - prev_t) * (at - prev_n) / (n - prev_n)
            prev_t, prev_n = ts, n
        return None


# -- a run ----------------------------------------------------------------------------------------
def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    total = args.files + args.messages
    with tempfile.TemporaryDirectory(prefix="triggerd-scale-") as tmp:
        world = ScaleWorld(Path(tmp), args.seed, args.replicas)
        world.partitions = args.partitions
        try:
            world.open()
            assert world.engine is not None and world.broker is not None
            store = Store(world.url)  # the schema before the sampler reads it
            store.upgrade()
            store.close()
            workload = Workload(args.seed, world.landing, world.workdir / "staging",
                                world.broker.bootstrap, world.topic)
            t0 = time.time()
            workload.files = preload_files(world.landing, args.files, args.seed)
            say(f"{len(workload.files)} files written in {time.time() - t0:.1f}s")
            t0 = time.time()
            assert world.topic is not None
            workload.messages = asyncio.run(preload_messages(
                world.broker.bootstrap, world.topic, args.messages, args.seed))
            say(f"{len(workload.messages)} messages acknowledged in {time.time() - t0:.1f}s")
            monitor = Monitor(world.engine)
            sampler = Sampler(world, args.every)
            faults = Faults(plan(args.seed, args.fault_window, args.faults, args.replicas)
                            if args.faults else [], world)
            load0 = os.getloadavg()
            sampler.start()
            t_start = time.time()
            for rep in world.replicas:
                rep.start()
            monitor.start()
            world.stack.callback(monitor.stop)
            faults.start(t_start)
            world.stack.callback(faults.stop_and_undo)
            wait_for(lambda: sampler.inputs(total) is not None, args.timeout,
                     "every file and message to be an event", interval=args.every)
            sampler.stop()
            load1 = os.getloadavg()
            say("every input stored; draining")
            exempt, late = drain(world, faults, workload, args.drain_timeout)
            observed = observe(world, workload, faults, monitor, exempt)
            observed.log_findings["drain waits timed out"] = len(late)
            figures = check(observed, {k: v[1] for k, v in world.rules().items()})
            return report(args, sampler, t_start, load0, load1, figures)
        finally:
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                for path in Path(tmp).glob("*.log*"):
                    (args.keep / path.name).write_bytes(path.read_bytes())
            world.close()


def report(args: argparse.Namespace, sampler: Sampler, t_start: float,
           load0: tuple[float, ...], load1: tuple[float, ...], figures: Any) -> dict[str, Any]:
    total = args.files + args.messages
    t_first = sampler.inputs(1)
    t_last = sampler.inputs(total)
    t10, t90 = sampler.inputs(total // 10), sampler.inputs(total * 9 // 10)
    assert t_first is not None and t_last is not None and t10 is not None and t90 is not None
    span = t_last - t_start
    cpu = {k: g.seconds for k, g in sampler.cpu.items()}
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "inputs": {"files": args.files, "messages": args.messages},
        "replicas": args.replicas,
        "partitions": args.partitions,
        "faults": args.faults,
        "load": {"before": load0[:3], "after": load1[:3]},
        "first event after start (s)": round(t_first - t_start, 1),
        "span: start to last input stored (s)": round(span, 1),
        "rate, first to last (events/s)": round(total / (t_last - t_first)),
        "rate, steady 10-90 % (events/s)": round(0.8 * total / (t90 - t10)),
        "cpu seconds": {k: round(v, 1) for k, v in cpu.items()},
        "cpu per replica (s)": [round(g.seconds, 1) for g in sampler.per_replica],
        "cpu share of one core": {k: round(v / span, 2) for k, v in cpu.items()},
        "cpu us per input": {k: round(1e6 * v / total, 1) for k, v in cpu.items()},
        "timeline": [(round(ts - t_start, 1), sum(c.get(s, 0) for s in INPUT_SOURCES))
                     for ts, c in sampler.counts],
        "checker": figures.to_json(),
        "table": table(figures),
        "ok": figures.ok,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--files", type=int, default=30_000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4,
                        help="the topic's partitions (4: the chaos run's; the consumer group "
                             "gives each replica whole partitions)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", type=lambda s: [k for k in s.split(",") if k], default=[],
                        help="comma-separated: kill,pause,pgcut,broker (none by default)")
    parser.add_argument("--fault-window", type=float, default=60.0,
                        help="seconds after the start in which faults are scheduled")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds for every input to be stored")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", type=Path, help="copy the logs to this directory")
    args = parser.parse_args()
    if "restart" in args.faults:
        parser.error("the broker stores in memory here: no `restart` fault")
    say(f"command: {' '.join([sys.executable, *sys.argv])}")
    result = run_scale(args)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2))
    else:
        for key, value in result.items():
            if key not in ("checker", "table", "timeline"):
                print(f"{key}: {value}")
        print(result["table"])
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
