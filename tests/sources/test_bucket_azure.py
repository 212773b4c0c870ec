"""The `bucket` source's listing of az:// and abfs:// prefixes against a real server of the
Azure Blob REST API (Azurite, Microsoft's emulator, `tests/azure_server.py`): blobs written
over the wire with adlfs, listed by `Lister` through adlfs as the daemon lists them
(`endpoint_url` and the account's name and key from environment variables, signed with
Shared Key), and reconciled by `compare` into events. The contract: List Blobs (prefix,
markers) returns each blob's Content-Length, Last-Modified and ETag; every write of a blob
gives it a new ETag, the same bytes or not; a request with a wrong key is refused
(AuthorizationFailure); a container that does not exist is ContainerNotFound.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure_server import ACCOUNT, ACCOUNT_KEY, Azure

from triggerd.config.loader import load_config
from triggerd.errors import ConfigError
from triggerd.model import FileRow
from triggerd.sources._bucketlist import Found, Lister, Obj, _storage_options, compare, matcher_for
from triggerd.sources._bucketoptions import BucketOptions
from triggerd.sources.bucket import _what_to_fix

NOW = datetime(2026, 12, 6, tzinfo=UTC)
ENV = {"TEST_AZ_ACCOUNT": ACCOUNT, "TEST_AZ_KEY": ACCOUNT_KEY}


def options(azure: Azure, url: str, **kw: Any) -> BucketOptions:
    return BucketOptions.model_validate({
        "type": "bucket", "url": url, "poll": "1s", "settle": False,
        "endpoint_url": azure.endpoint,
        "credentials": {"key": "TEST_AZ_ACCOUNT", "secret": "TEST_AZ_KEY"}, **kw})


def listing(opts: BucketOptions, env: dict[str, str] = ENV) -> list[Obj]:
    return Lister(opts, env).list()


def listed(opts: BucketOptions, rows: dict[str, FileRow] | None = None) -> Found:
    """One listing reconciled against `rows` (which are updated, as the source does)."""
    rows = {} if rows is None else rows
    found = compare("landing", opts, matcher_for(opts), listing(opts), rows, {}, NOW)
    for row in found.saves:
        rows[row.path] = row
    for path in found.gone:
        rows.pop(path, None)
    return found


def test_uploaded_blobs_are_listed_and_become_created_events(azure_server: Azure) -> None:
    container = azure_server.container("az-created")
    azure_server.put(container, "landing/sales/1.parquet", b"rows 1")
    azure_server.put(container, "landing/2.parquet", b"rows 22")
    azure_server.put(container, "landing/sales/notes.txt", b"not parquet")
    azure_server.put(container, "elsewhere/3.parquet", b"outside the prefix")
    opts = options(azure_server, f"az://{container}/landing/", patterns=["**/*.parquet"])
    found = listed(opts)
    events = {e.payload["relpath"]: e for e in found.events}
    assert sorted(events) == ["2.parquet", "sales/1.parquet"]
    assert {e.kind for e in events.values()} == {"created"}
    event = events["sales/1.parquet"]
    info = azure_server.info(container, "landing/sales/1.parquet")
    # adlfs lists the ETag as `etag`, quoted ('"0x8DC..."'); the tag is without the quotes
    assert info["etag"].startswith('"') and info["etag"].endswith('"')
    etag = info["etag"].strip('"')
    assert event.subject == f"az://{container}/landing/sales/1.parquet"
    assert event.payload == {
        "url": f"az://{container}/landing/sales/1.parquet", "bucket": container,
        "key": "landing/sales/1.parquet", "relpath": "sales/1.parquet", "dir": "sales",
        "name": "1.parquet", "size": 6, "etag": etag,
        "mtime": info["last_modified"].astimezone(UTC).isoformat()}
    assert event.fingerprint == f"sales/1.parquet:{etag}"
    assert events["2.parquet"].payload["size"] == 7


def test_the_same_bytes_uploaded_again_are_a_change_on_azure(azure_server: Azure) -> None:
    """Azure gives every write a new ETag, the same bytes or not: a re-upload is `modified`
    with a new fingerprint (an event, a retrain), unlike S3 and GCS, whose tags are the
    content's. An unchanged blob says nothing."""
    container = azure_server.container("az-again")
    azure_server.put(container, "landing/a.parquet", b"rows")
    opts = options(azure_server, f"abfs://{container}/landing/")
    rows: dict[str, FileRow] = {}
    (first,) = listed(opts, rows).events
    before = azure_server.info(container, "landing/a.parquet")
    assert listed(opts, rows).events == []
    azure_server.put(container, "landing/a.parquet", b"rows")
    after = azure_server.info(container, "landing/a.parquet")
    assert after["etag"] != before["etag"]
    (again,) = listed(opts, rows).events
    assert again.kind == "modified" and again.fingerprint != first.fingerprint
    assert again.fingerprint == f"a.parquet:{after['etag'].strip(chr(34))}"


def test_a_deleted_blob_is_deleted_when_asked(azure_server: Azure) -> None:
    container = azure_server.container("az-deleted")
    azure_server.put(container, "landing/a.parquet", b"a")
    azure_server.put(container, "landing/b.parquet", b"b")
    asked = options(azure_server, f"az://{container}/landing/",
                    events=["created", "modified", "deleted"])
    quiet = options(azure_server, f"az://{container}/landing/")
    rows: dict[str, FileRow] = {}
    listed(asked, rows)
    kept = dict(rows)
    azure_server.delete(container, "landing/a.parquet")
    (gone,) = listed(asked, rows).events
    assert (gone.kind, gone.subject) == ("deleted", f"az://{container}/landing/a.parquet")
    assert gone.payload["relpath"] == "a.parquet" and gone.payload["size"] == 1
    assert list(rows) == [f"az://{container}/landing/b.parquet"]
    not_asked = listed(quiet, kept)
    assert not_asked.events == [] and not_asked.gone == [f"az://{container}/landing/a.parquet"]


def test_a_missing_container_says_the_bucket_does_not_exist(azure_server: Azure) -> None:
    """adlfs lists a container that does not exist as empty (it swallows ContainerNotFound);
    the lister checks the container when a listing is empty, so the source says what is
    wrong instead of taking every tracked blob for deleted."""
    opts = options(azure_server, "az://az-no-such-container/landing/")
    with pytest.raises(FileNotFoundError) as exc:
        listing(opts)
    said = _what_to_fix(opts, exc.value)
    assert said.startswith("az://az-no-such-container/landing/: the bucket does not exist")
    empty = azure_server.container("az-empty")
    assert listing(options(azure_server, f"az://{empty}/landing/")) == []


def test_a_wrong_account_key_is_refused(azure_server: Azure) -> None:
    container = azure_server.container("az-refused")
    opts = options(azure_server, f"az://{container}/")
    wrong = {**ENV, "TEST_AZ_KEY": ACCOUNT_KEY[:-8] + "AAAAAAA="}
    with pytest.raises(Exception, match="AuthorizationFailure") as exc:
        listing(opts, wrong)
    said = _what_to_fix(opts, exc.value)
    assert said.startswith(f"az://{container}/: access denied: check the credentials")
    assert ACCOUNT_KEY[:20] not in said


def test_storage_options_for_an_endpoint() -> None:
    """adlfs has no endpoint option: a connection string names the endpoint (BlobEndpoint,
    as written, http:// included), signed with the account key when both variables are
    named, else anonymous."""
    base = {"type": "bucket", "url": "az://c/p/", "poll": "1m",
            "endpoint_url": "http://127.0.0.1:10000/devstoreaccount1/",
            "credentials": {"key": "N", "secret": "K"}}
    opts = BucketOptions.model_validate(base)
    assert _storage_options(opts, {"N": "acct", "K": "a2V5"}) == {"connection_string": (
        "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;AccountName=acct;"
        "AccountKey=a2V5;")}
    anonymous = BucketOptions.model_validate({**base, "credentials": {}})
    assert _storage_options(anonymous, {}) == {
        "connection_string": "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"}
    with pytest.raises(ValueError, match="the environment variable K is not set"):
        _storage_options(opts, {"N": "acct"})
    plain = BucketOptions.model_validate({**base, "endpoint_url": None})
    assert _storage_options(plain, {"N": "acct", "K": "a2V5"}) == {
        "account_name": "acct", "account_key": "a2V5"}


def test_check_refuses_an_endpoint_and_a_connection_string(tmp_path: Path) -> None:
    path = tmp_path / "triggerd.yaml"
    path.write_text("state_dir: state\nsources:\n  b: {type: bucket, url: 'az://c/p/', "
                    "poll: 1m, endpoint_url: 'http://127.0.0.1:10000/devstoreaccount1', "
                    "options: {connection_string: 'BlobEndpoint=x'}}\n"
                    "backends: {t: {type: command, argv: [echo]}}\n"
                    "rules: {r: {on: [b], dispatch: {backend: t}}}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "endpoint_url and options.connection_string both say where the az:// store " \
           "is: give one" in "\n".join(exc.value.problems)
