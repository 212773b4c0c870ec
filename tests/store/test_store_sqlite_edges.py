"""The SQLite store in odd places: a full disk under it, and no file at all (in memory).

A full disk: writes are refused and remembered (readiness reports a failure of the last 30 s),
reads go on, and nothing is lost once space returns. It runs on a real 2 MiB
tmpfs (mounting needs root, as in CI here; skipped otherwise).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from triggerd.errors import StoreError
from triggerd.model import Event
from triggerd.store import Store


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; return it (delete it to free the space)."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512):  # to the last block
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return ballast


def events(n: int, start: int) -> list[Event]:
    now = datetime.now(UTC)
    return [Event(source="landing", kind="created", subject=f"/data/f{i}",
                  fingerprint=f"f{i}:" + "x" * 2000, payload={"pad": "y" * 4000},
                  observed_at=now) for i in range(start, start + n)]


def test_a_full_disk_fails_writes_visibly_and_nothing_is_lost_once_space_returns(
        tiny_fs: Path) -> None:
    store = Store(f"sqlite:///{tiny_fs / 'state.db'}")
    store.upgrade()
    try:
        store.ingest("landing", "filesystem", events(5, 0), datetime.now(UTC))
        assert store.write_failure is None
        ballast = fill(tiny_fs)
        with pytest.raises(StoreError, match="full"):
            for i in range(50):  # the pages left fill up within a few batches
                store.ingest("landing", "filesystem", events(20, 100 + 20 * i),
                             datetime.now(UTC))
        failed = store.failing_writes(datetime.now(UTC))
        assert failed is not None and "full" in failed[1]
        with store.read() as c:  # reads go on (readiness pings with one)
            c.exec_driver_sql("SELECT 1")
        ballast.unlink()
        again = events(20, 10_000)
        result = store.ingest("landing", "filesystem", again, datetime.now(UTC))
        assert len(result.new) == 20
        # the write-ahead log, grown while full, is folded into the database and emptied: on
        # a small volume it would otherwise fill the freed space before its next checkpoint
        assert (tiny_fs / "state.db-wal").stat().st_size == 0
        # a failure is news for 30 s, whatever succeeded since (a heartbeat may fit a full disk)
        assert store.failing_writes(datetime.now(UTC)) == failed
        assert store.failing_writes(failed[0] + timedelta(seconds=31)) is None
        with store.read() as c:
            ids = {r[0] for r in c.exec_driver_sql("SELECT id FROM events")}
        assert {e.id for e in events(5, 0) + again} <= ids
    finally:
        store.close()


def test_an_in_memory_store_opens_and_keeps_its_data_across_threads() -> None:
    """`sqlite://` (no file): one connection that every thread shares, so the store thread
    and the caller see the same database (`triggerd test` and tools use such stores)."""
    import threading

    store = Store("sqlite://")
    try:
        store.upgrade()
        worker = threading.Thread(target=lambda: store.ingest(
            "landing", "filesystem", events(3, 0), datetime.now(UTC)))
        worker.start()
        worker.join()
        with store.read() as c:
            assert c.exec_driver_sql("SELECT count(*) FROM events").scalar() == 3
    finally:
        store.close()


def test_a_write_refused_for_another_reason_stops_counting_once_writes_go_through(
        tmp_path: Path) -> None:
    """A lost connection (here: any refusal that is not for space) is news only until a
    write succeeds again: readiness must not stay 503 for 30 s after the store is back."""
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.upgrade()
    try:
        with pytest.raises(StoreError, match="no such table"), store.write() as c:
            c.exec_driver_sql("INSERT INTO no_such_table VALUES (1)")
        failed = store.failing_writes(datetime.now(UTC))
        assert failed is not None and "no such table" in failed[1]
        store.ingest("landing", "filesystem", events(1, 0), datetime.now(UTC))
        assert store.failing_writes(datetime.now(UTC)) is None
    finally:
        store.close()


def test_the_sqlite_page_cache_is_what_the_environment_asks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TRIGGERD_SQLITE_CACHE_MB sets each connection's page cache (64 MiB by default); a value
    out of range is refused naming the variable."""
    from sqlalchemy import text

    def cache_kib() -> int:
        store = Store(f"sqlite:///{tmp_path / 'state.db'}")
        try:
            with store.engine.connect() as c:
                return -int(c.execute(text("PRAGMA cache_size")).scalar_one())
        finally:
            store.close()

    monkeypatch.delenv("TRIGGERD_SQLITE_CACHE_MB", raising=False)
    assert cache_kib() == 64 * 1024
    monkeypatch.setenv("TRIGGERD_SQLITE_CACHE_MB", "16")
    assert cache_kib() == 16 * 1024
    monkeypatch.setenv("TRIGGERD_SQLITE_CACHE_MB", "0")
    with pytest.raises(StoreError, match="TRIGGERD_SQLITE_CACHE_MB='0': a whole number of MiB"):
        cache_kib()
