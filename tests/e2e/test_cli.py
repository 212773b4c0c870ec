"""Every CLI command, as a user runs it: subprocesses, real config files, a real daemon."""

from __future__ import annotations

import json
import signal

from harness import Triggerd, wait_for

from triggerd.store import queries


def basic_config(td: Triggerd, every: str = "1s", extra_rule: str = "") -> None:
    """`every: "never"`: a source that does not tick while the test runs (once a year, at
    new year's midnight): a test counting manual triggers must not meet a top-of-the-hour
    tick."""
    rec = td.recorder()
    td.write(f"""
        state_dir: state
        sources:
          tick:
            type: cron
            {'schedule: "0 0 1 1 *"' if every == "never" else f"every: {every}"}
            catch_up: none
        backends:
          train:
            type: command
            argv: [python3, {rec}, --model, "{{params.model}}"]
            timeout: 30s
        rules:
          periodic:
            on: [tick]
            dispatch:
              backend: train
              params: {{model: churn}}
          manual-only:
            on: [tick]
            match: {{kinds: [manual]}}
            when: {{cooldown: 1h}}
            dispatch: {{backend: train, params: {{model: m}}}}
        {extra_rule}
    """)


def test_check_valid_and_invalid(td: Triggerd) -> None:
    basic_config(td)
    ok = td.cli("check")
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 1 source(s), 1 backend(s), 2 rule")
    td.write("""
        sources:
          tick: {type: cron, every: 5 minutes}
        rules:
          r:
            on: [nope]
            dispatch: {backend: missing}
    """)
    bad = td.cli("check")
    assert bad.returncode == 2
    lines = bad.stderr.splitlines()
    assert any(":2: sources.tick.every: invalid duration" in ln for ln in lines), bad.stderr
    assert any(":5: rules.r.on[0]: unknown source 'nope'" in ln for ln in lines), bad.stderr
    assert any("rules.r.dispatch.backend: unknown backend 'missing'" in ln for ln in lines)


def test_schema_is_json(td: Triggerd) -> None:
    basic_config(td)
    res = td.cli("schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert "rules" in schema["properties"] and "$defs" in schema


def test_daemon_fires_periodic_rule_and_queries_show_it(td: Triggerd) -> None:
    basic_config(td)
    proc = td.start()
    td.wait_running(proc)
    wait_for(lambda: len(td.calls_made()) >= 2, 20, "two periodic retrains")
    call = td.calls_made()[0]
    assert call["rule"] == "periodic" and call["argv"] == ["--model", "churn"]
    assert len(call["events"]) == 1 and call["events"][0].startswith("tick@")

    status = td.json("status")
    assert status["daemon"]["running"] is True and status["daemon"]["pid"] == proc.pid
    rules = {r["name"]: r for r in status["rules"]}
    assert set(rules["periodic"]) >= {"name", "state", "pending_events", "pending_bytes",
                                      "last_trigger_at", "triggers", "waiting_for",
                                      "next_check_at", "running_jobs"}
    assert rules["periodic"]["triggers"] >= 2
    assert rules["periodic"]["last_trigger_at"] is not None
    src = status["sources"][0]
    assert set(src) >= {"name", "type", "healthy", "events", "duplicates", "last_event_at",
                        "error"}
    assert src["name"] == "tick" and src["healthy"] and src["events"] >= 2

    triggers = td.json("triggers", "--rule", "periodic")
    assert triggers and set(triggers[0]) >= {"id", "rule", "fired_at", "reason", "events",
                                             "manual"}
    assert triggers[0]["reason"] == "1 new event (≥1)" and triggers[0]["manual"] is False
    assert triggers[0]["kind"] == "events"
    wait_for(lambda: any(j["status"] == "succeeded" for j in td.json("jobs")), 20,
             "a succeeded job")
    jobs = td.json("jobs", "--status", "succeeded")
    assert set(jobs[0]) >= {"id", "trigger_id", "rule", "backend", "status", "attempts",
                            "external_id", "created_at", "started_at", "finished_at",
                            "exit_code", "detail"}
    assert jobs[0]["exit_code"] == 0 and jobs[0]["external_id"].startswith("pid:")
    events = td.json("events", "--source", "tick", "--limit", "3")
    assert 1 <= len(events) <= 3 and events[0]["kind"] == "tick"
    assert set(events[0]) >= {"id", "source", "kind", "subject", "fingerprint",
                              "observed_at", "payload"}
    assert "scheduled_for" in events[0]["payload"]
    table = td.cli("status")
    assert table.returncode == 0 and "periodic" in table.stdout and "daemon: running" in \
        table.stdout

    assert td.stop(proc) == 0  # SIGTERM drains and exits 0
    after = td.json("status")  # queries keep working after the daemon stopped
    assert after["daemon"]["running"] is False


def test_fire_pause_resume_explain(td: Triggerd) -> None:
    basic_config(td, every="never")
    proc = td.start()
    td.wait_running(proc)

    res = td.cli("fire", "manual-only", "--reason", "retrain now")
    assert res.returncode == 0 and res.stdout.startswith("fired manual-only.1"), res
    wait_for(lambda: [c for c in td.calls_made() if c["rule"] == "manual-only"], 15,
             "the manual job")
    trig = td.json("triggers", "--rule", "manual-only")[0]
    assert trig["manual"] is True and trig["reason"] == "manual: retrain now"
    assert trig["kind"] == "manual"

    unknown = td.cli("fire", "no-such-rule")
    assert unknown.returncode == 1 and "unknown rule 'no-such-rule'" in unknown.stderr

    assert td.cli("pause", "periodic", "--for", "2h").returncode == 0
    status = td.json("status")
    periodic = next(r for r in status["rules"] if r["name"] == "periodic")
    assert periodic["state"] == "paused" and periodic["waiting_for"].startswith("paused until")
    explained = td.json("explain", "periodic")
    assert explained["groups"][0]["conditions"][0] == {
        "name": "paused", "value": "yes", "required": "not paused", "ok": False}
    assert [n["what"] for n in explained["groups"][0]["next"]] == ["pause ends"]
    assert td.cli("resume", "periodic").returncode == 0
    explained = td.json("explain", "periodic")
    group = explained["groups"][0]
    assert group["fires"] is False and group["waiting_for"] == "new events"
    assert {c["name"] for c in group["conditions"]} == {"min_events"}
    text = td.cli("explain", "manual-only")
    assert text.returncode == 0 and "cooldown" in text.stdout
    assert "next: cooldown ends at" in text.stdout, text.stdout
    assert "no daemon is running" not in text.stdout
    assert td.cli("explain", "nope").returncode == 1
    assert td.stop(proc) == 0
    # stopped: the verdicts are what a daemon would decide, and explain says none is running
    stopped = td.cli("explain", "manual-only").stdout
    assert stopped.rstrip().endswith("note: no daemon is running: nothing fires until one "
                                     "starts (`triggerd status` shows its heartbeat)")


def test_fire_without_daemon_is_queued_and_dispatched_later(td: Triggerd) -> None:
    basic_config(td, every="never")
    assert td.cli("db", "upgrade").returncode == 0
    res = td.cli("fire", "manual-only", "--wait", "0.2")
    assert res.returncode == 0 and "no running daemon has picked it up" in res.stdout
    proc = td.start()
    td.wait_running(proc)
    wait_for(lambda: td.calls_made(), 15, "the queued manual fire to run")
    assert td.stop(proc) == 0


def test_queries_on_empty_store_find_nothing(td: Triggerd) -> None:
    basic_config(td)
    assert td.cli("db", "upgrade").returncode == 0
    for cmd in ("events", "triggers", "jobs"):
        res = td.cli(cmd)
        assert res.returncode == 1 and res.stdout == "", (cmd, res)
    assert td.cli("triggers", "--rule", "nope").returncode == 1


def test_missing_store_directory(td: Triggerd) -> None:
    basic_config(td)
    res = td.cli("status")
    # a store not created yet, as for a missing file: exit 2, saying what to run
    assert res.returncode == 2
    assert "does not exist yet" in res.stderr and "triggerd db upgrade --config" in res.stderr
    assert not (td.root / "state").exists()  # a query creates nothing
    # the daemon creates its state directory (as systemd's StateDirectory= would)
    proc = td.start()
    td.wait_running(proc)
    assert (td.root / "state" / "state.db").exists()
    assert td.stop(proc) == 0


def test_second_daemon_on_same_sqlite_refuses_and_names_holder(td: Triggerd) -> None:
    basic_config(td, every="never")
    first = td.start()
    td.wait_running(first)
    second = td.start(log="second.log")
    assert second.wait(timeout=30) == 1
    assert f"in use by another daemon: triggerd pid {first.pid}" in td.log("second.log")
    assert first.poll() is None
    assert td.stop(first) == 0


def test_sigint_stops_cleanly_and_json_logs_are_json(td: Triggerd) -> None:
    basic_config(td, every="never")
    proc = td.start(env={"TRIGGERD_LOG_FORMAT": "json", "TRIGGERD_LOG_LEVEL": "INFO"})
    td.wait_running(proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    lines = [json.loads(line) for line in td.log().splitlines() if line.strip()]
    assert {"ts", "level", "logger", "message"} <= set(lines[0])
    assert any(rec["message"] == "triggerd stopping" for rec in lines)
    assert all(rec["level"] != "debug" for rec in lines)  # TRIGGERD_LOG_LEVEL=INFO


def test_events_and_triggers_filters(td: Triggerd) -> None:
    basic_config(td)
    proc = td.start()
    td.wait_running(proc)
    wait_for(lambda: len(td.calls_made()) >= 3, 20, "three ticks")
    assert td.stop(proc) == 0
    assert len(td.json("events", "--limit", "2")) == 2
    assert td.json("events", "--since", "1h")
    assert td.cli("events", "--since", "1999-01-01T00:00:00+00:00").returncode == 0
    assert td.cli("events", "--since", "yesterday").returncode == 2
    store = td.store()
    try:
        kept = queries.list_triggers(store, rule="periodic")
    finally:
        store.close()
    assert len(td.json("triggers", "--rule", "periodic", "--limit", "100")) == len(kept)
