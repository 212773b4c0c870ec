"""Shared fixtures: the store on both databases, and the PostgreSQL server of this machine.

`hook` (a scripted webhook receiver) and `kube` (a Job API stand-in) are loopback servers for
the backend tests and the e2e ones.

Every store test takes the `store` fixture and so runs twice: on a SQLite file and on the
local PostgreSQL (a database created for this test session, dropped at the end). With
CI=true, an unreachable PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka_support import kafka_broker  # noqa: F401  (session fixture: one tansu broker)
from kube_server import KubeApi
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from tests_pg import truncate
from webhook_server import Webhook

from triggerd.store import Store

PG_ADMIN_URL = os.environ.get("TRIGGERD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session."""
    problem = _pg_available()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {problem}")
        pytest.skip(f"PostgreSQL not reachable: {problem}")
    name = f"triggerd_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(scope="session")
def _pg_migrated(pg_url: str) -> str:
    store = Store(pg_url)
    store.upgrade()
    store.close()
    return pg_url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty store URL on each database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
        s = Store(url)
        s.upgrade()
        s.close()
        return url
    url: str = request.getfixturevalue("_pg_migrated")
    truncate(url)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def hook() -> Iterator[Webhook]:
    server = Webhook().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def kube() -> Iterator[KubeApi]:
    api = KubeApi().start()
    try:
        yield api
    finally:
        api.close()
