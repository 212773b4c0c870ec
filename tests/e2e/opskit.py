"""Helpers of the operations tests: HTTP against the daemon, a notify socket, a TCP proxy."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from harness import Triggerd, wait_for
from prometheus_client.parser import text_string_to_metric_families


def tick_config(td: Triggerd) -> None:
    """A config whose only source is a yearly cron tick: a daemon that starts and idles."""
    td.write("""
        state_dir: state
        sources: {tick: {type: cron, schedule: "0 0 1 1 *"}}
        backends: {b: {type: command, argv: ["true"]}}
        rules: {r: {on: [tick], dispatch: {backend: b}}}
    """)


def http_port(td: Triggerd, log: str = "daemon.log") -> int:
    """The port the daemon listens on (it logs it; tests ask for port 0)."""
    found = wait_for(lambda: re.search(r"on http://[^:]+:(\d+)", td.log(log)), 20,
                     "the HTTP listener")
    return int(found.group(1))


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def get_json(port: int, path: str) -> tuple[int, Any]:
    status, body = get(port, path)
    return status, json.loads(body)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus-client: (name, sorted labels) -> value."""
    status, body = get(port, "/metrics")
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


class NotifySocket:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def receive(self) -> list[tuple[float, str]]:
        """Collect what arrived so far (non-blocking beyond a short wait)."""
        import time
        with contextlib.suppress(TimeoutError):
            while True:
                data = self.sock.recv(4096)
                self.messages.append((time.monotonic(), data.decode()))
                self.sock.settimeout(0.01)
        self.sock.settimeout(0.2)
        return self.messages

    def states(self) -> list[str]:
        return [m for _, m in self.receive()]

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server; `down()` cuts every connection and refuses new
    ones (a store that went away), `up()` lets them through again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._down = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._down.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        self._down.set()
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()

    def up(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self.down()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()


def job_statuses(td: Triggerd) -> set[str]:
    return {j["status"] for j in cli_json(td, "jobs")}


def cli(td: Triggerd, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run a query command of the CLI in this process (the same code as `triggerd ...`,
    without a new interpreter: these tests make many calls). Not for `run`."""
    from triggerd.cli import main

    assert args[0] != "run"
    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update({**td.env, **(env or {})})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([args[0], "--config", str(td.config), *args[1:]])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def cli_json(td: Triggerd, *args: str) -> Any:
    res = cli(td, *args, "--json")
    assert res.returncode in (0, 1), res.stderr
    return json.loads(res.stdout)


def pending_events(td: Triggerd, rule: str) -> int:
    return next((r["pending_events"] for r in cli_json(td, "status")["rules"]
                 if r["name"] == rule), -1)
