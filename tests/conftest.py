"""Shared fixtures: the store on both databases, and the PostgreSQL server of this machine.

Object stores (session scope, started when a test asks): `s3_server` (moto's S3 REST API),
`gcs_server` (gcp-storage-emulator, the GCS JSON API), `azure_server` (Azurite, the Azure
Blob REST API; skipped without it, failed with CI=true).

`hook` (a scripted webhook receiver) and `kube` (a Job API stand-in) are loopback servers for
the backend tests and the e2e ones.

Every store test takes the `store` fixture and so runs twice: on a SQLite file and on the
local PostgreSQL (a database created for this test session, dropped at the end). With
CI=true, an unreachable PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from azure_server import azure_server  # noqa: F401  (session fixture: one Azurite)
from gcs_server import gcs_server  # noqa: F401  (session fixture: one GCS JSON API server)
from kafka_support import kafka_broker  # noqa: F401  (session fixture: one tansu broker)
from kube_server import KubeApi
from pg_fresh import fresh_database
from s3_server import s3_server  # noqa: F401  (session fixture: one S3-protocol server)
from tests_pg import truncate
from webhook_server import Webhook

from triggerd.store import Store


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session (skipped, or failed with CI=true, when
    the server is unreachable)."""
    with fresh_database("triggerd_test") as url:
        yield url


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
