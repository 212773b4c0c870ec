"""Retention pruning beside many pending memberships: how long `Store.prune` holds the store.

The store holds `--pending` recent events, each pending in two rules (a rule that
accumulates: a `min_bytes`, a long batch), and `--old` events older than the retention that
no rule took (their triggers already pruned, or no rule matched them): prune must delete the
old ones and keep the rest. Rows are inserted directly (not timed); one `prune` is timed.

    .venv/bin/python bench/prune.py --pending 200000 --old 4000
    .venv/bin/python bench/prune.py --pending 200000 --old 4000 \\
        --store postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert

from triggerd.store import Store
from triggerd.store import tables as t

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import Databases


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--pending", type=int, default=200_000, help="recent events, 2 rules each")
    p.add_argument("--old", type=int, default=4_000, help="prunable old events")
    p.add_argument("--store", help="a PostgreSQL server URL (a scratch database is made); "
                   "default: a SQLite file")
    args = p.parse_args()
    dbs = Databases(args.store) if args.store else None
    try:
        url = dbs.postgresql() if dbs else f"sqlite:///{tempfile.mkdtemp()}/prune.db"
        store = Store(url)
        store.upgrade()
        now = datetime.now(UTC)
        old = now - timedelta(days=30)
        total = args.old + args.pending
        with store.write() as c:
            c.execute(insert(t.events), [
                {"id": f"e{i:09d}", "source": "s", "fingerprint": str(i), "kind": "created",
                 "subject": f"/data/{i}", "payload": {}, "size": 1,
                 "observed_at": old if i < args.old else now} for i in range(total)])
            c.execute(insert(t.rule_events), [
                {"rule": f"r{k}", "event_id": f"e{i:09d}", "grp": "", "size": 1,
                 "observed_at": now, "trigger_id": None}
                for i in range(args.old, total) for k in range(2)])
        t0 = time.perf_counter()
        removed = store.prune(now - timedelta(days=7))
        seconds = time.perf_counter() - t0
        store.close()
    finally:
        if dbs:
            dbs.cleanup()
    print(f"{url.split(':')[0]}: {args.pending:,} events pending in 2 rules "
          f"({2 * args.pending:,} memberships), {args.old:,} old: pruned {removed:,} rows "
          f"in {seconds:.2f} s")
    return 0 if removed == args.old else 1


if __name__ == "__main__":
    raise SystemExit(main())
