"""The `bucket` source through the real daemon, against a real S3-protocol server (moto's
ThreadedMotoServer, which follows the Amazon S3 REST API: ListObjectsV2, PutObject and its
ETag, NoSuchBucket): objects uploaded while it runs and while it is down, the same bytes
uploaded again (a duplicate), a missing bucket (unhealthy, then found)."""

from __future__ import annotations

from typing import Any

from harness import Triggerd, wait_for
from s3_server import KEY, S3, SECRET

ENV = {"TEST_S3_KEY": KEY, "TEST_S3_SECRET": SECRET, "AWS_EC2_METADATA_DISABLED": "true"}


def _config(td: Triggerd, s3: S3, bucket: str, **extra: str) -> None:
    rec = td.recorder()
    more = "".join(f"            {k}: {v}\n" for k, v in extra.items())
    td.write(f"""
        state_dir: state
        sources:
          landing:
            type: bucket
            url: s3://{bucket}/landing/
            poll: 1s
            settle: false
            patterns: ["**/*.parquet"]
            endpoint_url: {s3.endpoint}
            credentials: {{key: TEST_S3_KEY, secret: TEST_S3_SECRET}}
{more}
        backends:
          train: {{type: command, argv: [python3, {rec}]}}
        rules:
          new-data:
            on: [landing]
            dispatch: {{backend: train}}
    """)


def _source(td: Triggerd) -> dict[str, Any]:
    found: dict[str, Any] = td.json("status")["sources"][0]
    return found


def _keys(td: Triggerd) -> list[str]:
    return sorted(e.split(":")[0] for call in td.calls_made() for e in call["events"])


def test_objects_uploaded_while_running_and_while_down_each_retrain_once(
        td: Triggerd, s3_server: S3) -> None:
    bucket = s3_server.bucket("landing-e2e")
    s3_server.put(bucket, "landing/old/0.parquet", b"there before the first start")
    _config(td, s3_server, bucket)
    proc = td.start(env=ENV)
    td.wait_running(proc)
    wait_for(lambda: _keys(td) == ["old/0.parquet"], 20, "the object there at start")
    s3_server.put(bucket, "landing/sales/1.parquet", b"rows 1")
    s3_server.put(bucket, "landing/sales/notes.txt", b"not a parquet file")
    wait_for(lambda: "sales/1.parquet" in _keys(td), 20, "the upload while running")
    s3_server.put(bucket, "landing/sales/1.parquet", b"rows 1")  # the same bytes again
    wait_for(lambda: _source(td)["duplicates"] >= 1, 20, "the re-upload, a duplicate")
    assert td.stop(proc) == 0
    s3_server.put(bucket, "landing/sales/2.parquet", b"rows 2")  # while down
    s3_server.put(bucket, "landing/sales/1.parquet", b"rows 1, corrected")  # changed
    proc = td.start(env=ENV)
    td.wait_running(proc)
    wait_for(lambda: len(_keys(td)) == 4, 20, "what landed while down")
    assert _keys(td) == ["old/0.parquet", "sales/1.parquet", "sales/1.parquet",
                         "sales/2.parquet"]
    listed = td.json("events")
    events = {e["subject"]: e for e in listed}
    new = events[f"s3://{bucket}/landing/sales/2.parquet"]
    assert new["kind"] == "created"
    assert new["payload"]["bucket"] == bucket and new["payload"]["relpath"] == "sales/2.parquet"
    assert new["payload"]["size"] == 6 and new["payload"]["etag"]
    assert any(e["kind"] == "modified" and e["payload"]["size"] == 17 for e in listed)
    # the source's figures reach the store about once a second
    source = wait_for(lambda: (s := _source(td)) and s["details"].get("objects_tracked") == 3
                      and s, 20, "the figures of the last listing")
    assert source["healthy"] and source["details"]["listing_failures"] == 0
    assert td.stop(proc) == 0
    assert SECRET not in td.log()


def test_a_missing_bucket_is_reported_and_found_once_it_exists(
        td: Triggerd, s3_server: S3) -> None:
    bucket = "landing-later"
    _config(td, s3_server, bucket)
    proc = td.start(env=ENV)
    td.wait_running(proc)
    source = wait_for(lambda: (s := _source(td)) and not s["healthy"] and s["error"] and s,
                      20, "the source to say what is wrong")
    assert "the bucket does not exist" in source["error"]
    assert "check `url`" in source["error"]
    s3_server.bucket(bucket)
    s3_server.put(bucket, "landing/a.parquet", b"a")
    wait_for(lambda: _keys(td) == ["a.parquet"], 30, "the object, once the bucket exists")
    wait_for(lambda: _source(td)["healthy"], 20, "the source healthy again")
    assert td.stop(proc) == 0
    assert SECRET not in td.log()
