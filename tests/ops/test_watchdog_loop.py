"""WATCHDOG=1 comes from the event loop itself: while the loop is blocked the pings stop (so
systemd's WatchdogSec restarts a hung daemon), and they resume when it runs again."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest

from triggerd.config.loader import load_config
from triggerd.runtime import Daemon


class Receiver(threading.Thread):
    """Timestamps each datagram as it arrives, independently of the loop under test."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue
        self.sock.close()

    def pings(self, start: float, end: float) -> int:
        return sum(1 for t, m in self.got if m == "WATCHDOG=1" and start <= t < end)


async def test_a_blocked_loop_sends_no_watchdog_pings(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "triggerd.yaml"
    config.write_text("state_dir: state\n"
                      "sources: {tick: {type: cron, every: 1h}}\n"
                      "backends: {b: {type: command, argv: ['true']}}\n"
                      "rules: {r: {on: [tick], dispatch: {backend: b}}}\n")
    receiver = Receiver(tmp_path / "notify.sock")
    receiver.start()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    daemon = Daemon(load_config(config))
    run = asyncio.create_task(daemon.run())
    try:
        for _ in range(200):
            if receiver.pings(0, time.monotonic()) >= 3:
                break
            await asyncio.sleep(0.05)
        before = time.monotonic()
        await asyncio.sleep(0.5)
        running = receiver.pings(before, time.monotonic())
        hung = time.monotonic()
        time.sleep(1.0)  # the point of the test: the event loop hangs for a second
        hung_end = time.monotonic()
        await asyncio.sleep(0.5)
        after = receiver.pings(hung_end + 0.05, time.monotonic())
    finally:
        daemon.stop()
        assert await asyncio.wait_for(run, 20) == 0
        receiver.done.set()
        receiver.join(5)
    assert running >= 3  # ~10 expected; slack for a loaded machine
    # ~20 pings would have come in that second; at most one sent just before the hang
    # began may be seen late by the receiving thread on a loaded machine
    assert receiver.pings(hung, hung_end) <= 1, receiver.got
    assert after >= 2
