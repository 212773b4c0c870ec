"""The `bucket` source through the real daemon, against a real S3-protocol server (moto's
ThreadedMotoServer, which follows the Amazon S3 REST API: ListObjectsV2, PutObject and its
ETag, NoSuchBucket): objects uploaded while it runs and while it is down, the same bytes
uploaded again (a duplicate), a missing bucket (unhealthy, then found)."""

from __future__ import annotations

import json
from typing import Any

from harness import Triggerd, wait_for
from kafka_support import Tansu, new_topic, produce
from s3_server import KEY, S3, SECRET

ENV = {"TEST_S3_KEY": KEY, "TEST_S3_SECRET": SECRET, "AWS_EC2_METADATA_DISABLED": "true"}


def _config(td: Triggerd, s3: S3, bucket: str, more_sources: str = "", **extra: str) -> None:
    rec = td.recorder()
    poll = extra.pop("poll", "1s")
    more = "".join(f"            {k}: {v}\n" for k, v in extra.items())
    td.write(f"""
        state_dir: state
        sources:
          landing:
            type: bucket
            url: s3://{bucket}/landing/
            poll: {poll}
            settle: false
            patterns: ["**/*.parquet"]
            endpoint_url: {s3.endpoint}
            credentials: {{key: TEST_S3_KEY, secret: TEST_S3_SECRET}}
{more}{more_sources}
        backends:
          train: {{type: command, argv: [python3, {rec}]}}
        rules:
          new-data:
            on: [landing]
            dispatch: {{backend: train}}
    """)


def _source(td: Triggerd) -> dict[str, Any]:
    return _named(td, "landing")


def _keys(td: Triggerd) -> list[str]:
    """The relpaths each trigger's job was started for (a job the stop interrupted runs again
    at the restart with the same trigger id: counted once)."""
    runs = {(call["trigger"], e) for call in td.calls_made() for e in call["events"]}
    return sorted(e.split(":")[0] for _, e in runs)


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


def test_a_notification_fires_at_once_and_the_listing_finds_what_a_lost_one_missed(
        td: Triggerd, s3_server: S3, kafka_broker: Tansu) -> None:
    """Push and scan together: S3 event notifications (moto's server sends them to an SQS
    queue, S3's contract; the test relays each message body to a Kafka topic on tansu, as an
    SQS-to-Kafka bridge does) are read by a Kafka source with `format: s3` for the bucket
    source, which lists only at start (`poll: 1h`). A notified object retrains at once; a
    restart's listing finds it again (a duplicate: no second retrain) and finds the object
    whose notification was lost."""
    bucket = s3_server.bucket("landing-push")
    queue = s3_server.notify(bucket)
    topic = new_topic(kafka_broker.bootstrap)
    _config(td, s3_server, bucket, poll="1h", more_sources=f"""\
          notes:
            {{type: kafka, brokers: ["{kafka_broker.bootstrap}"], topic: {topic},
              group: g-{topic}, start: earliest, format: s3, bucket: landing,
              session_timeout: 3s, heartbeat_interval: 1s, commit_interval: 500ms}}""")
    proc = td.start(env=ENV)
    td.wait_running(proc)
    wait_for(lambda: _source(td)["details"].get("listings") == 1, 20, "the first listing")
    s3_server.put(bucket, "landing/sales/1.parquet", b"rows 1")
    produce(kafka_broker.bootstrap, topic, s3_server.notifications(queue))
    wait_for(lambda: _keys(td) == ["sales/1.parquet"], 30, "the notified object's retrain")
    assert _source(td)["details"]["listings"] == 1  # the listing did not find it
    notes = wait_for(lambda: (s := _named(td, "notes")) and s["details"].get(
        "notifications", {}).get("objects") == 1 and s, 20, "the notification counted")
    assert notes["details"]["notifications"]["bucket"] == "landing"
    (event,) = td.json("events")
    assert (event["source"], event["kind"]) == ("landing", "created")
    s3_server.put(bucket, "landing/sales/2.parquet", b"rows 2")
    s3_server.notifications(queue)  # lost on the way: never reaches Kafka
    produce(kafka_broker.bootstrap, topic, [json.dumps({"Records": "not a list"})])
    wait_for(lambda: _named(td, "notes")["details"]["bad"] == {"notification": 1}, 20,
             "the malformed notification counted")
    assert td.stop(proc) == 0
    proc = td.start(env=ENV, log="again.log")
    td.wait_running(proc)
    wait_for(lambda: _keys(td) == ["sales/1.parquet", "sales/2.parquet"], 30,
             "the lost notification's object, found by the listing")
    wait_for(lambda: _source(td)["duplicates"] >= 1, 20,
             "the notified object, listed again: a duplicate")
    assert len(td.json("events")) == 2
    # (stopped once this daemon's Kafka source holds its partition: a stop in the middle of
    # the group's join waits for the source's 10 s cap on stopping faust)
    wait_for(lambda: f"partitions assigned: {topic}/0" in td.log("again.log"), 30,
             "the notification source's partition")
    assert td.stop(proc) == 0


def _named(td: Triggerd, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in td.json("status")["sources"] if s["name"] == name)
    return found
