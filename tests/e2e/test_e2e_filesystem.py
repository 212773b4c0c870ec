"""The filesystem source through the real daemon: batches, and files landing while it is down."""

from __future__ import annotations

import collections
import signal

from harness import Triggerd, wait_for


def landing_config(td: Triggerd) -> None:
    rec = td.recorder()
    (td.root / "landing").mkdir()
    td.write(f"""
        state_dir: state
        sources:
          landing:
            type: filesystem
            paths: [{td.root / "landing"}]
            patterns: ["**/*.parquet"]
            settle: 200ms
        backends:
          train: {{type: command, argv: [python3, {rec}]}}
        rules:
          new-data:
            on: [landing]
            when: {{min_events: 3, debounce: 1s}}
            dispatch: {{backend: train}}
    """)


def land(td: Triggerd, *names: str) -> None:
    for name in names:
        path = td.root / "landing" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"rows of {name}".encode())


def test_a_batch_of_files_fires_once_after_the_quiet_period(td: Triggerd) -> None:
    landing_config(td)
    proc = td.start()
    td.wait_running(proc)
    land(td, "a.parquet", "b.parquet", "x/c.parquet", "ignored.csv", "d.parquet.tmp")
    wait_for(td.calls_made, 20, "the batch to fire")
    (call,) = td.calls_made()
    assert sorted(fp.split(":")[0] for fp in call["events"]) == [
        "a.parquet", "b.parquet", "x/c.parquet"]
    land(td, "a.parquet")  # the same content again: a duplicate, not a new event
    source = wait_for(lambda: next((s for s in td.json("status")["sources"]
                                    if s["duplicates"] >= 1), None), 20, "the duplicate")
    assert source["events"] == 3
    assert td.stop(proc) == 0
    assert len(td.calls_made()) == 1
    details = td.json("status")["sources"][0]["details"]  # what the source reported
    assert details["roots_watched"] == 1 and details["files_tracked"] == 3  # *.parquet only
    assert details["last_scan_at"] and details["last_scan_seconds"] >= 0
    assert details["overflows"] == 0
    assert "files_tracked=3" in td.cli("status").stdout


def test_kill_9_then_20_files_land_while_down_each_in_exactly_one_trigger(td: Triggerd
                                                                         ) -> None:
    landing_config(td)
    proc = td.start()
    td.wait_running(proc)
    land(td, "first-1.parquet", "first-2.parquet", "first-3.parquet")
    wait_for(td.calls_made, 20, "the first batch")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    land(td, *(f"down/{i:02d}.parquet" for i in range(20)))

    proc = td.start(log="restart.log")
    td.wait_running(proc)

    def all_dispatched() -> bool:
        seen = {fp for c in td.calls_made() for fp in c["events"]}
        return len(seen) >= 23
    wait_for(all_dispatched, 30, "every file in a trigger")
    assert td.stop(proc) == 0
    # a job running at the kill is resumed after the restart (the command backend runs it
    # again, with the same trigger id): count triggers, not runs
    triggers = {c["trigger"]: c["events"] for c in td.calls_made()}
    per_event = collections.Counter(fp for events in triggers.values() for fp in events)
    assert len(per_event) == 23 and max(per_event.values()) == 1
    assert {fp.split(":")[0] for fp in per_event} >= {f"down/{i:02d}.parquet"
                                                      for i in range(20)}
