"""Type=notify as systemd sees it: READY=1 after start-up, WATCHDOG=1 pings at half of
WATCHDOG_USEC from the event loop, STOPPING=1 on SIGTERM; and a quick, clean SIGTERM while a
long job runs."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from harness import Triggerd, wait_for
from opskit import NotifySocket, cli_json, pending_events, tick_config

from triggerd.ops import sdnotify


@pytest.fixture
def notify_socket(tmp_path: Path):  # type: ignore[no-untyped-def]
    sock = NotifySocket(tmp_path)
    try:
        yield sock
    finally:
        sock.close()


def test_ready_watchdog_and_stopping_on_a_real_notify_socket(
        td: Triggerd, notify_socket: NotifySocket) -> None:
    tick_config(td)
    proc = td.start(env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"})
    ready = wait_for(lambda: next((m for m in notify_socket.states() if "READY=1" in m), None),
                     30, "READY=1")
    assert "triggerd started" in td.log()  # READY only once start-up is done
    assert "STATUS=running: 1 rule(s)" in ready
    start = len(notify_socket.states())
    wait_for(lambda: notify_socket.states()[start:].count("WATCHDOG=1") >= 4, 10,
             "four watchdog pings")
    times = [t for t, m in notify_socket.receive() if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 0.4 * 2, gaps  # every WATCHDOG_USEC/2 = 0.2 s, with slack for CI
    proc.send_signal(signal.SIGHUP)  # systemctl reload: RELOADING=1, then READY=1 again
    wait_for(lambda: "RELOADING=1" in notify_socket.states(), 20, "RELOADING=1")

    def ready_again() -> bool:
        states = notify_socket.states()
        return any(m.startswith("READY=1") for m in states[states.index("RELOADING=1"):])
    wait_for(ready_again, 20, "READY=1 after the reload")
    assert td.stop(proc) == 0
    assert "STOPPING=1" in notify_socket.states()


def test_no_pings_for_a_watchdog_meant_for_another_process(
        td: Triggerd, notify_socket: NotifySocket) -> None:
    tick_config(td)
    proc = td.start(env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000",
                         "WATCHDOG_PID": "1"})
    wait_for(lambda: "READY=1" in "".join(notify_socket.states()), 30, "READY=1")
    assert td.stop(proc) == 0
    assert "WATCHDOG=1" not in notify_socket.states()


def test_notify_abstract_socket_and_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"triggerd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.notify("READY=1") is False  # not under systemd: nothing to do


def test_sigterm_with_a_long_job_running_exits_0_quickly_and_keeps_what_it_received(
        td: Triggerd) -> None:
    rec = td.recorder(sleep=120)
    (td.root / "landing").mkdir()
    td.write(f"""
        state_dir: state
        sources:
          landing: {{type: filesystem, paths: [{td.root / "landing"}], settle: 100ms}}
        backends: {{train: {{type: command, argv: [python3, {rec}]}}}}
        rules:
          first: {{on: [landing], match: {{subject: "**/first*"}}, dispatch: {{backend: train}}}}
          later: {{on: [landing], when: {{min_events: 100}}, dispatch: {{backend: train}}}}
    """)
    proc = td.start()
    td.wait_running(proc)
    (td.root / "landing" / "first.csv").write_text("go")
    pid = int(wait_for(lambda: next((j["external_id"] for j in cli_json(td, "jobs")
                                     if j["external_id"]), None), 20, "the long job to start"
                       ).removeprefix("pid:"))
    try:
        stop_during_a_job(td, proc)
    finally:
        os.killpg(pid, signal.SIGKILL)  # the command outlives the daemon, by design


def stop_during_a_job(td: Triggerd, proc: subprocess.Popen[bytes]) -> None:
    for i in range(5):
        (td.root / "landing" / f"more-{i}.csv").write_text(str(i))
    wait_for(lambda: pending_events(td, "later") == 6, 20, "the events to be stored")
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - began < 10
    assert pending_events(td, "later") == 6  # first.csv and the five others: nothing lost
    (job,) = cli_json(td, "jobs")
    assert job["status"] == "running"  # left to the backend's policy: the command runs on
