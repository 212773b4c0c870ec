"""Ingest by replicas: N processes storing one stream into one PostgreSQL database at once.

`bench/ingest.py`'s workload (files landing under `/data/landing/<dataset>/`, 100 rules by
default, half of the events re-sending a file stored by an earlier batch) split between
`--writers` processes the way replicas share it: batch k of the stream goes to writer
k % N, so a re-sent file is often one that *another* writer stored, or is storing at that
moment (the duplicate check and the insert's `ON CONFLICT` settle the race). Each writer is
a fresh interpreter doing what a replica's store thread does per source batch
(`Store.ingest(source, type, events, now, ruleset.classify)`); they all call `ensure_rules`
at start, as replicas do, then wait for one start signal and store their batches as fast as
the database lets them.

Reported per run: combined events/s (stream events / time from the first writer's start to
the last writer's end), each writer's own rate, CPU of the writers and of the database's
PostgreSQL backends (from /proc) per event, and the checks below. The run fails unless the
database is exactly what one writer alone would have left:
- every distinct event of the stream stored once, and the writers' `new` counts add up to
  that (no event counted new by two writers);
- one pending membership per matching (rule, event) (`RuleSet.classify` of the distinct
  events, computed here) and no other;
- each group's pending summary (`pending_count`, `pending_bytes`) equal to its memberships.

    .venv/bin/python bench/ingest_replicas.py                      # 1 then 3 writers, 300,000
    .venv/bin/python bench/ingest_replicas.py --writers 1,3,3,1 --events 200000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from ingest import (  # noqa: E402
    DEFAULT_PG,
    SOURCE,
    SOURCE_TYPE,
    Databases,
    backend_cpu,
    batches,
    machine,
    make_rules,
    n_datasets,
)

from triggerd.engine.matching import RuleSet  # noqa: E402
from triggerd.store import Store  # noqa: E402


@dataclass
class Job:
    url: str
    rules: int
    events: int
    batch: int
    seed: int
    writers: int
    index: int


@dataclass
class Done:
    index: int
    started: float
    ended: float
    cpu_s: float
    inputs: int
    new: int


def writer(job: Job) -> None:
    """One replica's store: its share of the stream, after the start signal on stdin."""
    specs = make_rules(job.rules, "spread")
    ruleset = RuleSet(specs)
    mine = [b for k, b in enumerate(batches(job.events, job.batch, n_datasets(job.rules),
                                            job.seed)) if k % job.writers == job.index]
    store = Store(job.url)
    try:
        store.ensure_rules(specs, [n for n, s in specs.items() if s.group_by is None],
                           datetime.now(UTC))
        with store.read() as c:  # the pool's connection made before the clock starts
            c.exec_driver_sql("SELECT 1")
        print("ready", flush=True)
        if sys.stdin.readline() != "go\n":  # the parent gave up (another writer failed)
            return
        new = 0
        c0, t0 = time.process_time(), time.time()
        for events in mine:
            new += len(store.ingest(SOURCE, SOURCE_TYPE, events, events[0].observed_at,
                                    ruleset.classify).new)
        t1, c1 = time.time(), time.process_time()
        # reported while connected: the parent reads this database's backends' CPU now
        print(json.dumps(asdict(Done(job.index, t0, t1, c1 - c0, sum(map(len, mine)), new))),
              flush=True)
        sys.stdin.readline()
    finally:
        store.close()


@dataclass
class Run:
    writers: int
    events: int
    seconds: float
    rate: float
    rates: list[float]
    writers_cpu_us: float
    pg_cpu_us: float
    load: float
    checks: str


def expected(rules: int, events: int, batch: int, seed: int) -> tuple[int, int]:
    """Distinct events of the stream and their pending memberships (one writer's result)."""
    ruleset = RuleSet(make_rules(rules, "spread"))
    seen: dict[str, Any] = {}
    for b in batches(events, batch, n_datasets(rules), seed):
        for e in b:
            seen.setdefault(e.id, e)
    return len(seen), sum(len(it.pending) for it in ruleset.classify(list(seen.values())))


def check(store: Store, distinct: int, pending: int, new: int) -> str:
    with store.read() as c:
        n_events = c.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
        n_pending = c.exec_driver_sql(
            "SELECT count(*) FROM rule_events WHERE trigger_id IS NULL").scalar_one()
        wrong_groups = c.exec_driver_sql(
            "SELECT count(*) FROM rule_groups g LEFT JOIN ("
            " SELECT rule, grp, count(*) AS n, sum(size) AS b FROM rule_events"
            " WHERE trigger_id IS NULL GROUP BY rule, grp) m"
            " ON m.rule = g.rule AND m.grp = g.grp"
            " WHERE g.pending_count <> coalesce(m.n, 0)"
            " OR g.pending_bytes <> coalesce(m.b, 0)").scalar_one()
        orphans = c.exec_driver_sql(
            "SELECT count(*) FROM (SELECT rule, grp FROM rule_events EXCEPT"
            " SELECT rule, grp FROM rule_groups) x").scalar_one()
    problems = []
    if n_events != distinct:
        problems.append(f"events stored {n_events}, distinct in the stream {distinct}")
    if new != distinct:
        problems.append(f"writers counted {new} new, distinct {distinct}")
    if n_pending != pending:
        problems.append(f"pending memberships {n_pending}, expected {pending}")
    if wrong_groups:
        problems.append(f"{wrong_groups} group summaries differ from their memberships")
    if orphans:
        problems.append(f"{orphans} (rule, group) pairs with memberships but no group row")
    return "; ".join(problems) or "OK"


def run(dbs: Databases, args: argparse.Namespace, writers: int,
        want: tuple[int, int]) -> Run:
    url = dbs.postgresql()  # truncated and analysed
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(asdict(Job(
            url, args.rules, args.events, args.batch, args.seed, writers, i)))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(writers)]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"writer exited before it was ready (exit {p.wait()})")
    store = Store(url)
    try:
        pg0 = backend_cpu(store)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise SystemExit(f"writer failed (exit {p.wait()})")
            outs.append(Done(**json.loads(line)))
        pg1 = backend_cpu(store)  # every writer still connected
        for p in procs:
            p.communicate("bye\n")
        checks = check(store, *want, sum(d.new for d in outs))
    finally:
        store.close()
    pg_cpu = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
    seconds = max(d.ended for d in outs) - min(d.started for d in outs)
    return Run(writers, args.events, seconds, args.events / seconds,
               [d.inputs / (d.ended - d.started) for d in outs],
               1e6 * sum(d.cpu_s for d in outs) / args.events, 1e6 * pg_cpu / args.events,
               os.getloadavg()[0], checks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--writers", default="1,3", help="comma-separated writer counts, in order")
    p.add_argument("--events", type=int, default=300_000, help="events in the stream")
    p.add_argument("--rules", type=int, default=100)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pg-url", default=os.environ.get("TRIGGERD_BENCH_PG", DEFAULT_PG))
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        writer(Job(**json.loads(args.child)))
        return 0
    print(f"# {machine()}")
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    want = expected(args.rules, args.events, args.batch, args.seed)
    print(f"# stream: {args.events:,} events, {want[0]:,} distinct, {want[1]:,} pending "
          f"memberships, {args.rules} rules, batches of {args.batch}", flush=True)
    dbs = Databases(args.pg_url)
    results = []
    try:
        print("writers  seconds  events/s  per writer (events/s)   writers us/ev  pg us/ev  "
              "load  checks", flush=True)
        for n in (int(x) for x in args.writers.split(",")):
            r = run(dbs, args, n, want)
            results.append(r)
            print(f"{r.writers:>7}  {r.seconds:7.2f}  {r.rate:8,.0f}  "
                  f"{' / '.join(f'{x:,.0f}' for x in r.rates):<22}  {r.writers_cpu_us:13.1f}  "
                  f"{r.pg_cpu_us:8.1f}  {r.load:4.1f}  {r.checks}", flush=True)
    finally:
        dbs.cleanup()
    if args.json:
        print(json.dumps([asdict(r) for r in results]))
    return 0 if all(r.checks == "OK" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
