"""Chaos harness (issue 15): replicas under faults, then a checker says if the guarantees held.

    .venv/bin/python bench/chaos.py --duration 1200 --seed 7        # the 20-minute run
    .venv/bin/python bench/chaos.py --duration 60 --faults kill,pgcut --json
    .venv/bin/python bench/chaos.py --sqlite-disk-full              # the separate SQLite run

**The world.** `--replicas` (3) `triggerd run` processes on one scratch PostgreSQL database
(created on 127.0.0.1:5432, `TRIGGERD_BENCH_PG` to change, dropped at the end), each reaching
it through its own cuttable TCP proxy (`_chaos_proxy.py`); a tansu broker (the Kafka wire
protocol) with a 4-partition topic, which the replicas reach through a `tansu proxy`, storing
on S3: moto's server (the S3 REST API) in a process of its own, so that topics, messages and
committed group offsets outlive the broker process (the replicas fetch with `fetch_wait:
1s`, see `config_text`); an idempotent HTTP receiver
(`_chaos_receiver.py`) and a recording command (`_chaos_record.py`) as backends.

**The workload** (seeded): a file published every 0.2-0.8 s into one of three directories of a
shared landing directory (half written in place, half staged outside and renamed in), 1-2 JSON
messages every 0.3-0.7 s (a unique `mid`, the event's fingerprint; a model m0-m3; a kind
drift/ping/report), and a cron tick every second. Six rules cover the policies: `files-batch`
(group_by dir, min_events 4, on_busy queue, http), `files-debounce` (dir a, debounce 2 s /
max_delay 6 s, coalesce, command), `msgs-drift` (cooldown 4 s, on_busy skip, http),
`msgs-model` (group_by model, min_events 5, queue, http), `msgs-ping` (every ping, queue,
concurrency 3, http), `ticks` (every tick, coalesce, command). http rules retry (4 attempts).

**Faults** (`--faults`, all by default), on a schedule drawn up front from `--seed` (the same
seed gives the same kinds, targets, times and lengths; what the system does in between is not
deterministic): every 3-13 s after an 8 s warm-up, the first ones a permutation of the kinds
(so a short run has each); at most replicas-1 replicas under a fault at once, and at most
one fault on the broker.
- `kill`: SIGKILL of a replica, restarted 1-10 s later.
- `pause`: SIGSTOP for 17-25 s (longer than the takeover cutoff, DEAD_AFTER = 15 s), SIGCONT.
- `pgcut`: the replica's PostgreSQL proxy closes every connection and refuses new ones for
  2-20 s (longer than the cutoff sometimes: its jobs are then taken over, and fenced).
- `broker` (an outage): the replicas' broker endpoint, the `tansu proxy`, is killed for 3-12 s
  and started again. The broker stays up, with its consumer group, and the harness keeps
  producing straight to it, so a backlog builds that must be read after. To the replicas it
  is a broker that refuses connections.
- `restart`: the tansu broker process itself is killed (SIGKILL) and started again 3-12 s
  later on the same port: a new process that reads back what the old one stored (topics,
  messages, the consumer group with its committed offsets; a write not yet acknowledged may
  or may not be there). The group's members, silent for longer than the session timeout
  (3 s), are dropped: the replicas join again. Its `tansu proxy` is killed right after it
  and started again after it: tansu 0.6's proxy never reconnects to a
  restarted broker (measured: the replicas stayed cut off for the rest of a 90 s run), so the
  replicas see what they would see on a direct connection, their connections closed and new
  ones refused until the broker is back. The harness's producer tries each message until
  the broker acknowledges it, so no backlog builds (a try that failed but was stored anyway
  is a second copy of the same event).
  The two broker kinds never overlap.

**How a run ends (the drain).** Faults stop and every one still active is undone (replicas
restarted or continued, proxies healed); the workload stops; the harness waits until every
replica has started and every file and message is an event; then `triggerd pause` and
`triggerd fire` for each rule (a manual fire ignores pause and consumes each group's pending
events, so batches below their threshold, debounce windows and cooldowns are flushed), and it
waits until no job is queued, running or retrying. Paused rules fire nothing more, so the
state is final; only ticks keep arriving (pending, exempt: observed after the drain's fire).

**The checker** (`_chaos_check.py`) reads the store directly and compares it with what the
harness wrote, what the receiver got and what the command recorded:
- lost events: files published and messages acknowledged by the broker that are not events,
  plus (rule, event) pairs the rule matches (the harness mirrors each `where`) that have no
  `rule_events` row or whose row has no trigger after the drain (ticks after the drain's fire
  exempt); a row for a rule that does not match is reported too.
- every trigger has a job in a final state (succeeded, failed, cancelled: `on_busy: skip`).
- deliveries: every POST the receiver got; duplicate deliveries: more than one with the same
  `Idempotency-Key` (retries, takeovers: allowed, counted). Duplicate side effects: a key that
  acted twice, plus every event that reached a backend (an acting delivery, or a command run)
  in the side effects of more than one trigger of a rule. Missing side effects: a succeeded
  job whose backend never acted. A delivery or command run whose events differ from the
  store's for that trigger, or whose trigger is unknown, is an inconsistency. Command re-runs
  (same trigger id: at least once across kill -9) are counted, not failures.
- verdict OK: 0 lost, 0 duplicate or missing side effects, every job final, no
  inconsistency, and dispatching resumed after every fault.

**Time to resume dispatching**, per fault kind (p50 and max over the faults measured):
- kill / pause of replica R at t0: the jobs R was running at t0 (read from the store right
  after the signal); the time until each has a new attempt started (by any daemon) or is
  final, the worst of them. A replica running no job at t0 gives no sample ("n/a").
- pgcut of R's connections, healed at t1: from t1 to R's first store write after it: a
  heartbeat (every 5 s, polled every 0.5 s) or an attempt R started or finished.
- broker outage or restart ended at t1 (the proxy, or the broker, listening again): from t1
  to the first attempt of a job whose trigger holds a message the broker acknowledged after
  t1 ("n/a" when none was: a fault that the drain ended).
Targets (issue 15): after a kill, within DEAD_AFTER + 5 s = 20 s. Replicas look for orphans
every RECOVER_EVERY = 2 s (triggerd/runtime/housekeeping.py), and a killed daemon is dead
DEAD_AFTER after its last heartbeat, which was 0-5 s before the kill: its jobs resume within
15 + 2 s of the kill at worst (the first 20-minute run, bench/RESULTS.md, had 10 s).

`--json` prints the figures as JSON (with each fault's resume time). `--keep DIR` copies the
logs and records there, and the figures as figures.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(BENCH))

from _chaos_check import KINDS, FaultRecord, Figures, Observed, check, table  # noqa: E402
from _chaos_proxy import Proxy  # noqa: E402
from _chaos_receiver import Receiver  # noqa: E402
from kafka_support import (  # noqa: E402
    Tansu,
    TansuProxy,
    free_port,
    new_topic,
    s3_storage,
    tansu_binary,
)
from s3_server import MotoProcess  # noqa: E402
from sqlalchemy import create_engine, select, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from triggerd.model import DEAD_AFTER  # noqa: E402
from triggerd.store import tables as t  # noqa: E402

PG_ADMIN_URL = os.environ.get("TRIGGERD_BENCH_PG",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
WARMUP = 8.0  # seconds of workload before the first fault
RETRY = "{attempts: 4, backoff: 1s, max_backoff: 4s}"
PRODUCE_PATIENCE = 60.0  # seconds a message is tried again before it is a harness error
DIRS = ("a", "b", "c")
MODELS = ("m0", "m1", "m2", "m3")


def say(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- rules, and the harness's own reading of which events they match ----------------------------
def _value(e: Mapping[str, Any]) -> dict[str, Any]:
    value = e["payload"].get("value")
    return value if isinstance(value, dict) else {}


RULES: dict[str, tuple[str, Callable[[Mapping[str, Any]], bool]]] = {
    "files-batch": ("""
        on: [landing]
        group_by: "{payload.dir}"
        when: {min_events: 4}
        dispatch: {backend: hook, on_busy: queue, concurrency: 2, retry: RETRY}
    """, lambda e: e["source"] == "landing"),
    "files-debounce": ("""
        on: [landing]
        match: {where: "payload.dir == 'a'"}
        when: {debounce: 2s, max_delay: 6s}
        dispatch: {backend: rec, on_busy: coalesce}
    """, lambda e: e["source"] == "landing" and e["payload"].get("dir") == "a"),
    "msgs-drift": ("""
        on: [metrics]
        match: {where: "value.kind == 'drift'"}
        when: {cooldown: 4s}
        dispatch: {backend: hook, on_busy: skip, retry: RETRY}
    """, lambda e: e["source"] == "metrics" and _value(e).get("kind") == "drift"),
    "msgs-model": ("""
        on: [metrics]
        group_by: "{value.model}"
        when: {min_events: 5}
        dispatch: {backend: hook, on_busy: queue, concurrency: 2, retry: RETRY}
    """, lambda e: e["source"] == "metrics"),
    "msgs-ping": ("""
        on: [metrics]
        match: {where: "value.kind == 'ping'"}
        dispatch: {backend: hook, on_busy: queue, concurrency: 3, retry: RETRY}
    """, lambda e: e["source"] == "metrics" and _value(e).get("kind") == "ping"),
    "ticks": ("""
        on: [tick]
        dispatch: {backend: rec, on_busy: coalesce}
    """, lambda e: e["source"] == "tick"),
}
CRON_ONLY = frozenset({"ticks"})  # rules whose source keeps producing after the workload


def config_text(landing: Path, bootstrap: str | None, topic: str | None, hook_url: str,
                runs: Path, rules: Mapping[str, str]) -> str:
    """The replicas' config (the store comes from TRIGGERD_STORE).

    `fetch_wait: 1s` instead of the default 100 ms: tansu's S3 engine lists a partition's
    objects (one per produced batch) for every fetch, and moto's listing grows with them;
    within a 100 ms wait the fetch came back with little or nothing once a partition held a
    few hundred messages, and 6 minutes into a 20-minute run the replicas fell behind for
    good (measured without triggerd, 4 partitions, 2,500 messages read from the start: 127 s
    at 100 ms, 17 s at 250 ms, 10.5 s at 500 ms, 7.4 s at 1 s). The price: tansu holds a
    fetch for the whole wait, up to 1 s more before a message is read."""
    kafka = "" if bootstrap is None else f"""
          metrics:
            type: kafka
            brokers: ["{bootstrap}"]
            topic: {topic}
            group: chaos
            start: earliest
            fingerprint: "{{value.mid}}"
            subject: "{{value.model}}"
            session_timeout: 3s
            heartbeat_interval: 1s
            commit_interval: 500ms
            fetch_wait: 1s"""
    body = textwrap.dedent(f"""
        sources:
          landing:
            type: filesystem
            paths: ["{landing}"]
            patterns: ["**/*.csv"]
            settle: 1s
            rescan: 30s
          tick: {{type: cron, every: 1s, catch_up: none}}""") + textwrap.indent(
        textwrap.dedent(kafka), "  ") + textwrap.dedent(f"""
        backends:
          hook: {{type: http, url: "{hook_url}", timeout: 15s, read_timeout: 10s}}
          rec:
            type: command
            argv: ["{sys.executable}", "-I", "-S", "{BENCH / '_chaos_record.py'}", "{runs}"]
            timeout: 60s
        rules:
        """)
    for name, spec in rules.items():
        body += f"  {name}:\n" + textwrap.indent(textwrap.dedent(spec).strip(), "    ") + "\n"
    return body.replace("RETRY", RETRY)


# -- processes and servers ----------------------------------------------------------------------
def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.25) -> Any:
    """Poll until `predicate()` is truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def daemon_env(store: str, state_dir: Path, extra: Mapping[str, str] | None = None
               ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRIGGERD_") and k != "PYTHONASYNCIODEBUG"}
    env.update({"TRIGGERD_STORE": store, "TRIGGERD_STATE_DIR": str(state_dir),
                "TRIGGERD_LOG_LEVEL": "INFO", "TRIGGERD_LOG_FORMAT": "text", **(extra or {})})
    return env


class Replica:
    """One `triggerd run` process, restartable; its log appends across restarts."""

    def __init__(self, index: int, config: Path, env: dict[str, str], log: Path) -> None:
        self.index, self.config, self.env, self.log = index, config, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self.paused = False
        self.exits: list[int] = []  # exit codes of runs that ended without the harness

    def start(self) -> None:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "triggerd", "run", "--config", str(self.config)],
                env=self.env, cwd=self.config.parent, stdout=out, stderr=out)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        if not self.alive():
            return False
        with open(self.log, "rb") as fh:
            fh.seek(self._offset)
            return b"triggerd started" in fh.read()

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)
            self.paused = sig == signal.SIGSTOP or (self.paused and sig != signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)
            self.paused = False

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (after SIGCONT if paused), SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.wait(10)


@contextlib.contextmanager
def scratch_database(prefix: str = "triggerd_chaos") -> Iterator[str]:
    """A new PostgreSQL database; its URL; dropped afterwards (with its connections)."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(Exception), admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :n"), {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def via(url: str, port: int) -> str:
    """`url` with its host and port replaced by a local proxy's."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


# -- the workload -------------------------------------------------------------------------------
class Workload:
    """Files into the landing directory and messages to the broker, on seeded timings; what
    was published (relpaths) and acknowledged (message ids, with the ack time) is kept."""

    def __init__(self, seed: int, landing: Path, staging: Path, bootstrap: str | None,
                 topic: str | None) -> None:
        self.landing, self.staging = landing, staging
        self.bootstrap, self.topic = bootstrap, topic
        self.files: set[str] = set()
        self.messages: dict[str, float] = {}
        self.resent = 0  # tries the broker did not acknowledge (while it restarted)
        self.errors: list[str] = []
        self._rng_files = random.Random(f"{seed}-files")
        self._rng_msgs = random.Random(f"{seed}-messages")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for d in DIRS:
            (self.landing / d).mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        targets: list[Callable[[], None]] = [self._write_files]
        if self.bootstrap is not None:
            targets.append(lambda: asyncio.run(self._produce()))
        for target in targets:
            thread = threading.Thread(target=self._guarded, args=(target,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _guarded(self, target: Callable[[], None]) -> None:
        try:
            target()
        except Exception as exc:  # reported by the run, never a stray thread exception
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _write_files(self) -> None:
        rng, n = self._rng_files, 0
        while not self._stop.wait(rng.uniform(0.2, 0.8)):
            n += 1
            name, directory = f"f{n:06d}.csv", rng.choice(DIRS)
            data = f"id,{n}\n{'x' * rng.randrange(10, 400)}\n".encode()
            final = self.landing / directory / name
            if rng.random() < 0.5:
                final.write_bytes(data)
            else:  # published by rename from outside the watched root
                staged = self.staging / name
                staged.write_bytes(data)
                os.replace(staged, final)
            self.files.add(f"{directory}/{name}")

    async def _produce(self) -> None:
        from aiokafka import AIOKafkaProducer

        # aiokafka logs each request that fails while the broker restarts (and tries again
        # itself, within its request timeout): noise on the harness's output
        quiet = logging.getLogger("aiokafka")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        rng, n = self._rng_msgs, 0
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            while not self._stop.is_set():
                await asyncio.sleep(rng.uniform(0.3, 0.7))
                for _ in range(rng.choice((1, 2))):
                    n += 1
                    mid, value, key = message(n, rng)
                    if await self._send(producer, mid, value, key):
                        self.messages[mid] = time.time()
        finally:
            await producer.stop()
            quiet.setLevel(level)

    async def _send(self, producer: Any, mid: str, value: bytes, key: bytes) -> bool:
        """Send one message until the broker acknowledges it (True), trying again while it
        restarts; False, a harness error, after PRODUCE_PATIENCE. A try that failed may still
        have been stored: the retry is then a second copy, the same event (its `mid`)."""
        deadline = time.monotonic() + PRODUCE_PATIENCE
        while True:
            try:
                await producer.send_and_wait(self.topic, value, key=key)
                return True
            except Exception as exc:  # aiokafka gave up on this try (connection refused...)
                if time.monotonic() > deadline:
                    self.errors.append(f"produce {mid}: {type(exc).__name__}: not acknowledged "
                                       f"within {PRODUCE_PATIENCE:.0f}s")
                    return False
                self.resent += 1
                await asyncio.sleep(0.5)


def message(n: int, rng: random.Random) -> tuple[str, bytes, bytes]:
    """The n-th message of a run: its id (`mid`, the event's fingerprint), value and key."""
    mid = f"m{n:06d}"
    kind = rng.choices(("drift", "ping", "report"), (2, 2, 6))[0]
    model = rng.choice(MODELS)
    return mid, json.dumps({"mid": mid, "model": model, "kind": kind}).encode(), model.encode()


# -- the fault schedule and its executor --------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the run's start
    kind: str
    target: int  # replica index; -1: the broker
    length: float


LENGTHS = {"kill": (1.0, 10.0), "pause": (17.0, 25.0), "pgcut": (2.0, 20.0),
           "broker": (3.0, 12.0), "restart": (3.0, 12.0)}
AFTER = {"kill": 10.0, "pause": 3.0, "pgcut": 6.0, "broker": 5.0,  # settle time after a fault
         "restart": 5.0}
ON_BROKER = frozenset({"broker", "restart"})  # one at a time; the others hit a replica


def plan(seed: int, duration: float, kinds: list[str], replicas: int) -> list[Fault]:
    """The faults of a run, drawn from the seed alone (see the module docstring)."""
    rng = random.Random(f"{seed}-faults")
    busy = [0.0] * replicas  # until when each replica is under a fault (and settling)
    broker_busy = 0.0
    first = rng.sample(kinds, len(kinds))
    out: list[Fault] = []
    at = WARMUP
    while at < duration:
        kind = first.pop(0) if first else rng.choice(kinds)
        length = round(rng.uniform(*LENGTHS[kind]), 1)
        if kind in ON_BROKER:
            at = max(at, broker_busy)
            target = -1
            broker_busy = at + length + AFTER[kind]
        else:
            limit = max(1, replicas - 1)
            while True:
                free = [i for i in range(replicas) if busy[i] <= at]
                if free and replicas - len(free) < limit:
                    break
                at = min(b for b in busy if b > at)
            target = rng.choice(free)
            busy[target] = at + length + AFTER[kind]
        if at >= duration:
            break
        out.append(Fault(round(at, 1), kind, target, length))
        at += rng.uniform(3.0, 13.0)
    return out


class Faults:
    """Runs a plan on its own thread: each fault's begin at `at`, its undoing `length` later."""

    def __init__(self, faults: list[Fault], world: World) -> None:
        self.world = world
        self.records: list[FaultRecord] = []
        self.errors: list[str] = []
        self._heap: list[tuple[float, int, bool, Fault]] = []
        self._seq = itertools.count()  # ties in time go in the order they were pushed
        for f in faults:
            heapq.heappush(self._heap, (f.at, next(self._seq), False, f))
        self._open: dict[Fault, FaultRecord] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-faults")
        self._t_start = 0.0

    def start(self, t_start: float) -> None:
        self._t_start = t_start
        self._thread.start()

    def _run(self) -> None:
        while self._heap and not self._stop.is_set():
            at, _, is_end, fault = self._heap[0]
            if self._stop.wait(max(0.0, self._t_start + at - time.time())):
                return
            heapq.heappop(self._heap)
            self._act(fault, is_end)

    def _act(self, fault: Fault, is_end: bool) -> None:
        try:
            if is_end:
                self._end(fault)
            else:
                self._begin(fault)
        except Exception as exc:
            self.errors.append(f"{fault}: {type(exc).__name__}: {exc}")

    def _begin(self, fault: Fault) -> None:
        w = self.world
        rec = FaultRecord(fault.kind, fault.target, 0.0, fault.length)
        if fault.kind == "broker":
            assert w.kafka_proxy is not None
            w.kafka_proxy.stop()
        elif fault.kind == "restart":  # the broker crashes; its proxy goes with it
            assert w.broker is not None and w.kafka_proxy is not None
            w.broker.kill()
            w.kafka_proxy.stop()
        else:
            rep = w.replicas[fault.target]
            rec.pid = rep.pid
            if fault.kind == "kill":
                rep.kill()
            elif fault.kind == "pause":
                rep.signal(signal.SIGSTOP)
            else:
                w.pg_proxies[fault.target].cut()
        rec.t0 = time.time()
        if fault.kind in ("kill", "pause"):
            rec.jobs = w.running_jobs(rec.pid or -1)
        self.records.append(rec)
        self._open[fault] = rec
        heapq.heappush(self._heap, (fault.at + fault.length, next(self._seq), True, fault))
        say(f"fault {fault.kind} {'broker' if fault.target < 0 else f'replica {fault.target}'}"
            f" for {fault.length:.1f}s ({len(rec.jobs)} running job(s))")

    def _end(self, fault: Fault) -> None:
        rec = self._open.pop(fault, None)
        if rec is None:
            return
        w = self.world
        if fault.kind == "broker":
            assert w.kafka_proxy is not None
            w.kafka_proxy.start()
        elif fault.kind == "restart":
            assert w.broker is not None and w.kafka_proxy is not None
            w.broker.start()  # on the same port, reading its storage back
            w.kafka_proxy.start()
        elif fault.kind == "kill":
            w.replicas[fault.target].start()
        elif fault.kind == "pause":
            w.replicas[fault.target].signal(signal.SIGCONT)
        else:
            w.pg_proxies[fault.target].heal()
        rec.t1 = time.time()

    def stop_and_undo(self) -> None:
        """No new fault; undo every active one now."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)
        for fault in list(self._open):
            self._act(fault, is_end=True)


class Monitor:
    """Polls the daemons' heartbeats (the store keeps only the latest) every 0.5 s."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.beats: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-monitor")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        d = t.daemons.c
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):
                with self.engine.connect() as conn:
                    rows = conn.execute(select(d.id, d.heartbeat_at)).all()
                for daemon_id, beat in rows:
                    seen = self.beats.setdefault(daemon_id, [])
                    if not seen or seen[-1] != beat.timestamp():
                        seen.append(beat.timestamp())

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


# -- the world ------------------------------------------------------------------------------------
class World:
    """Everything a chaos run starts; `close()` stops it all (also after a failure)."""

    partitions = 4  # the topic's

    def __init__(self, workdir: Path, seed: int, replicas: int) -> None:
        self.workdir = workdir
        self.seed = seed
        self.n = replicas
        self.stack = contextlib.ExitStack()
        self.replicas: list[Replica] = []
        self.pg_proxies: list[Proxy] = []
        self.storage: MotoProcess | None = None
        self.broker: Tansu | None = None
        self.kafka_proxy: TansuProxy | None = None
        self.topic: str | None = None
        self.receiver = Receiver()
        self.config = workdir / "triggerd.yaml"
        self.runs = workdir / "runs.jsonl"
        self.landing = workdir / "landing"
        self.url = ""
        self.engine: Engine | None = None

    def open(self) -> None:
        self.url = self.stack.enter_context(scratch_database())
        self.engine = create_engine(self.url, pool_pre_ping=True)
        self.stack.callback(self.engine.dispose)
        self.receiver.start()
        self.stack.callback(self.receiver.close)
        for d in DIRS:  # the roots exist before the replicas watch them
            (self.landing / d).mkdir(parents=True, exist_ok=True)
        bootstrap = self._start_kafka()
        self.config.write_text(config_text(self.landing, bootstrap, self.topic,
                                           self.receiver.url, self.runs,
                                           {k: v[0] for k, v in self.rules().items()}))
        target = make_url(self.url)
        for i in range(self.n):
            proxy = Proxy((target.host or "127.0.0.1", target.port or 5432))
            self.stack.callback(proxy.close)
            self.pg_proxies.append(proxy)
            env = daemon_env(via(self.url, proxy.port), self.workdir / f"state-{i}")
            self.replicas.append(Replica(i, self.config, env, self.workdir / f"replica-{i}.log"))
        self.stack.callback(self._stop_replicas)

    def rules(self) -> dict[str, tuple[str, Callable[[Mapping[str, Any]], bool]]]:
        return RULES

    def _start_kafka(self) -> str:
        binary = tansu_binary()
        if binary is None:
            raise RuntimeError("tansu not installed (pip install -e '.[test]')")
        url, env = self._broker_storage()
        self.broker = Tansu(binary, self.workdir / "tansu.log", storage=url, env=env)
        self.broker.start()
        self.stack.callback(self.broker.stop)
        self.topic = new_topic(self.broker.bootstrap, partitions=self.partitions, prefix="chaos")
        self.kafka_proxy = TansuProxy(binary, free_port(), self.broker.port,
                                      self.workdir / "tansu-proxy.log")
        self.kafka_proxy.start()
        self.stack.callback(lambda: self.kafka_proxy.stop() if self.kafka_proxy else None)
        return f"127.0.0.1:{self.kafka_proxy.port}"

    def _broker_storage(self) -> tuple[str, dict[str, str]]:
        """tansu's storage engine URL and environment: S3 on moto's server, so that a
        restarted broker reads back what it stored (the `restart` fault)."""
        self.storage = MotoProcess("tansu", self.workdir / "moto.log")
        self.storage.start()
        self.stack.callback(self.storage.stop)
        return s3_storage(self.storage.endpoint, self.storage.bucket)

    def start_replicas(self, timeout: float = 90) -> None:
        for rep in self.replicas:
            rep.start()
        wait_for(lambda: all(r.ready() for r in self.replicas), timeout,
                 "every replica to start")

    def _stop_replicas(self) -> None:
        for rep in self.replicas:
            with contextlib.suppress(Exception):
                rep.stop()

    def running_jobs(self, pid: int) -> dict[str, int]:
        """The jobs the replica with this pid runs, as the store says: id -> attempt."""
        assert self.engine is not None
        d, j = t.daemons.c, t.jobs.c
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(select(d.id).where(d.pid == pid))]
            if not ids:
                return {}
            rows = conn.execute(select(j.id, j.attempts).where(
                j.status == "running", j.owner.in_(ids))).all()
        return {job_id: n for job_id, n in rows}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A `triggerd` query/request command on the store (directly, not via a proxy)."""
        env = daemon_env(self.url, self.workdir / "state-cli")
        return subprocess.run([sys.executable, "-m", "triggerd", args[0], "--config",
                               str(self.config), *args[1:]], env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    def close(self) -> None:
        self.stack.close()


# -- a run: start, fault, drain, observe, check ---------------------------------------------------
def read_store(engine: Engine) -> dict[str, Any]:
    """The rows the checker needs, straight from the database."""
    def ts(value: Any) -> float | None:
        return None if value is None else float(value.timestamp())

    with engine.connect() as conn:
        events = [{"id": r.id, "source": r.source, "fingerprint": r.fingerprint,
                   "payload": r.payload, "observed_at": ts(r.observed_at)}
                  for r in conn.execute(select(t.events))]
        rule_events = [(r.rule, r.event_id, r.trigger_id)
                       for r in conn.execute(select(t.rule_events))]
        triggers = {r.id: {"rule": r.rule, "fired_at": ts(r.fired_at), "manual": r.manual}
                    for r in conn.execute(select(t.triggers))}
        jobs = {r.trigger_id: {"id": r.id, "backend": r.backend, "status": r.status,
                               "attempts": r.attempts, "finished_at": ts(r.finished_at)}
                for r in conn.execute(select(t.jobs))}
        attempts: dict[str, list[dict[str, Any]]] = {}
        for r in conn.execute(select(t.job_attempts)):
            attempts.setdefault(r.job_id, []).append(
                {"n": r.n, "owner": r.owner, "started_at": ts(r.started_at),
                 "finished_at": ts(r.finished_at), "outcome": r.outcome})
        daemons = {int(r.pid): r.id for r in conn.execute(select(t.daemons))}
    return {"events": events, "rule_events": rule_events, "triggers": triggers, "jobs": jobs,
            "attempts": attempts, "daemons": daemons}


def idle_jobs(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(t.jobs.c.id).where(t.jobs.c.status.in_(
            ["queued", "running", "retrying"])).limit(1)).first() is None


def stored_inputs(engine: Engine, files: set[str], mids: set[str]) -> tuple[int, int]:
    """How many of the published files and acknowledged messages are events."""
    e = t.events.c
    with engine.connect() as conn:
        seen_files = {p["relpath"] for (p,) in conn.execute(
            select(e.payload).where(e.source == "landing"))}
        seen_mids = {fp for (fp,) in conn.execute(
            select(e.fingerprint).where(e.source == "metrics"))}
    return len(files - seen_files), len(mids - seen_mids)


def drain(world: World, faults: Faults, workload: Workload, timeout: float
          ) -> tuple[dict[str, float], list[str]]:
    """End a run so that everything is consumed (see the module docstring). Returns, per
    cron-only rule, the time after which its events may stay pending, and what did not
    happen within `timeout` (the checker then shows what is missing)."""
    assert world.engine is not None
    engine = world.engine
    late: list[str] = []

    def settle(predicate: Callable[[], Any], what: str) -> None:
        try:
            wait_for(predicate, timeout, what, interval=1.0)
        except TimeoutError as exc:
            late.append(str(exc))
            say(f"drain: {exc}")

    faults.stop_and_undo()
    workload.stop()
    say(f"drain: workload stopped ({len(workload.files)} files, {len(workload.messages)} "
        "messages); waiting for every replica and every input")
    for rep in world.replicas:
        if not rep.alive():  # it died by itself: a finding
            rep.exits.append(rep.proc.returncode if rep.proc else -1)
            rep.start()
    settle(lambda: all(r.ready() for r in world.replicas), "every replica up")
    settle(lambda: stored_inputs(engine, workload.files, set(workload.messages)) == (0, 0),
           "every file and message stored as an event")
    exempt: dict[str, float] = {}
    for rule in world.rules():
        world.cli("pause", rule)
    for rule in world.rules():
        if rule in CRON_ONLY:
            exempt[rule] = time.time() - 2.0
        res = world.cli("fire", rule, "--wait", "60", "--reason", "chaos drain")
        say(f"drain: fire {rule}: {(res.stdout or res.stderr).strip()[:100]}")
    settle(lambda: idle_jobs(engine), "every job final")
    return exempt, late


def log_findings(world: World) -> dict[str, int]:
    """Counts of telling lines in the replicas' logs."""
    text_ = "".join(r.log.read_text(errors="replace") for r in world.replicas if r.log.exists())
    found = {"abandoned attempts (taken over)": text_.count("taken over by another daemon"),
             "takeovers (recovered jobs)": text_.count("taking over (its daemon is gone)"),
             "tracebacks": text_.count("Traceback (most recent call last)"),
             "replica exits not caused by the harness": sum(len(r.exits)
                                                            for r in world.replicas)}
    return found


def observe(world: World, workload: Workload, faults: Faults, monitor: Monitor,
            exempt: dict[str, float]) -> Observed:
    assert world.engine is not None
    rows = read_store(world.engine)
    runs = [json.loads(line) for line in world.runs.read_text().splitlines() if line] \
        if world.runs.exists() else []
    findings = log_findings(world)
    findings["harness errors"] = len(workload.errors) + len(faults.errors)
    findings["messages sent again (not acknowledged)"] = workload.resent
    for error in workload.errors + faults.errors:
        say(f"harness error: {error}")
    return Observed(
        rows["events"], rows["rule_events"], rows["triggers"], rows["jobs"],
        rows["attempts"], rows["daemons"], world.receiver.snapshot(), runs,
        set(workload.files), dict(workload.messages), exempt, faults.records,
        monitor.beats, frozenset({"hook"}), frozenset({"rec"}), findings)


def run_chaos(seed: int, duration: float, replicas: int = 3,
              kinds: list[str] | None = None, drain_timeout: float = 180,
              keep: Path | None = None) -> Figures:
    """One chaos run (see the module docstring); the checker's figures."""
    kinds = list(kinds or KINDS)
    schedule = plan(seed, duration, kinds, replicas)
    say(f"seed {seed}: {len(schedule)} faults planned over {duration:.0f}s, "
        f"{replicas} replicas")
    figures: Figures | None = None
    with tempfile.TemporaryDirectory(prefix="triggerd-chaos-") as tmp:
        world = World(Path(tmp), seed, replicas)
        try:
            world.open()
            world.start_replicas()
            assert world.engine is not None
            monitor = Monitor(world.engine)
            monitor.start()
            world.stack.callback(monitor.stop)
            workload = Workload(seed, world.landing, world.workdir / "staging",
                                f"127.0.0.1:{world.broker.port}" if world.broker else None,
                                world.topic)
            faults = Faults(schedule, world)
            t_start = time.time()
            workload.start()
            faults.start(t_start)
            world.stack.callback(faults.stop_and_undo)
            world.stack.callback(workload.stop)
            time.sleep(duration)  # the run itself: the threads work, nothing to wait for
            exempt, late = drain(world, faults, workload, drain_timeout)
            observed = observe(world, workload, faults, monitor, exempt)
            observed.log_findings["drain waits timed out"] = len(late)
            figures = check(observed, {k: v[1] for k, v in world.rules().items()})
            return figures
        finally:
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                if figures is not None:
                    (keep / "figures.json").write_text(json.dumps(
                        {"seed": seed, **figures.to_json()}, indent=2, sort_keys=True))
                for path in Path(tmp).glob("*.log*"):
                    shutil.copy(path, keep)
                for name in ("runs.jsonl", "triggerd.yaml"):
                    if (Path(tmp) / name).exists():
                        shutil.copy(Path(tmp) / name, keep)
            world.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--faults", default=",".join(KINDS),
                        help="comma-separated: " + ",".join(KINDS))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--sqlite-disk-full", action="store_true",
                        help="the separate single-daemon SQLite run on a full tmpfs")
    parser.add_argument("--keep", type=Path, help="copy logs and records to this directory")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    say(f"seed {seed}; command: {' '.join([sys.executable, *sys.argv])}")
    if args.sqlite_disk_full:
        from _chaos_diskfull import run_disk_full

        verdict = run_disk_full(seed, keep=args.keep)
        if args.json:
            print(json.dumps({"seed": seed, **verdict}, indent=2, sort_keys=True))
        else:
            print("\n".join(f"{k}: {v}" for k, v in verdict.items()
                            if k not in ("figures", "table")))
            print(verdict.get("table", ""))
        return 0 if verdict.get("ok") else 1
    kinds = [k for k in args.faults.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown fault kind(s): {', '.join(sorted(unknown))}")
    figures = run_chaos(seed, args.duration, args.replicas, kinds, keep=args.keep)
    if args.json:
        print(json.dumps({"seed": seed, **figures.to_json()}, indent=2, sort_keys=True))
    else:
        print(f"seed {seed}, {args.duration:.0f}s, {args.replicas} replicas, faults "
              f"{','.join(kinds)}; the takeover cutoff DEAD_AFTER is "
              f"{DEAD_AFTER.total_seconds():.0f}s")
        print(table(figures))
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
