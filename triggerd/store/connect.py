"""Opening a database: engine options, SQLite pragmas and BEGIN IMMEDIATE, the daemon lock.

SQLite: WAL journal (readers never block the writer), `synchronous=NORMAL` (durable at each
checkpoint, safe against process crashes), a 64 MiB page cache per connection
(TRIGGERD_SQLITE_CACHE_MB: at 1,000,000 events 16 MiB ingests ~15 % slower, and holds ~50 MB
less) and checkpoints every ~40 MB of WAL (faster ingest: bench/RESULTS.md, "Design
figures"), a busy timeout, and write
transactions opened with `BEGIN IMMEDIATE` so two writers queue at the start instead of
failing half-way. Read-only connections (the CLI's queries) use a plain deferred `BEGIN`.

The store URL: a password may come from TRIGGERD_STORE_PASSWORD instead of the URL, as plain
text (no URL-encoding: `@`, `/`, `%`, `:` and `#` are fine); it is set on the parsed URL with
`URL.set(password=...)`. No message shows a password: store URLs are rendered with
`hide_password=True`, a URL that does not parse is not echoed, and `redact` removes every
password this process has used from text that came from elsewhere (a driver's error).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from triggerd.errors import StoreError, StoreLockedError
from triggerd.store.fast import sqlite_errors

READ_ONLY = "triggerd_read_only"
PASSWORD_ENV = "TRIGGERD_STORE_PASSWORD"  # noqa: S105  (a variable name, not a secret)
CACHE_ENV = "TRIGGERD_SQLITE_CACHE_MB"
_SECRETS: set[str] = set()  # every store password this process has used (see redact)
# Shorter passwords are still hidden wherever triggerd renders a URL, but not searched for in
# foreign text: replacing every "ab" in a message would garble it and protect nothing.
MIN_REDACTED = 4


def store_url(url: str | URL, password: str | None = None) -> URL:
    """The store URL, parsed, with the password from `password` or else $TRIGGERD_STORE_PASSWORD
    (either replaces one written in the URL). Raises StoreError, never quoting the URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError("the store URL is not a valid SQLAlchemy URL (expected "
                         "dialect+driver://user@host:port/database; the URL is not shown, it "
                         "may hold a password)") from None
    # an encoded URL has at most one '@' before its query; more means a raw '@' in a password
    if isinstance(url, str) and url.split("?", 1)[0].count("@") > 1:
        raise StoreError("the store URL has more than one '@': a password containing '@', '/', "
                         f"'%', ':' or '#' breaks the URL; give it in {PASSWORD_ENV} instead "
                         "(the URL is not shown, it may hold a password)")
    query_password = parsed.query.get("password")
    if query_password is not None:  # `?password=`: moved where masking sees it
        parsed = parsed.difference_update_query(["password"])
        if isinstance(query_password, str) and parsed.password is None:
            parsed = parsed.set(password=query_password)
    if password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    if password is not None and parsed.get_backend_name() != "sqlite":
        parsed = parsed.set(password=password)
    if parsed.password and len(parsed.password) >= MIN_REDACTED:
        _SECRETS.add(str(parsed.password))
    return parsed


def redact(text: str) -> str:
    """`text` with every store password this process has used (as written, or URL-encoded)
    replaced by `***`: for messages that quote a driver or another library."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, "***")
    return text


class RedactFilter(logging.Filter):
    """A handler filter that removes store passwords from every log line (its message, and
    a traceback's text), whichever logger or library wrote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            trace = logging.Formatter().formatException(record.exc_info)
            if redact(trace) != trace:  # the traceback goes into the message, cleaned
                cleaned = f"{cleaned}\n{redact(trace)}"
                record.exc_info, record.exc_text = None, None
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def sqlite_path(url: str | URL) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    parsed = store_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database \
            or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def make_engine(url: str | URL, *, create_dir: bool = True) -> Engine:
    parsed = store_url(url)
    path = sqlite_path(parsed)
    if path is not None:
        if not path.parent.exists():
            if not create_dir:
                raise StoreError(f"store directory {path.parent} does not exist")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the store directory {path.parent}: {exc.strerror}") from exc
        engine = create_engine(parsed,
                               connect_args={"timeout": 30, "check_same_thread": False})
        _sqlite_setup(engine)
        return engine
    if parsed.get_backend_name() == "sqlite":  # in memory: one connection, or no database
        engine = create_engine(parsed, poolclass=StaticPool,
                               connect_args={"check_same_thread": False})
        _sqlite_setup(engine)
        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5)
    except ModuleNotFoundError as exc:
        raise StoreError(f"the driver for {parsed.drivername} is not installed "
                         f"({exc.name}); for PostgreSQL install triggerd[postgres]") from exc
    except NoSuchModuleError:
        raise StoreError(f"the store URL names an unknown database or driver "
                         f"{parsed.drivername!r}") from None


def sqlite_cache_mb() -> int:
    """The SQLite page cache of each connection, in MiB ($TRIGGERD_SQLITE_CACHE_MB, 1-4096;
    default 64)."""
    text = os.environ.get(CACHE_ENV, "").strip()
    if not text:
        return 64
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 4096:
        raise StoreError(f"{CACHE_ENV}={text!r}: a whole number of MiB from 1 to 4096")
    return value


def _sqlite_setup(engine: Engine) -> None:
    cache_kib = sqlite_cache_mb() * 1024

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA cache_size=-{cache_kib}")  # the random-key indexes stay in memory
        cur.execute("PRAGMA wal_autocheckpoint=10000")  # fewer, larger checkpoints
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=OFF")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        # on sqlite3 itself: through SQLAlchemy this statement was dear per transaction
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
