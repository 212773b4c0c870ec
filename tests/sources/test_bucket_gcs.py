"""The `bucket` source's listing of gs:// prefixes against a real server of the Google Cloud
Storage JSON API v1 (gcp-storage-emulator, `tests/gcs_server.py`): objects written over the
wire with gcsfs, listed by `Lister` through gcsfs as the daemon lists them (`endpoint_url`,
anonymous), and reconciled by `compare` into events. The contract: objects.list (prefix,
pages) returns each object's resource with `md5Hash`, `crc32c`, `etag`, `generation`, `size`
and `updated`; a bucket that does not exist is a 404; rewriting an object makes a new
generation with the same md5Hash when the bytes are the same.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from pathlib import Path

import bucket_stores
import pytest
from bucket_stores import Emulated
from gcs_server import GCS

from triggerd.config.loader import load_config
from triggerd.errors import ConfigError
from triggerd.model import FileRow
from triggerd.sources._bucketlist import (
    _storage_options,
)
from triggerd.sources._bucketoptions import BucketOptions


@pytest.fixture
def gcs(gcs_server: GCS) -> Emulated:
    return bucket_stores.gcs(gcs_server)


def md5_of(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324  (GCS's md5Hash)


def test_uploaded_objects_are_listed_and_become_created_events(gcs_server: GCS,
                                                               gcs: Emulated) -> None:
    bucket = gcs_server.bucket("gcs-created")
    gcs_server.put(bucket, "landing/sales/1.parquet", b"rows 1")
    gcs_server.put(bucket, "landing/2.parquet", b"rows 22")
    gcs_server.put(bucket, "landing/sales/notes.txt", b"not parquet")
    gcs_server.put(bucket, "elsewhere/3.parquet", b"outside the prefix")
    opts = gcs.options(f"gs://{bucket}/landing/", patterns=["**/*.parquet"])
    found = gcs.listed(opts)
    events = {e.payload["relpath"]: e for e in found.events}
    assert sorted(events) == ["2.parquet", "sales/1.parquet"]
    assert {e.kind for e in events.values()} == {"created"}
    event = events["sales/1.parquet"]
    info = gcs_server.info(bucket, "landing/sales/1.parquet")
    assert event.subject == f"gs://{bucket}/landing/sales/1.parquet"
    assert {k: v for k, v in event.payload.items() if k != "mtime"} == {
        "url": f"gs://{bucket}/landing/sales/1.parquet", "bucket": bucket,
        "key": "landing/sales/1.parquet", "relpath": "sales/1.parquet", "dir": "sales",
        "name": "1.parquet", "size": 6, "etag": md5_of(b"rows 1")}
    # the content tag is GCS's md5Hash (base64 of the bytes' MD5), the mtime its `updated`
    assert info["md5Hash"] == md5_of(b"rows 1")
    mtime = datetime.fromisoformat(event.payload["mtime"])
    assert abs((mtime - info["mtime"]).total_seconds()) < 1e-3
    assert event.fingerprint == f"sales/1.parquet:{md5_of(b'rows 1')}"
    assert events["2.parquet"].payload["size"] == 7


def test_the_same_bytes_uploaded_again_repeat_the_fingerprint(gcs_server: GCS,
                                                              gcs: Emulated) -> None:
    """GCS gives the rewritten object a new generation and `updated` time but the same
    md5Hash: the listing's event for it repeats the fingerprint (a duplicate the store counts,
    no retrain); other bytes make a new one."""
    bucket = gcs_server.bucket("gcs-again")
    gcs_server.put(bucket, "landing/a.parquet", b"rows")
    opts = gcs.options(f"gs://{bucket}/landing/")
    rows: dict[str, FileRow] = {}
    (first,) = gcs.listed(opts, rows).events
    before = gcs_server.info(bucket, "landing/a.parquet")
    assert gcs.listed(opts, rows).events == []  # nothing changed: nothing to say
    gcs_server.put(bucket, "landing/a.parquet", b"rows")
    after = gcs_server.info(bucket, "landing/a.parquet")
    assert after["generation"] != before["generation"]
    assert after["md5Hash"] == before["md5Hash"]
    (again,) = gcs.listed(opts, rows).events
    assert again.kind == "modified" and again.fingerprint == first.fingerprint
    gcs_server.put(bucket, "landing/a.parquet", b"other rows")
    (changed,) = gcs.listed(opts, rows).events
    assert (changed.kind, changed.fingerprint) == ("modified",
                                                   f"a.parquet:{md5_of(b'other rows')}")


def test_gcs_urls_and_the_bucket_root(gcs_server: GCS, gcs: Emulated) -> None:
    """gcs:// is gs://; a URL without a prefix watches the whole bucket."""
    bucket = gcs_server.bucket("gcs-root")
    gcs_server.put(bucket, "top.parquet", b"t")
    gcs_server.put(bucket, "deep/er/x.parquet", b"x")
    found = gcs.listed(gcs.options(f"gcs://{bucket}"))
    assert sorted(e.subject for e in found.events) == [
        f"gcs://{bucket}/deep/er/x.parquet", f"gcs://{bucket}/top.parquet"]


def test_storage_options_for_an_endpoint() -> None:
    """gcsfs gets the endpoint (no trailing slash), anonymous requests unless a token file
    is named (or `options` say otherwise), and one try at the storage-layout probe."""
    base = {"type": "bucket", "url": "gs://b/p/", "poll": "1m",
            "endpoint_url": "http://127.0.0.1:4443/"}
    opts = BucketOptions.model_validate(base)
    assert _storage_options(opts, {}) == {"endpoint_url": "http://127.0.0.1:4443",
                                          "token": "anon", "retry_timeout": 0}
    named = BucketOptions.model_validate({**base, "credentials": {"token": "SA_FILE"}})
    assert _storage_options(named, {"SA_FILE": "/etc/sa.json"})["token"] == "/etc/sa.json"
    told = BucketOptions.model_validate({**base, "options": {"token": "google_default"}})
    assert _storage_options(told, {})["token"] == "google_default"
    plain = BucketOptions.model_validate({**base, "endpoint_url": None})
    assert _storage_options(plain, {}) == {}


def _check(tmp_path: Path, source: str) -> str:
    path = tmp_path / "triggerd.yaml"
    path.write_text(f"state_dir: state\nsources:\n  b: {source}\n"
                    "backends: {t: {type: command, argv: [echo]}}\n"
                    "rules: {r: {on: [b], dispatch: {backend: t}}}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return "\n".join(exc.value.problems)


@pytest.mark.parametrize(("endpoint", "says"), [
    ("http://127.0.0.1:4443/storage/v1", "for gs:// the server's root, scheme://host:port "
                                         "without a path"),
    ("127.0.0.1:4443", "an http:// or https:// URL with a host"),
    ("http://127.0.0.1:port", "endpoint_url 'http://127.0.0.1:port': Port could not be cast"),
])
def test_check_names_a_bad_endpoint(tmp_path: Path, endpoint: str, says: str) -> None:
    said = _check(tmp_path, f"{{type: bucket, url: 'gs://b/p/', poll: 1m, "
                            f"endpoint_url: '{endpoint}'}}")
    assert says in said and "sources.b" in said
