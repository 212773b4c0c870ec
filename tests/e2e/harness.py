"""Run `triggerd` as a user does: real config files, the real command, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from triggerd.store import Store


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Triggerd:
    """A project directory with a config, and helpers to run the CLI and the daemon on it."""

    def __init__(self, root: Path, store_url: str | None = None) -> None:
        self.root = root
        self.config = root / "triggerd.yaml"
        self.calls = root / "calls.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERD_")}
        self.env["TRIGGERD_LOG_LEVEL"] = "DEBUG"
        if store_url:
            self.env["TRIGGERD_STORE"] = store_url
        self.store_url = store_url or f"sqlite:///{root / 'state' / 'state.db'}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, str] = {}

    def use_postgresql(self, url: str) -> None:
        """Run this test's daemons and CLI on the session's PostgreSQL database, emptied."""
        from tests_pg import truncate

        truncate(url)
        self.env["TRIGGERD_STORE"] = self.store_url = url

    def write(self, text: str, name: str = "triggerd.yaml") -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    def recorder(self, name: str = "record.py", exit_code: int = 0, sleep: float = 0) -> str:
        """A training stand-in that appends the trigger id and its events to calls.log."""
        script = self.root / name
        script.write_text(textwrap.dedent(f"""
            import json, os, sys, time
            ctx = json.load(open(os.environ["TRIGGERD_TRIGGER_FILE"]))
            with open({str(self.calls)!r}, "a") as fh:
                fh.write(json.dumps({{"trigger": os.environ["TRIGGERD_TRIGGER_ID"],
                                     "rule": os.environ["TRIGGERD_RULE"],
                                     "argv": sys.argv[1:],
                                     "events": [e["fingerprint"] for e in ctx["events"]]}})
                         + "\\n")
            time.sleep({sleep})
            sys.exit({exit_code})
        """))
        return str(script)

    def calls_made(self) -> list[dict[str, Any]]:
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines() if line]

    def cli(self, *args: str, check: bool = False, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "triggerd", args[0], "--config", str(self.config),
               *args[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             env={**self.env, **(env or {})}, cwd=self.root, check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"{args} exited {res.returncode}: {res.stderr}")
        return res

    def json(self, *args: str) -> Any:
        res = self.cli(*args, "--json")
        assert res.returncode in (0, 1), res.stderr
        return json.loads(res.stdout)

    def start(self, env: dict[str, str] | None = None, log: str = "daemon.log"
              ) -> subprocess.Popen[bytes]:
        with open(self.root / log, "ab") as logfile:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "triggerd", "run", "--config", str(self.config)],
                env={**self.env, **(env or {})}, cwd=self.root, stdout=logfile,
                stderr=logfile)
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def log(self, name: str = "daemon.log") -> str:
        path = self.root / name
        return path.read_text(errors="replace") if path.exists() else ""

    def store(self) -> Store:
        return Store(self.store_url, create_dir=False)

    def wait_running(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        """Wait until this daemon process has started (it logs its start line)."""
        log = self.logs.get(proc.pid, "daemon.log")

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited {proc.returncode}:\n{self.log(log)}")
            return "triggerd started" in self.log(log)
        wait_for(ready, timeout, "the daemon to start")

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


