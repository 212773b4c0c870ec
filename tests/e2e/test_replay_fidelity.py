"""Replay's fidelity: the daemon runs live over a scripted timeline of files landing, then
`triggerd replay` replays its stored events with the same config, through the same engine, and
gets the same triggers with the same events in each (what actually happened: the store's
triggers and their consumed events)."""

from __future__ import annotations

import time
from typing import Any

from harness import Triggerd, wait_for

from triggerd.store import queries


def _config(td: Triggerd) -> None:
    rec = td.recorder()
    (td.root / "landing").mkdir()
    td.write(f"""
        state_dir: state
        sources:
          landing:
            type: filesystem
            paths: [{td.root / "landing"}]
            patterns: ["**/*.parquet"]
            settle: 100ms
        backends:
          train: {{type: command, argv: [python3, {rec}]}}
        rules:
          every-third:
            on: [landing]
            when: {{min_events: 3}}
            dispatch: {{backend: train}}
          quiet:
            on: [landing]
            when: {{debounce: 1s, cooldown: 4s}}
            dispatch: {{backend: train}}
          per-dir:
            on: [landing]
            group_by: "{{payload.dir}}"
            when: {{min_events: 2}}
            dispatch: {{backend: train}}
    """)


def _land(td: Triggerd, *names: str) -> None:
    for name in names:
        path = td.root / "landing" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"rows of {name}".encode())


def _stored(td: Triggerd) -> int:
    store = td.store()
    try:
        return len(queries.list_events(store, limit=1000))
    finally:
        store.close()


def _fired(td: Triggerd, rule: str) -> int:
    store = td.store()
    try:
        return len(queries.list_triggers(store, rule=rule, limit=1000))
    finally:
        store.close()


def _triggers(run: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    return sorted((t["rule"], t["group"], tuple(sorted(t["events"]))) for t in run["triggers"])


def test_replaying_a_live_run_gives_the_same_triggers_with_the_same_events(
        td: Triggerd) -> None:
    _config(td)
    proc = td.start()
    td.wait_running(proc)
    # the timeline: bursts of files; the gaps are part of it (debounce 1s, cooldown 4s)
    _land(td, "a/1.parquet", "a/2.parquet", "b/1.parquet", "a/3.parquet")
    wait_for(lambda: _fired(td, "quiet") == 1, 20, "the first quiet trigger")
    _land(td, "b/2.parquet")
    wait_for(lambda: _stored(td) == 5, 20, "b/2 stored")
    time.sleep(0.5)  # the timeline: 0.5 s between two files (less than the debounce)
    _land(td, "c/1.parquet", "c/2.parquet")
    wait_for(lambda: _fired(td, "quiet") == 2 or _stored(td) == 7, 20, "c/* stored")
    time.sleep(2.0)  # quiet again, but within quiet's cooldown: it fires when it ends
    _land(td, "a/4.parquet")
    wait_for(lambda: _fired(td, "quiet") == 2, 20, "the quiet trigger after the cooldown")
    wait_for(lambda: len(td.calls_made()) == sum(
        _fired(td, r) for r in ("every-third", "quiet", "per-dir")), 20, "every job to run")
    assert td.stop(proc) == 0

    report = td.json("replay")
    runs = {run["name"]: run for run in report["runs"]}
    live, replayed = _triggers(runs["actual"]), _triggers(runs["current"])
    assert replayed == live
    assert {rule for rule, _g, _e in live} == {"every-third", "quiet", "per-dir"}
    assert len(live) >= 6  # 2 every-third, 2 quiet, a, b, c per-dir
    assert report["arrivals"]["count"] == 8
    assert "stored jobs" in report["jobs"]
