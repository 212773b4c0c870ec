"""What the bucket source's listing does alike on Google Cloud Storage and Azure Blob Storage,
run against a real server of each: gcp-storage-emulator (the GCS JSON API v1: objects.list
with a prefix; a bucket that does not exist is a 404) and Azurite (the Azure Blob REST API:
List Blobs; a container that does not exist is ContainerNotFound, which adlfs lists as
empty). Each store's own module (test_bucket_gcs.py, test_bucket_azure.py) tests what
differs: content tags, re-uploads, credentials, URLs."""

from __future__ import annotations

import bucket_stores
import pytest
from bucket_stores import Emulated

from triggerd.model import FileRow
from triggerd.sources.bucket import _what_to_fix


@pytest.fixture(params=["gcs", "azure"])
def emulated(request: pytest.FixtureRequest) -> Emulated:
    if request.param == "gcs":
        return bucket_stores.gcs(request.getfixturevalue("gcs_server"))
    return bucket_stores.azure(request.getfixturevalue("azure_server"))


def test_a_deleted_object_is_deleted_when_asked(emulated: Emulated) -> None:
    bucket = emulated.make(f"{emulated.scheme}-deleted")
    emulated.put(bucket, "landing/a.parquet", b"a")
    emulated.put(bucket, "landing/b.parquet", b"b")
    url = f"{emulated.scheme}://{bucket}/landing/"
    asked = emulated.options(url, events=["created", "modified", "deleted"])
    quiet = emulated.options(url)
    rows: dict[str, FileRow] = {}
    emulated.listed(asked, rows)
    kept = dict(rows)
    emulated.delete(bucket, "landing/a.parquet")
    (gone,) = emulated.listed(asked, rows).events
    assert (gone.kind, gone.subject) == ("deleted", f"{url}a.parquet")
    assert gone.payload["relpath"] == "a.parquet" and gone.payload["size"] == 1
    assert list(rows) == [f"{url}b.parquet"]
    not_asked = emulated.listed(quiet, kept)
    assert not_asked.events == [] and not_asked.gone == [f"{url}a.parquet"]


def test_a_missing_bucket_says_so_and_an_empty_one_lists_nothing(emulated: Emulated) -> None:
    """adlfs lists a container that does not exist as empty (it swallows ContainerNotFound);
    the lister checks the bucket when a listing is empty, so the source says what is wrong
    instead of taking every tracked object for deleted."""
    url = f"{emulated.scheme}://{emulated.scheme}-no-such-bucket/landing/"
    opts = emulated.options(url)
    with pytest.raises(FileNotFoundError) as exc:
        emulated.listing(opts)
    assert _what_to_fix(opts, exc.value).startswith(f"{url}: the bucket does not exist")
    empty = emulated.make(f"{emulated.scheme}-empty")
    assert emulated.listing(emulated.options(f"{emulated.scheme}://{empty}/landing/")) == []
