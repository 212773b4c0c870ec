"""Migrations under a lock, and queries that never migrate, on SQLite and PostgreSQL.

Replicas start together on a fresh database: every one of them must come up (the first
migrates, the others wait for it and find nothing to do). A query command on a store that
is missing, empty or behind must say what to run and leave the store exactly as it was.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic import command
from pg_fresh import fresh_database
from sqlalchemy import create_engine, inspect, text

from triggerd.store import Store
from triggerd.store.migrate import (
    HEAD,
    MIGRATION_LOCK_KEY,
    SchemaNotCurrentError,
    alembic_config,
    check_current,
    current,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def cold_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a store that does not exist yet (SQLite) or is an empty database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    with fresh_database() as url:
        yield url


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def upgrade_together(url: str, n: int) -> list[BaseException | None]:
    """`n` stores upgrade the same database at the same moment; each one's outcome."""
    barrier = threading.Barrier(n)
    outcome: list[BaseException | None] = [None] * n

    def one(i: int) -> None:
        store = Store(url)
        try:
            barrier.wait(timeout=30)
            store.upgrade()
        except BaseException as exc:
            outcome[i] = exc
        finally:
            store.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "an upgrade never finished"
    return outcome


def test_stores_upgrading_a_fresh_database_together_all_succeed(cold_url: str) -> None:
    assert upgrade_together(cold_url, 3) == [None, None, None]
    engine = create_engine(cold_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
                (HEAD,)]
    finally:
        engine.dispose()
    assert {"events", "triggers", "jobs", "daemons"} <= tables(cold_url)


def test_an_upgrade_waits_for_the_migration_lock(tmp_path: Path) -> None:
    """PostgreSQL: while another session holds the migration lock, `upgrade` waits for it
    (seen in pg_locks as an ungranted advisory lock), then completes."""
    with fresh_database() as url:
        holder_engine = create_engine(url)
        holder = holder_engine.connect()
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        holder.commit()
        done = threading.Event()
        store = Store(url)
        failed: list[BaseException] = []

        def migrate() -> None:
            try:
                store.upgrade()
            except BaseException as exc:
                failed.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=migrate)
        thread.start()
        try:
            waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                           "AND NOT granted")
            _poll(lambda: holder.execute(waiting).scalar() == 1 or done.is_set(), 30)
            holder.commit()
            assert not done.is_set(), "the upgrade did not wait for the lock"
            assert "alembic_version" not in tables(url)
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            holder.commit()
            thread.join(timeout=60)
            holder.close()
            holder_engine.dispose()
        assert failed == []
        assert current(store.engine) == HEAD
        store.close()


def _poll(predicate: Callable[[], object], timeout: float) -> None:
    """Wait until `predicate()` is truthy (fails after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_check_current_never_creates_anything(cold_url: str) -> None:
    store = Store(cold_url)
    try:
        with pytest.raises(SchemaNotCurrentError) as err:
            check_current(store.engine, store.safe_url)
        assert err.value.state == "missing"
    finally:
        store.close()
    if cold_url.startswith("sqlite"):
        assert not Path(cold_url.removeprefix("sqlite:///")).exists()
    else:
        assert tables(cold_url) == set()


# -- the CLI, as a user runs it ----------------------------------------------------------------
CONFIG = """
    state_dir: state
    sources:
      tick: {type: cron, every: 1h}
    backends:
      train: {type: command, argv: ["true"]}
    rules:
      periodic: {on: [tick], dispatch: {backend: train}}
"""
QUERIES = [["status"], ["events"], ["triggers"], ["jobs"], ["explain", "periodic"],
           ["fire", "periodic", "--wait", "0"], ["pause", "periodic"], ["resume", "periodic"]]


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "triggerd.yaml"
    if not config.exists():
        config.write_text(textwrap.dedent(CONFIG))
        (tmp_path / "state").mkdir(exist_ok=True)
    return config


def cli(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = write_config(tmp_path)
    env = {"TRIGGERD_STORE": url, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "triggerd", args[0], "--config", str(config),
                           *args[1:]], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


def test_queries_on_a_cold_store_say_what_to_run_and_create_nothing(
        cold_url: str, tmp_path: Path) -> None:
    # the queries at once (each its own process, as users in several terminals): none of
    # them may create the store, whichever order they reach it in
    write_config(tmp_path)  # before the threads share it
    with ThreadPoolExecutor(len(QUERIES)) as pool:
        done = list(pool.map(lambda args: cli(tmp_path, cold_url, *args), QUERIES))
    for args, res in zip(QUERIES, done, strict=True):
        assert res.returncode == 2, (args, res)
        assert "Traceback" not in res.stderr
        assert f"triggerd db upgrade --config {tmp_path / 'triggerd.yaml'}" in res.stderr, res
        assert res.stdout == ""
    if cold_url.startswith("sqlite"):
        assert not (tmp_path / "state.db").exists()
    else:
        assert tables(cold_url) == set()
    # `db upgrade` is what they asked for; then the queries work
    assert cli(tmp_path, cold_url, "db", "upgrade").returncode == 0
    assert cli(tmp_path, cold_url, "status").returncode == 0
    assert cli(tmp_path, cold_url, "db", "upgrade").returncode == 0  # a no-op when current


def test_queries_on_an_older_store_leave_it_at_its_revision(
        cold_url: str, tmp_path: Path) -> None:
    store = Store(cold_url)
    try:
        cfg = alembic_config(store.engine)
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0004")
        res = cli(tmp_path, cold_url, "status", "--json")
        assert res.returncode == 2 and res.stdout == ""
        assert f"at schema revision 0004; this triggerd needs {HEAD}" in res.stderr
        assert "triggerd db upgrade --config" in res.stderr
        assert current(store.engine) == "0004"
    finally:
        store.close()


def test_a_store_newer_than_this_triggerd_is_left_alone(cold_url: str, tmp_path: Path) -> None:
    """A store migrated by a newer triggerd: queries say so and change nothing."""
    store = Store(cold_url)
    try:
        store.upgrade()
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        res = cli(tmp_path, cold_url, "triggers")
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert f"revision 9999, newer than this triggerd knows ({HEAD}): upgrade triggerd" \
            in res.stderr
        assert current(store.engine) == "9999"
    finally:
        store.close()


def test_a_query_waits_for_a_migration_under_way() -> None:
    """PostgreSQL: a query arriving while a migration holds the lock waits for it (and then
    reads the migrated revision) instead of reporting a half-built schema."""
    with fresh_database() as url:
        migrator = Store(url)
        holder = migrator.engine.connect()
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        holder.commit()
        outcome: list[BaseException | None] = []
        reader = Store(url)
        thread = threading.Thread(target=lambda: outcome.append(_check(reader)))
        thread.start()
        try:
            waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                           "AND mode = 'ShareLock' AND NOT granted")
            _poll(lambda: holder.execute(waiting).scalar() == 1 or outcome, 30)
            holder.commit()
            assert outcome == [], "the query did not wait for the migration"
            # the lock holder migrates while the query waits, then releases the lock
            cfg = alembic_config(migrator.engine)
            with holder.begin():
                cfg.attributes["connection"] = holder
                command.upgrade(cfg, "head")
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            holder.commit()
            thread.join(timeout=60)
            holder.close()
            migrator.close()
            reader.close()
        assert outcome == [None]  # it found the store at HEAD


def _check(store: Store) -> BaseException | None:
    try:
        check_current(store.engine, store.safe_url)
    except BaseException as exc:
        return exc
    return None
