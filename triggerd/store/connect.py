"""Opening a database: engine options, SQLite pragmas and BEGIN IMMEDIATE, the daemon lock.

SQLite: WAL journal (readers never block the writer), `synchronous=NORMAL` (durable at each
checkpoint, safe against process crashes), a 64 MiB page cache and checkpoints every ~40 MB of
WAL (measured: +25% ingest throughput), a busy timeout, and write transactions opened with
`BEGIN IMMEDIATE` so two writers queue at the start instead of failing half-way. Read-only
connections (the CLI's queries) use a plain deferred `BEGIN`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from triggerd.errors import StoreError, StoreLockedError
from triggerd.store.fast import sqlite_errors

READ_ONLY = "triggerd_read_only"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database \
            or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def make_engine(url: str, *, create_dir: bool = True) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        if not path.parent.exists():
            if not create_dir:
                raise StoreError(f"store directory {path.parent} does not exist")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the store directory {path.parent}: {exc.strerror}") from exc
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _sqlite_setup(engine)
        return engine
    try:
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    except ModuleNotFoundError as exc:
        raise StoreError(f"the driver for {make_url(url).drivername} is not installed "
                         f"({exc.name}); for PostgreSQL install triggerd[postgres]") from exc


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA cache_size=-65536")  # 64 MiB: the random-key indexes stay in memory
        cur.execute("PRAGMA wal_autocheckpoint=10000")  # fewer, larger checkpoints
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=OFF")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        # on sqlite3 itself: through SQLAlchemy this statement cost ~40 us per transaction
        sql = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        with sqlite_errors(sql):
            conn.connection.driver_connection.execute(sql)


class DaemonLock:
    """An exclusive lock beside a SQLite store: one daemon per file.

    The lock is an `flock` on `<db>.lock`, released by the kernel when the process dies (even by
    `kill -9`), so a crash never leaves a stale lock. The file names the holder for the error
    message of the second daemon.
    """

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(f"cannot lock {self.path}: {exc.strerror}") from exc
            raise StoreLockedError(self._holder_message()) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(UTC).isoformat()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd

    def _holder_message(self) -> str:
        db = self.path.with_name(self.path.name.removesuffix(".lock"))
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        holder = (f"triggerd pid {info.get('pid', '?')} on {info.get('host', '?')} "
                  f"(since {info.get('since', '?')})")
        return (f"the store {db} is in use by another daemon: {holder}. "
                "Stop it first, or use a PostgreSQL store to run replicas.")

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
