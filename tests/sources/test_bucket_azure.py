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

from datetime import UTC
from pathlib import Path

import bucket_stores
import pytest
from azure_server import ACCOUNT_KEY, Azure
from bucket_stores import AZURE_ENV, Emulated

from triggerd.config.loader import load_config
from triggerd.errors import ConfigError
from triggerd.model import FileRow
from triggerd.sources._bucketlist import _storage_options
from triggerd.sources._bucketoptions import BucketOptions
from triggerd.sources.bucket import _what_to_fix


@pytest.fixture
def azure(azure_server: Azure) -> Emulated:
    return bucket_stores.azure(azure_server)


def test_uploaded_blobs_are_listed_and_become_created_events(azure_server: Azure,
                                                             azure: Emulated) -> None:
    container = azure_server.container("az-created")
    azure_server.put(container, "landing/sales/1.parquet", b"rows 1")
    azure_server.put(container, "landing/2.parquet", b"rows 22")
    azure_server.put(container, "landing/sales/notes.txt", b"not parquet")
    azure_server.put(container, "elsewhere/3.parquet", b"outside the prefix")
    opts = azure.options(f"az://{container}/landing/", patterns=["**/*.parquet"])
    found = azure.listed(opts)
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


def test_the_same_bytes_uploaded_again_are_a_change_on_azure(azure_server: Azure,
                                                             azure: Emulated) -> None:
    """Azure gives every write a new ETag, the same bytes or not: a re-upload is `modified`
    with a new fingerprint (an event, a retrain), unlike S3 and GCS, whose tags are the
    content's. An unchanged blob says nothing."""
    container = azure_server.container("az-again")
    azure_server.put(container, "landing/a.parquet", b"rows")
    opts = azure.options(f"abfs://{container}/landing/")
    rows: dict[str, FileRow] = {}
    (first,) = azure.listed(opts, rows).events
    before = azure_server.info(container, "landing/a.parquet")
    assert azure.listed(opts, rows).events == []
    azure_server.put(container, "landing/a.parquet", b"rows")
    after = azure_server.info(container, "landing/a.parquet")
    assert after["etag"] != before["etag"]
    (again,) = azure.listed(opts, rows).events
    assert again.kind == "modified" and again.fingerprint != first.fingerprint
    assert again.fingerprint == f"a.parquet:{after['etag'].strip(chr(34))}"


def test_a_wrong_account_key_is_refused(azure_server: Azure, azure: Emulated) -> None:
    container = azure_server.container("az-refused")
    opts = azure.options(f"az://{container}/")
    wrong = {**AZURE_ENV, "TEST_AZ_KEY": ACCOUNT_KEY[:-8] + "AAAAAAA="}
    with pytest.raises(Exception, match="AuthorizationFailure") as exc:
        azure.listing(opts, wrong)
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
