"""A real Apache Airflow 3 for the airflow backend's tests (the session fixture is in conftest.py).

Airflow lives in its own cached virtualenv (its pins would fight ours), built on first use
under `$TRIGGERD_TEST_CACHE` (default `~/.cache/triggerd-tests`)/airflow-<version>: a file lock
keeps two pytest processes from building it at once, and a marker written last says it is
complete (a half-built one is thrown away and built again). The same step keeps a freshly
migrated SQLite database there, so a session copies it instead of running `airflow db migrate`.

A session then starts `api-server`, `scheduler --skip-serve-logs` and `dag-processor` on
SQLite, all bound to 127.0.0.1 on a free port, with AIRFLOW_HOME in a temp dir holding the DAGs
of `dags/` (they record each run's conf in `out/`), and users of the simple auth manager with
known passwords (`triggerd`: admin, `viewer`: viewer). Readiness is polled, never slept for.
Each process leads its own process group; the finalizer stops the groups (SIGTERM, then
SIGKILL), whatever the tests did.

Without the package index the fixture skips (fails under CI=true), like the PostgreSQL one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AIRFLOW_VERSION = "3.3.2"
TEST_DAGS = ("triggerd_record", "triggerd_fail", "triggerd_gate", "triggerd_paused")
HERE = Path(__file__).parent
_MARKER = ".complete"


def cache_root() -> Path:
    root = os.environ.get("TRIGGERD_TEST_CACHE") or Path.home() / ".cache" / "triggerd-tests"
    return Path(root)


def _airflow_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for Airflow's processes: nothing of ours leaks in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.update(extra)
    return env


def _build(target: Path) -> None:
    """Build the virtualenv and a migrated database template into `target` (under the lock)."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    venv = target / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
         f"apache-airflow=={AIRFLOW_VERSION}"], capture_output=True, text=True, check=False)
    if pip.returncode != 0:
        raise RuntimeError(f"pip install apache-airflow=={AIRFLOW_VERSION} failed:\n"
                           f"{pip.stderr[-3000:]}")
    with tempfile.TemporaryDirectory() as home:
        migrate = subprocess.run([str(venv / "bin" / "airflow"), "db", "migrate"],
                                 env=_airflow_env(Path(home)), capture_output=True, text=True,
                                 check=False)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.stderr[-3000:]}")
        shutil.copy(Path(home) / "airflow.db", target / "template.db")
    (target / _MARKER).write_text(AIRFLOW_VERSION)  # last: the build is complete


def airflow_install() -> Path:
    """The cached Airflow install (built when missing or incomplete)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"airflow-{AIRFLOW_VERSION}"
    with open(root / f"airflow-{AIRFLOW_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second pytest process waits for the first build
        if not (target / _MARKER).exists():
            _build(target)
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Airflow:
    """A running Airflow: its URL, users, where runs record their conf, small API helpers."""

    url: str
    home: Path
    out: Path
    passwords: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _tokens: dict[str, str] = field(default_factory=dict)

    username = "triggerd"

    @property
    def password(self) -> str:
        return self.passwords[self.username]

    def token(self, user: str = "triggerd") -> str:
        if user not in self._tokens:
            reply = self._call("POST", "/auth/token",
                               {"username": user, "password": self.passwords[user]}, auth=False)
            self._tokens[user] = reply["access_token"]
        return self._tokens[user]

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call(method, f"/api/v2{path}", body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - our own loopback http URL
            self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
            return json.loads(resp.read() or b"null")

    def runs(self, dag_id: str) -> dict[str, str]:
        """run id -> state of every run of `dag_id`."""
        found = self.api("GET", f"/dags/{dag_id}/dagRuns?limit=1000")
        return {r["dag_run_id"]: r["state"] for r in found["dag_runs"]}

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        try:
            return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def recorded_conf(self, dag_id: str, run_id: str) -> Any:
        path = self.out / f"{dag_id}.{run_id}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def release(self, run_id: str) -> None:
        """Let the `triggerd_gate` run `run_id` finish."""
        (self.out / f"release.{run_id}").touch()

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"airflow {name} exited {proc.returncode}:\n"
                                     f"{self.log_tail(name)}")

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.home / f"{name}.out"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2  # then SIGKILL (the API server takes ~7 s to drain)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
            if proc.poll() is None:
                proc.wait(timeout=10)


def _wait(what: str, airflow: Airflow, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        airflow.check_alive()
        with contextlib.suppress(OSError, ValueError, KeyError):
            if predicate():
                return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {n} ---\n{airflow.log_tail(n, 1500)}" for n in airflow.procs)
            raise AssertionError(f"Airflow: timed out after {timeout}s waiting for {what}\n"
                                 f"{tails}")
        time.sleep(0.2)


def launch(install: Path, home: Path) -> Airflow:
    """Start Airflow's processes in `home` (returns at once; see `wait_ready`)."""
    dags, out = home / "dags", home / "out"
    dags.mkdir()
    out.mkdir()
    shutil.copy(HERE / "dags" / "triggerd_test_dags.py", dags)
    shutil.copy(install / "template.db", home / "airflow.db")
    # SQLite under three busy processes: WAL lets readers work during a write. (A longer busy
    # timeout than sqlite3's 5 s made Airflow's API server stall for its length at times.)
    with contextlib.closing(sqlite3.connect(home / "airflow.db")) as db:
        db.execute("PRAGMA journal_mode=WAL")
    passwords = {"triggerd": secrets.token_urlsafe(12), "viewer": secrets.token_urlsafe(12)}
    (home / "passwords.json").write_text(json.dumps(passwords))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _airflow_env(
        home,
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{url}/execution/",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="triggerd:admin,viewer:viewer",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__API__BASE_URL=url,
        AIRFLOW__API__SECRET_KEY=secrets.token_hex(16),
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
        AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="0.2",
        AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
        AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="600",
        TRIGGERD_TEST_AIRFLOW_OUT=str(out),
    )
    airflow = Airflow(url=url, home=home, out=out, passwords=passwords)
    # niced: Airflow boots while the rest of the suite runs, and must not steal the CPU from
    # its timing-sensitive tests (`nice` execs Airflow: the PID stays the group leader's)
    bin_ = ["nice", "-n", "10", str(install / "venv" / "bin" / "airflow")]
    commands = {
        "api-server": [*bin_, "api-server", "--host", "127.0.0.1", "--port", str(port),
                       "--workers", "1"],
        "scheduler": [*bin_, "scheduler", "--skip-serve-logs"],
        "dag-processor": [*bin_, "dag-processor"],
    }
    try:
        for name, argv in commands.items():
            with open(home / f"{name}.out", "wb") as log:
                airflow.procs[name] = subprocess.Popen(
                    argv, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True)
    except BaseException:
        airflow.stop()
        raise
    return airflow


def wait_ready(airflow: Airflow) -> None:
    """Poll until the API answers, scheduler and dag processor are healthy, DAGs are parsed."""
    def healthy() -> bool:
        health = airflow._call("GET", "/api/v2/monitor/health", auth=False)
        return all(health.get(part, {}).get("status") == "healthy"
                   for part in ("metadatabase", "scheduler", "dag_processor"))

    _wait("the API server, scheduler and dag processor to be healthy", airflow, healthy, 120)

    def parsed() -> bool:
        found = airflow.api("GET", "/dags?limit=100")
        return set(TEST_DAGS) <= {d["dag_id"] for d in found["dags"]}

    _wait("the test DAGs to be parsed", airflow, parsed, 60)


def warm_up(airflow: Airflow) -> None:
    """Run one DAG run to its end: the first task run of a fresh Airflow is the slow one."""
    airflow.api("POST", "/dags/triggerd_record/dagRuns",
                {"dag_run_id": "warm-up", "logical_date": None, "conf": {}})
    _wait("the warm-up run", airflow,
          lambda: airflow.run_state("triggerd_record", "warm-up") in ("success", "failed"), 120)


def start(install: Path, home: Path) -> Airflow:
    """Launch Airflow and wait until it is ready (stopping it if it never is)."""
    airflow = launch(install, home)
    try:
        wait_ready(airflow)
    except BaseException:
        airflow.stop()
        raise
    return airflow
