"""The `bucket` source through the real daemon against Google Cloud Storage and Azure Blob
Storage servers: gcp-storage-emulator (the GCS JSON API v1: objects.list, uploads, md5Hash,
404 for a missing bucket) and Azurite (the Azure Blob REST API: List Blobs, Put Blob, ETag,
Shared Key). The daemon reaches them by `endpoint_url`, as a user's config would: a missing
bucket made healthy once it exists, uploads retrained once, the same bytes again a duplicate
on GCS and a change on Azure, a removal a `deleted` event, credentials never in the log."""

from __future__ import annotations

from typing import Any

from azure_server import ACCOUNT, ACCOUNT_KEY, Azure
from gcs_server import GCS
from harness import Triggerd, wait_for


def _config(td: Triggerd, url: str, endpoint: str, more: str = "") -> None:
    rec = td.recorder()
    td.write(f"""
        state_dir: state
        sources:
          landing:
            type: bucket
            url: {url}
            poll: 1s
            settle: false
            patterns: ["**/*.parquet"]
            events: [created, modified, deleted]
            endpoint_url: {endpoint}
{more}
        backends:
          train: {{type: command, argv: [python3, {rec}]}}
        rules:
          new-data:
            on: [landing]
            dispatch: {{backend: train}}
    """)


def _source(td: Triggerd) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in td.json("status")["sources"]
                                 if s["name"] == "landing")
    return found


def _events(td: Triggerd) -> list[tuple[str, str]]:
    """(kind, relpath) of the stored events, in order."""
    return [(e["kind"], e["payload"]["relpath"]) for e in td.json("events")[::-1]]


def _retrained(td: Triggerd) -> list[str]:
    """The relpaths each trigger's job was started for (a job the stop interrupted runs again
    at the restart with the same trigger id: counted once)."""
    runs = {(call["trigger"], e) for call in td.calls_made() for e in call["events"]}
    return sorted(e.split(":")[0] for _, e in runs)


def test_gcs_missing_bucket_then_uploads_duplicates_and_removals(
        td: Triggerd, gcs_server: GCS) -> None:
    bucket = "e2e-gcs-later"
    if gcs_server.fs.exists(bucket):
        gcs_server.fs.rm(bucket, recursive=True)
    _config(td, f"gs://{bucket}/landing/", gcs_server.endpoint)
    proc = td.start()
    td.wait_running(proc)
    source = wait_for(lambda: (s := _source(td)) and not s["healthy"] and s["error"] and s,
                      20, "the source to say the bucket is missing")
    assert "the bucket does not exist" in source["error"]
    gcs_server.bucket(bucket)
    gcs_server.put(bucket, "landing/sales/1.parquet", b"rows 1")
    gcs_server.put(bucket, "landing/notes.txt", b"not watched")
    wait_for(lambda: _retrained(td) == ["sales/1.parquet"], 30, "the upload's retrain")
    wait_for(lambda: _source(td)["healthy"], 20, "the source healthy again")
    gcs_server.put(bucket, "landing/sales/1.parquet", b"rows 1")  # the same bytes: md5Hash
    wait_for(lambda: _source(td)["duplicates"] >= 1, 20, "the re-upload, a duplicate")
    gcs_server.delete(bucket, "landing/sales/1.parquet")
    wait_for(lambda: ("deleted", "sales/1.parquet") in _events(td), 20, "the removal")
    assert _events(td) == [("created", "sales/1.parquet"), ("deleted", "sales/1.parquet")]
    (created, _) = [e for e in td.json("events")[::-1]]
    assert created["subject"] == f"gs://{bucket}/landing/sales/1.parquet"
    assert created["payload"]["size"] == 6 and created["payload"]["etag"]
    assert td.stop(proc) == 0


def test_azure_uploads_while_running_and_down_a_rewrite_and_a_removal(
        td: Triggerd, azure_server: Azure) -> None:
    container = azure_server.container("e2e-azure")
    azure_server.put(container, "landing/old/0.parquet", b"there before the start")
    _config(td, f"az://{container}/landing/", azure_server.endpoint,
            "            credentials: {key: TEST_AZ_ACCOUNT, secret: TEST_AZ_KEY}")
    env = {"TEST_AZ_ACCOUNT": ACCOUNT, "TEST_AZ_KEY": ACCOUNT_KEY}
    proc = td.start(env=env)
    td.wait_running(proc)
    wait_for(lambda: _retrained(td) == ["old/0.parquet"], 20, "the blob there at start")
    azure_server.put(container, "landing/sales/1.parquet", b"rows 1")
    wait_for(lambda: "sales/1.parquet" in _retrained(td), 20, "the upload while running")
    assert td.stop(proc) == 0
    azure_server.put(container, "landing/sales/2.parquet", b"rows 2")  # while down
    # the same bytes again: a new ETag on Azure, so a change (retrained), not a duplicate
    azure_server.put(container, "landing/sales/1.parquet", b"rows 1")
    azure_server.delete(container, "landing/old/0.parquet")
    proc = td.start(env=env)
    td.wait_running(proc)
    wait_for(lambda: len(td.json("events")) == 5, 20, "what changed while down")
    assert sorted(_events(td)[2:]) == [("created", "sales/2.parquet"),
                                       ("deleted", "old/0.parquet"),
                                       ("modified", "sales/1.parquet")]
    wait_for(lambda: _retrained(td).count("sales/1.parquet") == 2, 20, "the rewrite retrained")
    source = wait_for(lambda: (s := _source(td)) and s["details"].get("objects_tracked") == 2
                      and s, 20, "the figures of the last listing")
    assert source["healthy"] and source["duplicates"] == 0
    assert td.stop(proc) == 0
    assert ACCOUNT_KEY not in td.log()
