"""One daemon per SQLite file, and how a SQLite store is opened (SQLite only: no server needed).

The lock is an `flock` beside the database: a second daemon is refused with the holder's pid,
and the kernel releases it when the holder dies, even by `kill -9`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from triggerd.errors import StoreError, StoreLockedError
from triggerd.store import Store

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import sys
from triggerd.store import Store

store = Store(sys.argv[1])
store.lock()
print("locked", flush=True)
sys.stdin.read()  # hold the lock until stdin closes or we are killed
"""


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def test_a_second_store_on_the_same_file_is_refused_and_named(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    first, second = Store(url), Store(url)
    try:
        first.lock()
        with pytest.raises(StoreLockedError) as err:
            second.lock()
        message = str(err.value)
        assert f"pid {os.getpid()}" in message
        assert socket.gethostname() in message
        assert str(tmp_path / "state.db") in message
        assert "PostgreSQL" in message   # says how to run several daemons instead
        assert isinstance(err.value, StoreError)

        first.close()                    # released: the next daemon may start
        second.lock()
        third = Store(url)
        with pytest.raises(StoreLockedError):
            third.lock()
        third.close()
    finally:
        first.close()
        second.close()
    again = Store(url)
    again.lock()
    again.close()


def test_the_lock_of_a_killed_daemon_is_released(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen([sys.executable, "-c", HOLDER, url], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, cwd=REPO) as holder:
        assert holder.stdout is not None and holder.stderr is not None
        line = holder.stdout.readline()
        if line != "locked\n":
            holder.kill()
            pytest.fail(f"the holder did not lock: {line!r} {holder.stderr.read()}")

        store = Store(url)
        try:
            with pytest.raises(StoreLockedError, match=f"pid {holder.pid} "):
                store.lock()

            holder.kill()                # SIGKILL: no chance to clean up
            assert holder.wait(timeout=10) == -9

            store.lock()                 # the kernel released the flock
        finally:
            store.close()


def test_a_missing_directory_is_an_error_unless_it_may_be_created(tmp_path: Path) -> None:
    parent = tmp_path / "var" / "lib" / "triggerd"
    url = f"sqlite:///{parent / 'state.db'}"

    with pytest.raises(StoreError, match=str(parent)):
        Store(url, create_dir=False)
    assert not parent.exists()

    store = Store(url, create_dir=True)
    try:
        assert parent.is_dir()
        store.upgrade()
        store.lock()
        assert (parent / "state.db").exists()
    finally:
        store.close()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    store = Store(url)
    try:
        store.upgrade()
        with store.read() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 1   # NORMAL
            assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        store.close()


def test_postgresql_stores_take_no_file_lock() -> None:
    """Replicas share a PostgreSQL store: lock() is a no-op there (no connection is made)."""
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/unused"
    first, second = Store(url), Store(url)
    try:
        first.lock()
        second.lock()
    finally:
        first.close()
        second.close()
