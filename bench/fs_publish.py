"""Latency of staging-then-`mv` publishing through the REAL daemon: from the `os.rename` of a
file into the watched root (from a staging directory outside it, on the same tmpfs) to its
event being stored.

A file moved in is looked at at once (no settle delay); one whose mtime is already `settle`
old is then an event at once, whatever `settle` is. So the default run moves in files that
were complete long ago (an old mtime) under the default `settle: 5s`, with `rescan: 1h`: every
figure far under 5 s shows that neither the settle timer nor the rescan found the file.
`--fresh` moves in files written just before (they then settle like a file written in place:
expect ~`--settle`).

Reported: rename -> `events.observed_at` (the source concluded; the store write follows in
the same batch) and rename -> the event row visible to a reader of the store (polled every
2 ms, so up to ~2 ms late), p50 / p90 / max over `--files` repetitions, one file at a time.

    .venv/bin/python bench/fs_publish.py                    # 20 files, ~10 s
    .venv/bin/python bench/fs_publish.py --fresh --settle 1s
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from filesystem import (  # bench/filesystem.py: the workspace and daemon helpers
    HOLD_RULE,
    NOOP_BACKEND,
    Daemon,
    Workspace,
    parse_ts,
    pct,
    wait_for,
)

OLD_NS = 1_000_000_000_000_000_000  # 2001


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--settle", default=None, help="default: the source's (5s)")
    p.add_argument("--fresh", action="store_true", help="move in just-written files")
    p.add_argument("--state-base", default="/tmp", help="where the store lives")  # noqa: S108
    args = p.parse_args(argv)

    ws = Workspace(args.state_base)
    try:
        staging = ws.shm / "staging"  # outside the root, on its filesystem (rename(2))
        staging.mkdir()
        settle = f"settle: {args.settle}\n" if args.settle else ""
        ws.write_config(source=f"type: filesystem\npaths: [{ws.landing}]\n{settle}"
                               "rescan: 1h\nfingerprint: sha256\n",
                        backend=NOOP_BACKEND, rule=HOLD_RULE)
        d = Daemon(ws, "publish.log")
        try:
            d.wait_running()
            wait_for(lambda: ws.details().get("last_scan_at"), 30, "the start-up scan")
            observed: list[float] = []
            visible: list[float] = []
            for i in range(args.files):
                staged, target = staging / f"f{i:03d}.parquet", ws.landing / f"f{i:03d}.parquet"
                staged.write_bytes(b"x" * 4096 + str(i).encode())
                if not args.fresh:
                    os.utime(staged, ns=(OLD_NS, OLD_NS))
                t0 = time.time()
                os.rename(staged, target)

                def stored(path: Path = target) -> str | None:
                    d.alive()
                    rows = ws.query("SELECT observed_at FROM events WHERE subject = ?",
                                    str(path))
                    return str(rows[0][0]) if rows else None
                at = wait_for(stored, 30, f"the event of {target.name}", 0.002)
                visible.append(time.time() - t0)
                observed.append(parse_ts(at) - t0)
        finally:
            rc = d.stop()
        if rc != 0:
            raise SystemExit(f"the daemon exited {rc} on SIGTERM")
    finally:
        ws.cleanup()

    def line(name: str, values: list[float]) -> str:
        return (f"{name:<28} p50 {pct(values, 50) * 1000:8.1f} ms   p90 "
                f"{pct(values, 90) * 1000:8.1f} ms   max {max(values) * 1000:8.1f} ms")
    print(f"moved in from staging: {args.files} files, "
          f"{'fresh' if args.fresh else 'old mtime'}, settle {args.settle or '5s (default)'}, "
          f"rescan 1h")
    print(line("rename -> observed_at", observed))
    print(line("rename -> event in store", visible))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
