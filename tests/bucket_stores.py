"""The GCS and Azure emulators (`gcs_server.py`, `azure_server.py`) in one shape for the bucket
source's listing tests: a behaviour both stores share is one test run against each
(`tests/sources/test_bucket_stores.py`), and each store's own module keeps what differs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure_server import ACCOUNT, ACCOUNT_KEY, Azure
from gcs_server import GCS, close_gcsfs

from triggerd.model import FileRow
from triggerd.sources._bucketlist import Found, Lister, Obj, compare, matcher_for
from triggerd.sources._bucketoptions import BucketOptions

NOW = datetime(2026, 12, 6, tzinfo=UTC)
AZURE_ENV = {"TEST_AZ_ACCOUNT": ACCOUNT, "TEST_AZ_KEY": ACCOUNT_KEY}


@dataclass(frozen=True)
class Emulated:
    """One emulated store: its URL scheme, buckets (containers) made on it, objects written
    over the wire, and listings made by `Lister` as the daemon makes them."""

    scheme: str
    make: Callable[[str], str]  # a bucket (container) by name, created empty
    put: Callable[[str, str, bytes], None]  # bucket, key, body
    delete: Callable[[str, str], None]
    endpoint: str
    credentials: Mapping[str, str] = field(default_factory=dict)  # the options' variables
    env: Mapping[str, str] = field(default_factory=dict)  # and their values
    close: Callable[[Any], None] = lambda fs: None  # a listing's filesystem, after it

    def options(self, url: str, **kw: Any) -> BucketOptions:
        return BucketOptions.model_validate({
            "type": "bucket", "url": url, "poll": "1s", "settle": False,
            "endpoint_url": self.endpoint, "credentials": dict(self.credentials), **kw})

    def listing(self, opts: BucketOptions, env: Mapping[str, str] | None = None) -> list[Obj]:
        """One listing, as the source makes it (a new filesystem each time)."""
        lister = Lister(opts, self.env if env is None else env)
        try:
            return lister.list()
        finally:
            self.close(lister.fs)

    def listed(self, opts: BucketOptions, rows: dict[str, FileRow] | None = None) -> Found:
        """One listing reconciled against `rows` (which are updated, as the source does)."""
        rows = {} if rows is None else rows
        found = compare("landing", opts, matcher_for(opts), self.listing(opts), rows, {}, NOW)
        for row in found.saves:
            rows[row.path] = row
        for path in found.gone:
            rows.pop(path, None)
        return found


def gcs(server: GCS) -> Emulated:
    """gcp-storage-emulator: anonymous requests to `endpoint_url`."""
    return Emulated("gs", server.bucket, server.put, server.delete, server.endpoint,
                    close=close_gcsfs)


def azure(server: Azure) -> Emulated:
    """Azurite: requests signed with the account's key, both named by variables."""
    return Emulated("az", server.container, server.put, server.delete, server.endpoint,
                    {"key": "TEST_AZ_ACCOUNT", "secret": "TEST_AZ_KEY"}, AZURE_ENV)
