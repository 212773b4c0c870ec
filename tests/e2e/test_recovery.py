"""Crashes and replicas: `kill -9` between trigger and dispatch; two daemons on PostgreSQL."""

from __future__ import annotations

import collections
import signal
from pathlib import Path

import pytest
from harness import Triggerd, wait_for

from triggerd.store import queries


def periodic_config(td: Triggerd, every: str = "1s") -> None:
    rec = td.recorder()
    td.write(f"""
        state_dir: state
        sources:
          tick: {{type: cron, every: {every}, catch_up: none}}
        backends:
          train: {{type: command, argv: [python3, {rec}]}}
        rules:
          periodic:
            on: [tick]
            dispatch: {{backend: train}}
    """)


@pytest.mark.parametrize(("failpoint", "status"), [
    ("after-trigger-write", "queued"),  # the trigger and its job written, not yet claimed
    ("after-claim", "running"),  # claimed with its trigger, the backend not yet called
])
def test_kill_9_between_trigger_and_dispatch_dispatches_once_after_restart(
        td: Triggerd, failpoint: str, status: str) -> None:
    periodic_config(td)
    crashed = td.start(env={"TRIGGERD_FAILPOINT": failpoint}, log="crash.log")
    assert crashed.wait(timeout=30) == -signal.SIGKILL  # died right after writing a trigger
    store = td.store()
    try:
        jobs = queries.list_jobs(store)
        assert [(j.id, str(j.status)) for j in jobs] == [("periodic.1", status)]
    finally:
        store.close()
    assert td.calls_made() == []

    proc = td.start()
    td.wait_running(proc)
    wait_for(lambda: any(c["trigger"] == "periodic.1" for c in td.calls_made()), 20,
             "the interrupted trigger to be dispatched")
    wait_for(lambda: len(td.calls_made()) >= 3, 20, "more ticks after the restart")
    assert td.stop(proc) == 0
    per_trigger = collections.Counter(c["trigger"] for c in td.calls_made())
    assert per_trigger["periodic.1"] == 1
    assert max(per_trigger.values()) == 1  # no trigger ever dispatched twice
    assert "job periodic.1: resuming dispatch after restart" in td.log()


def test_two_daemons_on_one_postgresql_dispatch_each_tick_once(td: Triggerd, tmp_path: Path,
                                                               _pg_migrated: str) -> None:
    td.use_postgresql(_pg_migrated)
    periodic_config(td)
    a = td.start(log="a.log")
    b = td.start(log="b.log")
    td.wait_running(a)
    td.wait_running(b)
    wait_for(lambda: len(td.calls_made()) >= 6, 30, "six ticks dispatched")
    # stopped once no job runs (the rule paused, its jobs ended): a job a stop interrupts is
    # run again by the other daemon with the same trigger id (allowed), which would count
    # here as a second dispatch
    td.cli("pause", "periodic", check=True)
    wait_for(lambda: td.json("status")["rules"][0]["state"] == "paused", 20, "the pause")
    wait_for(lambda: all(j["status"] in ("succeeded", "failed") for j in td.json("jobs")),
             30, "the started jobs to end")
    assert td.stop(a) == 0 and td.stop(b) == 0

    calls = td.calls_made()
    triggers = collections.Counter(c["trigger"] for c in calls)
    ticks = collections.Counter(fp for c in calls for fp in c["events"])
    assert max(triggers.values()) == 1, triggers  # every trigger dispatched once
    assert max(ticks.values()) == 1, ticks  # every tick in exactly one dispatched trigger
    assert all(len(c["events"]) >= 1 for c in calls)
    # both daemons saw every tick; the store kept one of each and counted the rest
    status = td.json("status")
    assert status["sources"][0]["duplicates"] >= 3
    # work was shared: both daemons dispatched (each claims jobs by compare-and-set)
    dispatched_by = {name: td.log(name).count("attempt 1/1 started") for name in
                     ("a.log", "b.log")}
    assert sum(dispatched_by.values()) == len(calls)
