"""The filesystem source through the real daemon: publishing by `mv` from a staging directory,
and a FIFO in the landing directory.

A file written in a staging directory outside the watched root and then moved in is how many
writers publish atomically: it must start its job at once, not at the next `rescan` (1 h
here). A FIFO with a matching name must neither block the source nor the daemon's stop: it is
skipped, and `triggerd status` shows it counted. Every wait is on a condition with a timeout
(`harness.wait_for`), never a sleep.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness import Triggerd, wait_for

OLD_NS = 1_000_000_000_000_000_000  # 2001: complete long before it was published


def per_file_config(td: Triggerd, landing: Path, settle: str) -> None:
    """One rule firing per event into a recording command (no `when`: no quiet period)."""
    rec = td.recorder()
    landing.mkdir(parents=True, exist_ok=True)
    td.write(f"""
        state_dir: state
        sources:
          landing:
            type: filesystem
            paths: [{landing}]
            patterns: ["**/*.parquet"]
            settle: {settle}
            rescan: 1h
        backends:
          train: {{type: command, argv: [python3, {rec}]}}
        rules:
          per-file:
            on: [landing]
            dispatch: {{backend: train}}
    """)


def dispatched(td: Triggerd) -> set[str]:
    """The relative paths of the files that reached the command."""
    return {fp.split(":")[0] for call in td.calls_made() for fp in call["events"]}


def test_a_file_moved_in_from_staging_starts_its_job_within_seconds(td: Triggerd) -> None:
    landing, staging = td.root / "landing", td.root / "staging"
    per_file_config(td, landing, "5s")  # the default settle
    staging.mkdir()
    for name in ("a.parquet", "b.parquet"):
        (staging / name).write_bytes(f"rows of {name}".encode())
        os.utime(staging / name, ns=(OLD_NS, OLD_NS))
    proc = td.start()
    td.wait_running(proc)
    wait_for(lambda: td.json("status")["sources"][0]["details"].get("last_scan_at"), 20,
             "the start-up scan")
    t0 = time.monotonic()
    os.rename(staging / "a.parquet", landing / "a.parquet")
    wait_for(lambda: "a.parquet" in dispatched(td), 4, "the moved-in file's job")
    assert time.monotonic() - t0 < 4  # not the settle (5 s), nor the rescan (1 h)
    # a directory published the same way
    (staging / "batch").mkdir()
    os.rename(staging / "b.parquet", staging / "batch" / "b.parquet")
    os.rename(staging / "batch", landing / "batch")
    wait_for(lambda: "batch/b.parquet" in dispatched(td), 4, "the moved-in directory's job")
    # the job's end is recorded a moment after its process wrote the call
    wait_for(lambda: [j["status"] for j in td.json("jobs")] == ["succeeded"] * 2, 20,
             "both jobs to be recorded as succeeded")
    assert td.stop(proc) == 0


def test_a_fifo_in_the_landing_directory_is_skipped_counted_and_sigterm_still_stops(
        td: Triggerd) -> None:
    landing = td.root / "landing"
    per_file_config(td, landing, "200ms")
    proc = td.start()
    td.wait_running(proc)
    os.mkfifo(landing / "pipe.parquet")  # a name the patterns match
    (landing / "a.parquet").write_bytes(b"rows")
    wait_for(lambda: "a.parquet" in dispatched(td), 20, "the regular file's job")

    def counted() -> dict[str, object] | None:
        source = td.json("status")["sources"][0]
        return source if source["details"].get("not_regular") == 1 else None
    source = wait_for(counted, 20, "the FIFO to be counted in `triggerd status`")
    assert source["rejected"] == {"not_regular": 1}
    assert source["healthy"] is True
    assert "not_regular=1" in td.cli("status").stdout
    [reject] = td.json("events", "--rejected")
    assert reject["ref"] == str(landing / "pipe.parquet") and reject["kind"] == "not_regular"
    assert "is a FIFO, not a regular file" in td.log()

    t0 = time.monotonic()
    assert td.stop(proc, timeout=10) == 0
    assert time.monotonic() - t0 < 10
    assert dispatched(td) == {"a.parquet"}
