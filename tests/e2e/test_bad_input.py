"""Bad input never kills the daemon: broken commands, stubborn commands, failing jobs."""

from __future__ import annotations

import textwrap

from harness import Triggerd, wait_for


def test_missing_command_and_stubborn_command_fail_jobs_daemon_stays_up(td: Triggerd) -> None:
    stubborn = td.root / "stubborn.py"
    stubborn.write_text(textwrap.dedent("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
        time.sleep(60)
    """))
    rec = td.recorder()
    td.write(f"""
        state_dir: state
        sources:
          tick: {{type: cron, schedule: "0 0 1 1 *"}}
        backends:
          missing: {{type: command, argv: [no-such-trainer-xyz, --fast]}}
          stubborn: {{type: command, argv: [python3, {stubborn}], timeout: 1s, kill_grace: 1s}}
          good: {{type: command, argv: [python3, {rec}]}}
        rules:
          broken:
            on: [tick]
            dispatch: {{backend: missing, retry: {{attempts: 3, backoff: 1s}}}}
          slow:
            on: [tick]
            dispatch: {{backend: stubborn}}
          healthy:
            on: [tick]
            dispatch: {{backend: good}}
    """)
    proc = td.start()
    td.wait_running(proc)
    for rule in ("broken", "slow"):
        assert td.cli("fire", rule).returncode == 0

    def final(rule: str) -> dict[str, object] | None:
        jobs = td.json("jobs", "--rule", rule)
        return jobs[0] if jobs and jobs[0]["status"] in ("failed", "succeeded") else None

    broken = wait_for(lambda: final("broken"), 30, "the broken job to fail")
    # a missing program is a permanent error: no retries, a detail that says what to fix
    assert broken["status"] == "failed" and broken["attempts"] == 1
    assert "command not found: 'no-such-trainer-xyz'" in str(broken["detail"])
    slow = wait_for(lambda: final("slow"), 30, "the stubborn job to be killed")
    assert slow["status"] == "failed" and slow["exit_code"] == -9
    assert "timed out after 1s" in str(slow["detail"])

    # the daemon is still up and still dispatching
    assert proc.poll() is None
    assert td.cli("fire", "healthy").returncode == 0
    wait_for(lambda: td.calls_made(), 20, "a healthy job after the failures")
    assert td.stop(proc) == 0


def test_failing_job_is_retried_with_backoff_then_fails(td: Triggerd) -> None:
    rec = td.recorder(exit_code=3)
    td.write(f"""
        state_dir: state
        sources:
          tick: {{type: cron, schedule: "0 0 1 1 *"}}
        backends:
          flaky: {{type: command, argv: [python3, {rec}]}}
        rules:
          r:
            on: [tick]
            dispatch: {{backend: flaky, retry: {{attempts: 3, backoff: 500ms}}}}
    """)
    proc = td.start()
    td.wait_running(proc)
    assert td.cli("fire", "r").returncode == 0
    job = wait_for(lambda: next((j for j in td.json("jobs") if j["status"] == "failed"), None),
                   30, "the job to fail after its retries")
    assert job["attempts"] == 3 and job["exit_code"] == 3
    assert "exit code 3" in job["detail"]
    calls = td.calls_made()
    assert len(calls) == 3 and {c["trigger"] for c in calls} == {"r.1"}  # same idempotency key
    assert td.stop(proc) == 0
