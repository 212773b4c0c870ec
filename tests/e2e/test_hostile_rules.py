"""Hostile rule authors against the installed daemon: backtracking globs and regexes beside a
normal rule, on files with long names.

Before matching moved to RE2, one such file froze the daemon (event loop, /healthz, the systemd
watchdog pings) for minutes while it held the store's write lock. Now the normal rule's file is
dispatched at once, /healthz answers throughout, the loop's lag stays small (its own metric),
and SIGTERM ends the daemon.
"""

from __future__ import annotations

import threading
import time

from harness import Triggerd, wait_for
from opskit import get, http_port, sample, scrape

HOSTILE_GLOB = "*a" * 24 + "*b"


def hostile_config(td: Triggerd) -> None:
    rec = td.recorder()
    (td.root / "landing").mkdir()
    td.write(f"""
        state_dir: state
        sources:
          landing:
            type: filesystem
            paths: [{td.root / "landing"}]
            patterns: ["**"]
            ignore: ["**/{HOSTILE_GLOB}c"]
            settle: 100ms
            fingerprint: stat
        backends:
          train: {{type: command, argv: [python3, {rec}]}}
        rules:
          hostile-glob:
            on: [landing]
            match: {{subject: "**/{HOSTILE_GLOB}"}}
            dispatch: {{backend: train}}
          hostile-regex:
            on: [landing]
            match: {{where: "regex(payload.name, '^(a|aa)+b$') or regex(payload.name, '^(a+)+c$')
                              or payload.name matches '{HOSTILE_GLOB}'"}}
            dispatch: {{backend: train}}
          normal:
            on: [landing]
            match: {{subject: "**/*.parquet"}}
            dispatch: {{backend: train}}
    """)


def test_backtracking_patterns_do_not_hold_up_the_daemon(td: Triggerd) -> None:
    hostile_config(td)
    proc = td.start(env={"TRIGGERD_HTTP": "127.0.0.1:0"})
    td.wait_running(proc)
    port = http_port(td)
    worst = [0.0]
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            status, _ = get(port, "/healthz")
            worst[0] = max(worst[0], time.monotonic() - t0)
            assert status == 200

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        for i in range(20):  # names of 250 'a's: exponential for a backtracking matcher
            (td.root / "landing" / ("a" * 245 + f"{i:05d}")).write_bytes(b"x")
        t0 = time.monotonic()
        (td.root / "landing" / "part-0.parquet").write_bytes(b"rows")
        wait_for(lambda: any(c["rule"] == "normal" for c in td.calls_made()), 20,
                 "the normal rule's job")
        dispatched = time.monotonic() - t0
    finally:
        stop.set()
        prober.join(15)
    assert not prober.is_alive()
    assert {c["rule"] for c in td.calls_made()} == {"normal"}
    assert dispatched < 5, f"the normal file took {dispatched:.2f}s"  # ~0.2s: settle + job
    assert worst[0] < 1.0, f"/healthz took {worst[0]:.2f}s"
    lag = sample(scrape(port), "triggerd_event_loop_lag_max_seconds")
    assert lag < 0.5, f"the event loop lagged {lag:.2f}s"
    t0 = time.monotonic()
    assert td.stop(proc, timeout=15) == 0
    assert time.monotonic() - t0 < 10
