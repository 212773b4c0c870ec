"""Ingest benchmark: synthetic events through match + dedup + store, in events/s.

Measures exactly what the daemon does per source batch (`Engine.submit`, without the trigger
decision that follows):

    store.ingest(source, "filesystem", events, now, ruleset.classify)

(`Store.ingest` drops known duplicates first and calls `classify` on the new events only.)

Workload: events look like files landing in `/data/landing/<dataset>/part-<i>.parquet` (kind
`created`, a sha256 fingerprint, a payload with path/relpath/dir/name/size/mtime). Half of the
events re-send a file stored in an earlier batch (a rescan): same fingerprint, so a duplicate.
Rules listen on the source with `kinds`, a `subject` glob and a `where`; every third rule has
`group_by: "{payload.dir}"`. In the "spread" layout each dataset is watched by one or two rules,
so an event becomes pending in ~1.7 rules; the "all-match" layout (worst case) has every rule
watch `/data/landing/**`, so every event is pending in every rule.

Each configuration runs in a fresh child process against a fresh, migrated database, so the
peak RSS column is that configuration's own. Timing covers classify + ingest only; building the
synthetic events is not timed. `ev/cpu-s` divides by the bench process's CPU time in the timed
part (less sensitive to other load on the machine; PostgreSQL's server time is not in it);
`ev/pg-cpu` divides by the CPU time of the store's PostgreSQL backends over the timed batches (read
from /proc: the server must be on this machine; the WAL writer's and checkpointer's share is
not in it).
Configurations with more than 100 rules run --many-rules-events (20,000) events by default.

    .venv/bin/python bench/ingest.py                     # the default matrix (~2 minutes)
    .venv/bin/python bench/ingest.py --db sqlite --rules 100 --no-extras
    .venv/bin/python bench/ingest.py --profile --db sqlite --rules 100
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import platform
import pstats
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from triggerd.config.schema import RuleSpec  # noqa: E402
from triggerd.engine.matching import RuleSet  # noqa: E402
from triggerd.model import Event  # noqa: E402
from triggerd.store import Store  # noqa: E402

SOURCE = "landing"
SOURCE_TYPE = "filesystem"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MTIME0 = 1_730_000_000.0
SHM = "/dev/shm"  # noqa: S108 - tmpfs, for the comparison run


# -- workload -----------------------------------------------------------------------------------
def n_datasets(n_rules: int) -> int:
    """Datasets for the spread layout: rule k watches dataset k % D, so each has 1-2 rules."""
    return max(1, round(n_rules * 0.6))


def make_rules(n_rules: int, layout: str) -> dict[str, RuleSpec]:
    d_count = n_datasets(n_rules)
    specs: dict[str, RuleSpec] = {}
    for k in range(n_rules):
        ds = f"ds{k % d_count}"
        if layout == "all-match":
            subject = "/data/landing/**"
        elif k % 4 == 1:
            subject = f"/data/landing/{ds}/**/*.parquet"
        else:
            subject = f"/data/landing/{ds}/**"
        where = ("payload.size > 0 and payload.name.endswith('.parquet')" if k % 5 == 4
                 else "payload.size > 0")
        raw: dict[str, Any] = {
            "on": [SOURCE],
            "match": {"kinds": ["created", "modified"], "subject": subject, "where": where},
            "when": {"min_events": 1 + k % 50, "debounce": "5m"} if k % 2
            else {"min_bytes": "10GB", "max_delay": "1h", "debounce": "10m"},
            "dispatch": {"backend": "b", "params": {"model": f"m{k}"}},
        }
        if k % 3 == 0:
            raw["group_by"] = "{payload.dir}"
        specs[f"rule-{k:04d}"] = RuleSpec.model_validate(raw)
    return specs


def make_event(i: int, d_count: int, now: datetime) -> Event:
    """The i-th landed file; deterministic in i, so a re-sent file has the same fingerprint."""
    ds = f"ds{(i * 7919) % d_count}"
    name = f"part-{i:07d}.parquet"
    relpath = f"{ds}/{name}"
    path = f"/data/landing/{relpath}"
    size = 1 + (i * 2654435761) % 512_000_000
    mtime = MTIME0 + i * 0.013
    fp = hashlib.sha256(f"{path}\0{size}\0{mtime!r}".encode()).hexdigest()
    return Event(source=SOURCE, kind="created", subject=path, fingerprint=fp,
                 payload={"path": path, "relpath": relpath, "dir": ds, "name": name,
                          "size": size, "mtime": mtime},
                 observed_at=now)


def batches(n_events: int, batch: int, d_count: int, seed: int) -> Iterator[list[Event]]:
    """Yield event batches: every odd position re-sends a file from an earlier batch."""
    rng = random.Random(seed)
    next_new = 0
    for start in range(0, n_events, batch):
        stored = next_new  # files stored by earlier batches: 0 .. stored-1
        now = datetime.now(UTC)
        out = []
        for j in range(start, min(start + batch, n_events)):
            if j % 2 and stored:
                out.append(make_event(rng.randrange(stored), d_count, now))
            else:
                out.append(make_event(next_new, d_count, now))
                next_new += 1
        yield out


# -- one configuration (run in a child process) ---------------------------------------------------
@dataclass
class Config:
    label: str
    url: str
    rules: int
    layout: str
    batch: int
    events: int
    seed: int = 1


@dataclass
class Result:
    label: str
    rules: int
    layout: str
    batch: int
    events: int
    new: int
    dups: int
    pending: int
    seconds: float
    classify_s: float
    cpu_s: float
    rss_mb: float
    load: float = 0.0  # 1-minute load average after the run (other work on the machine)
    server_cpu_s: float = 0.0  # PostgreSQL: CPU time of the store's backends (0: unknown)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def run_config(cfg: Config, profiler: cProfile.Profile | None = None) -> Result:
    specs = make_rules(cfg.rules, cfg.layout)
    ruleset = RuleSet(specs)
    d_count = n_datasets(cfg.rules)
    store = Store(cfg.url)
    try:
        now = datetime.now(UTC)
        # what the daemon does once at start-up (Engine.start), not timed
        store.ensure_rules(specs, [n for n, s in specs.items() if s.group_by is None], now)
        new = dups = pending = 0
        t_classify = t_total = t_cpu = 0.0
        server0 = backend_cpu(store)
        perf, cpu = time.perf_counter, time.process_time
        for events in batches(cfg.events, cfg.batch, d_count, cfg.seed):
            now = events[0].observed_at
            if profiler is not None:
                profiler.enable()
            c0, t0 = cpu(), perf()
            timed = _Timed(ruleset.classify)
            res = store.ingest(SOURCE, SOURCE_TYPE, events, now, timed)
            t1 = t0 + timed.seconds
            t2, c2 = perf(), cpu()
            if profiler is not None:
                profiler.disable()
            t_classify += t1 - t0
            t_total += t2 - t0
            t_cpu += c2 - c0
            new += len(res.new)
            dups += res.duplicates
            fresh = set(res.new)
            pending += sum(len(it.pending) for it in timed.items if it.event.id in fresh)
        server = backend_cpu(store)
        server_cpu = sum(v - server0.get(pid, 0.0) for pid, v in server.items())
        check_counts(store, new, pending)
    finally:
        store.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return Result(cfg.label, cfg.rules, cfg.layout, cfg.batch, cfg.events, new, dups, pending,
                  t_total, t_classify, t_cpu, rss, server_cpu_s=server_cpu)


def backend_cpu(store: Store) -> dict[int, float]:
    """PostgreSQL on this machine: CPU seconds so far of each backend connected to the
    store's database (from /proc; the bench's own pool, as nothing else uses the scratch
    database). Untimed; empty on SQLite or if /proc does not show them."""
    if store.dialect != "postgresql":
        return {}
    with store.read() as c:
        pids = [row[0] for row in c.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    return {pid: cpu for pid in pids if (cpu := proc_cpu(pid)) is not None}


def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc (None if it is not visible)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_counts(store: Store, new: int, pending: int) -> None:
    """The database agrees with the counts (not timed): the bench measured real work."""
    from sqlalchemy import func, select

    from triggerd.store import tables as t

    with store.read() as c:
        n_events = c.execute(select(func.count()).select_from(t.events)).scalar_one()
        n_pending = c.execute(select(func.count()).select_from(t.rule_events)).scalar_one()
    if (n_events, n_pending) != (new, pending):
        raise SystemExit(f"store mismatch: events {n_events} != {new} or "
                         f"rule_events {n_pending} != {pending}")


# -- databases ------------------------------------------------------------------------------------
class Databases:
    """Fresh, migrated stores: one SQLite file per run, one PostgreSQL database truncated."""

    def __init__(self, pg_admin_url: str) -> None:
        self.pg_admin_url = pg_admin_url
        self.tmp: dict[str, Path] = {}
        self.pg_url: str | None = None
        self.pg_name: str | None = None

    def sqlite(self, base: str) -> str:
        if base not in self.tmp:
            self.tmp[base] = Path(tempfile.mkdtemp(prefix="triggerd-bench-", dir=base))
        path = self.tmp[base] / f"{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite:///{path}"
        _migrate(url)
        return url

    def postgresql(self) -> str:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        from triggerd.store.tables import metadata

        if self.pg_url is None:
            self.pg_name = f"triggerd_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(self.pg_admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.pg_name}"'))
            admin.dispose()
            self.pg_url = make_url(self.pg_admin_url).set(database=self.pg_name) \
                .render_as_string(hide_password=False)
            _migrate(self.pg_url)
        engine = create_engine(self.pg_url)
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
        engine.dispose()
        return self.pg_url

    def cleanup(self) -> None:
        for path in self.tmp.values():
            shutil.rmtree(path, ignore_errors=True)
        if self.pg_name is not None:
            from sqlalchemy import create_engine, text

            admin = create_engine(self.pg_admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = :n"), {"n": self.pg_name})
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.pg_name}"'))
            admin.dispose()


def _migrate(url: str) -> None:
    store = Store(url)
    try:
        store.upgrade()
    finally:
        store.close()


def url_for(dbs: Databases, label: str) -> str:
    if label == "postgresql":
        return dbs.postgresql()
    return dbs.sqlite(SHM if "shm" in label else tempfile.gettempdir())


def run_child(cfg: Config) -> Result:
    """Run one configuration in a fresh interpreter (its own peak RSS, no warm caches)."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(asdict(cfg))],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"configuration {cfg} failed (exit {proc.returncode})")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["load"] = os.getloadavg()[0]
    return Result(**data)


# -- output ---------------------------------------------------------------------------------------
LIVE_WIDTHS = (15, 5, 9, 5, 7, 7, 7, 8, 7, 8, 8, 8, 8, 4, 8)
HEADER = ("database", "rules", "layout", "batch", "events", "new", "dups", "pend/new",
          "seconds", "events/s", "classify", "ev/cpu-s", "ev/pg-cpu", "load", "peak RSS")


def row(r: Result) -> tuple[str, ...]:
    return (r.label, str(r.rules), r.layout, str(r.batch), f"{r.events:,}", f"{r.new:,}",
            f"{r.dups:,}", f"{r.pending / r.new:.2f}" if r.new else "-", f"{r.seconds:.2f}",
            f"{r.rate:,.0f}", f"{100 * r.classify_s / r.seconds:.0f}%" if r.seconds else "-",
            f"{r.events / r.cpu_s:,.0f}" if r.cpu_s else "-",
            f"{r.events / r.server_cpu_s:,.0f}" if r.server_cpu_s else "-", f"{r.load:.1f}",
            f"{r.rss_mb:.0f} MB")


def print_table(results: list[Result], markdown: bool) -> None:
    rows = [HEADER, *(row(r) for r in results)]
    if markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "|".join("---" if i < 3 else "---:" for i in range(len(HEADER))) + "|")
        for r in rows[1:]:
            print("| " + " | ".join(r) + " |")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    for n, r in enumerate(rows):
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


# -- profile --------------------------------------------------------------------------------------
CATEGORIES = (
    ("classify: where (simpleeval)", ("simpleeval", "triggerd/language/expr.py")),
    ("classify: rule loop, globs, templates", ("triggerd/engine/", "fullmatch")),
    ("event.id (blake2b, per access)", ("triggerd/model.py", "blake2b")),
    ("JSON serialisation", ("json/", "_json", "json.", "dumps", "encode_basestring")),
    ("datetime bind (UTCDateTime)",
     ("triggerd/store/tables.py", "astimezone", "replace' of 'datetime")),
    ("driver (sqlite3 / psycopg)", ("sqlite3", "psycopg")),
    ("SQLAlchemy Core (compile, params, result)", ("sqlalchemy/",)),
    ("Store.ingest own code", ("triggerd/store/",)),
)


def categorise(key: tuple[str, int, str]) -> str:
    text = f"{key[0]}:{key[2]}"
    for name, needles in CATEGORIES:
        if any(n in text for n in needles):
            return name
    return "other (builtins, dataclasses, ...)"


def profile(cfg: Config, top: int) -> None:
    profiler = cProfile.Profile()
    result = run_config(cfg, profiler)
    result.load = os.getloadavg()[0]
    print_table([result], markdown=False)
    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    by_cat: dict[str, float] = {}
    other: list[tuple[float, str]] = []
    for key, (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        cat = categorise(key)
        by_cat[cat] = by_cat.get(cat, 0.0) + tt
        if cat.startswith("other"):
            name = key[2] if key[0] == "~" else f"{Path(key[0]).name}:{key[1]}({key[2]})"
            other.append((tt, name))
    print(f"\ntimed split (profiler on): classify {result.classify_s:.2f}s, ingest "
          f"{result.seconds - result.classify_s:.2f}s of {result.seconds:.2f}s")
    print(f"profile of classify + ingest (own time by area, total {total:.2f}s under cProfile, "
          "which inflates Python-call-heavy code such as classify)")
    for cat, tt in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * tt / total:5.1f}%  {tt:6.2f}s  {cat}")
    print("  largest in 'other': " + "; ".join(
        f"{name} {tt:.2f}s" for tt, name in sorted(other, reverse=True)[:6]))
    for sort in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats(sort).print_stats(top)
        print(f"\ntop {top} by {sort}:")
        print("\n".join(buf.getvalue().splitlines()[6:]))


# -- main -----------------------------------------------------------------------------------------
def plan(args: argparse.Namespace) -> list[Config]:
    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    labels = {"sqlite": "sqlite /tmp", "postgresql": "postgresql"}
    rules = [int(x) for x in args.rules.split(",")]
    def events(n: int) -> int:
        if n > 100 and args.many_rules_events:
            return min(int(args.events), int(args.many_rules_events))
        return int(args.events)

    cfgs = [Config(labels[d], "", n, "spread", args.batch, events(n), args.seed)
            for d in dbs for n in rules]
    if args.extras:
        ref = 100 if 100 in rules else rules[0]
        if "sqlite" in dbs:
            cfgs.append(Config("sqlite /dev/shm", "", ref, "spread", args.batch, args.events,
                               args.seed))
        cfgs += [Config(labels[d], "", ref, "spread", 1, args.batch1_events, args.seed)
                 for d in dbs]
        cfgs += [Config(labels[d], "", args.worst_rules, "all-match", args.batch,
                        args.worst_events, args.seed) for d in dbs]
    return cfgs


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sqlalchemy

    return (f"{os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}, "
            f"SQLAlchemy {sqlalchemy.__version__}, SQLite {_sqlite_version()}")


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


class _Timed:
    """Wraps the classifier that Store.ingest calls on the new events, timing it."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.seconds = 0.0
        self.items: list[Any] = []

    def __call__(self, events: Any) -> Any:
        t0 = time.perf_counter()
        try:
            self.items = self.fn(events)
            return self.items
        finally:
            self.seconds += time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--rules", default="1,100,1000", help="comma-separated rule counts")
    p.add_argument("--events", type=int, default=100_000, help="events per configuration")
    p.add_argument("--batch", type=int, default=500, help="events per classify+ingest call")
    p.add_argument("--extras", action=argparse.BooleanOptionalAction, default=True,
                   help="also run /dev/shm, batch 1 and the all-match worst case")
    p.add_argument("--many-rules-events", type=int, default=20_000,
                   help="cap on events for configurations with more than 100 rules (classify "
                        "is O(rules), so they take long; 0 = no cap)")
    p.add_argument("--batch1-events", type=int, default=2_000,
                   help="events for the batch-1 runs (one transaction per event is slow)")
    p.add_argument("--worst-events", type=int, default=5_000,
                   help="events for the all-match runs (pending rows = new events x rules)")
    p.add_argument("--worst-rules", type=int, default=100,
                   help="rules in the all-match runs (every event matches every rule)")
    p.add_argument("--pg-url", default=os.environ.get("TRIGGERD_BENCH_PG", DEFAULT_PG),
                   help="admin URL; a scratch database is created on it and dropped after")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    p.add_argument("--profile", action="store_true",
                   help="cProfile one configuration (first --db/--rules) in-process")
    p.add_argument("--top", type=int, default=25, help="rows of the profile listings")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        result = run_config(Config(**json.loads(args.child)))
        print(json.dumps(asdict(result)))
        return 0

    dbs = Databases(args.pg_url)
    try:
        if args.profile:
            cfg = plan(argparse.Namespace(**{**vars(args), "extras": False}))[0]
            cfg.url = url_for(dbs, cfg.label)
            profile(cfg, args.top)
            return 0
        print(f"# {machine()}")
        print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
        results = []
        started = time.perf_counter()
        live = [max(len(h), w) for h, w in zip(HEADER, LIVE_WIDTHS, strict=True)]
        print("  ".join(h.ljust(w) if i < 3 else h.rjust(w)
                        for i, (h, w) in enumerate(zip(HEADER, live, strict=True))), flush=True)
        for cfg in plan(args):
            cfg.url = url_for(dbs, cfg.label)
            results.append(run_child(cfg))
            print("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(row(results[-1]), live, strict=True))),
                  flush=True)
        print(f"\n# wall time {time.perf_counter() - started:.0f}s; seconds = classify + ingest "
              "only; classify = its share; pend/new = pending rows per new event")
        print("\nsummary:")
        print_table(results, markdown=False)
        if args.markdown:
            print()
            print_table(results, markdown=True)
    finally:
        dbs.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
