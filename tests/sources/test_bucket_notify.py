"""Object-store notifications read by a Kafka source (`format: s3 | gcs | eventgrid`): the
notices each documented message shape gives, the bucket source's events they become (the
same fingerprints as the listing's, so push and scan deduplicate), what is ignored, what is
rejected and why, and what `triggerd check` says about a wrong pairing.

The message shapes follow the providers' documented contracts: S3's event message structure
(docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html), its
EventBridge form and an SNS envelope; GCS Pub/Sub notifications (JSON_API_V1 payload, the
event type as an attribute) and their CloudEvents form; Azure Event Grid's blob events (Event
Grid schema, arrays). One test takes the S3 message from moto's server itself (the S3 REST
API sending an event notification to an SQS queue), not from a sample written here.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from triggerd.config.loader import load_config
from triggerd.errors import ConfigError
from triggerd.model import Event, FileRow
from triggerd.sources._bucketlist import Lister, Obj, compare, matcher_for, notice_event
from triggerd.sources._bucketnotify import Notice
from triggerd.sources._bucketoptions import BucketOptions
from triggerd.sources._kafka.decode import Decoder, Record
from triggerd.sources._kafka.options import KafkaOptions

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def bucket(url: str = "s3://data/landing/", **kw: Any) -> BucketOptions:
    return BucketOptions.model_validate({"type": "bucket", "url": url, "poll": "1m",
                                         "settle": False, **kw})


def decoder(fmt: str) -> Decoder:
    return Decoder("notes", KafkaOptions.model_validate(
        {"type": "kafka", "brokers": ["k:9092"], "topic": "t", "format": fmt, "bucket": "b"}))


def record(value: Any, headers: dict[str, str] | None = None) -> Record:
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    return Record("t", 0, 7, None, None, data,
                  [(k, v.encode()) for k, v in (headers or {}).items()])


def read(fmt: str, value: Any, headers: dict[str, str] | None = None) -> list[Notice]:
    found = decoder(fmt).notices(record(value, headers), NOW)
    assert isinstance(found, list), found
    return found


def s3_record(name: str, key: str, **obj: Any) -> dict[str, Any]:
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-west-2",
            "eventTime": "2026-12-06T10:00:00.000Z", "eventName": name,
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "landing",
                   "bucket": {"name": "data", "arn": "arn:aws:s3:::data"},
                   "object": {"key": key, "sequencer": "0055AED6DCD90281E5", **obj}}}


def test_s3_records_are_read_with_their_keys_decoded() -> None:
    """S3 URL-encodes keys in notifications (a space as `+`, a plus as `%2B`)."""
    found = read("s3", {"Records": [
        s3_record("ObjectCreated:Put", "landing/sales+2026/a%2Bb.parquet", size=1024,
                  eTag="d41d8cd98f00b204e9800998ecf8427e", versionId="096fKK"),
        s3_record("ObjectRemoved:Delete", "landing/old.parquet"),
        s3_record("ObjectTagging:Put", "landing/tagged.parquet"),
        s3_record("LifecycleExpiration:Delete", "landing/expired.parquet"),
    ]})
    assert found == [
        Notice(False, "data", "landing/sales 2026/a+b.parquet", 1024,
               int(datetime(2026, 12, 6, 10, tzinfo=UTC).timestamp() * 1e9),
               "d41d8cd98f00b204e9800998ecf8427e", "096fKK"),
        Notice(True, "data", "landing/old.parquet", 0,
               int(datetime(2026, 12, 6, 10, tzinfo=UTC).timestamp() * 1e9), None, None),
        Notice(True, "data", "landing/expired.parquet", 0,
               int(datetime(2026, 12, 6, 10, tzinfo=UTC).timestamp() * 1e9), None, None),
    ]


def test_s3_through_sns_and_eventbridge_and_the_test_event() -> None:
    inner = {"Records": [s3_record("ObjectCreated:CompleteMultipartUpload", "landing/m.bin",
                                   size=9, eTag="abc-2")]}
    (via_sns,) = read("s3", {"Type": "Notification", "MessageId": "1",
                             "TopicArn": "arn:aws:sns:us-east-1:1:t",
                             "Message": json.dumps(inner)})
    assert (via_sns.key, via_sns.tag, via_sns.size) == ("landing/m.bin", "abc-2", 9)
    (bridged,) = read("s3", {
        "version": "0", "detail-type": "Object Created", "source": "aws.s3",
        "time": "2026-12-06T10:00:00Z",
        "detail": {"bucket": {"name": "data"},
                   "object": {"key": "landing/e.parquet", "size": 5, "etag": "e1",
                              "version-id": "v1"}}})
    assert (bridged.removed, bridged.key, bridged.tag, bridged.version_id) == (
        False, "landing/e.parquet", "e1", "v1")
    assert read("s3", {"Service": "Amazon S3", "Event": "s3:TestEvent",
                       "Bucket": "data"}) == []


GCS_OBJECT = {"kind": "storage#object", "id": "data/landing/g.parquet/1700000000000000",
              "name": "landing/g.parquet", "bucket": "data", "generation": "1700000000000000",
              "metageneration": "1", "contentType": "application/octet-stream",
              "timeCreated": "2026-12-06T10:00:00.000Z", "updated": "2026-12-06T10:00:00.000Z",
              "size": "11", "md5Hash": "XrY7u+Ae7tCTyyK7j1rNww==", "crc32c": "yZRlqg==",
              "etag": "CKih16GjycICEAE="}


def test_gcs_notifications_in_each_envelope() -> None:
    """The content tag is md5Hash (the listing's), not the generation-bound etag."""
    attrs = {"eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1",
             "bucketId": "data", "objectId": "landing/g.parquet"}
    (headers,) = read("gcs", GCS_OBJECT, attrs)
    assert (headers.removed, headers.key, headers.size, headers.tag) == (
        False, "landing/g.parquet", 11, "XrY7u+Ae7tCTyyK7j1rNww==")
    push = {"message": {"attributes": attrs, "messageId": "1",
                        "data": base64.b64encode(json.dumps(GCS_OBJECT).encode()).decode()},
            "subscription": "projects/p/subscriptions/s"}
    assert read("gcs", push) == [headers]
    cloud = {"specversion": "1.0", "type": "google.cloud.storage.object.v1.finalized",
             "source": "//storage.googleapis.com/projects/_/buckets/data", "id": "1",
             "data": GCS_OBJECT}
    assert read("gcs", cloud) == [headers]
    assert read("gcs", GCS_OBJECT, {"ce_type": "google.cloud.storage.object.v1.deleted"}
                )[0].removed
    deleted = {**attrs, "eventType": "OBJECT_DELETE"}
    assert read("gcs", GCS_OBJECT, deleted)[0].removed
    # an overwrite's delete of the old generation, an archive, a metadata change: no news
    assert read("gcs", GCS_OBJECT, {**deleted, "overwrittenByGeneration": "2"}) == []
    assert read("gcs", GCS_OBJECT, {**attrs, "eventType": "OBJECT_ARCHIVE"}) == []
    assert read("gcs", GCS_OBJECT, {**attrs, "eventType": "OBJECT_METADATA_UPDATE"}) == []


def grid(kind: str, path: str, **data: Any) -> dict[str, Any]:
    return {"topic": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/"
                     "storageAccounts/acct",
            "subject": f"/blobServices/default/containers/data/blobs/{path}",
            "eventType": kind, "eventTime": "2026-12-06T10:00:00.9584103Z", "id": "1",
            "data": {"api": "PutBlockList", "eTag": "0x8D4BCC2E4835CD0",
                     "contentType": "text/plain", "contentLength": 524288,
                     "blobType": "BlockBlob",
                     "url": f"https://acct.blob.core.windows.net/data/{path}", **data},
            "dataVersion": "", "metadataVersion": "1"}


def test_event_grid_blob_events() -> None:
    found = read("eventgrid", [
        grid("Microsoft.Storage.BlobCreated", "landing/a b.parquet"),
        grid("Microsoft.Storage.BlobCreated", "landing/lake.parquet", api="CreateFile"),
        grid("Microsoft.Storage.BlobDeleted", "landing/old.parquet", api="DeleteBlob"),
        grid("Microsoft.Storage.BlobTierChanged", "landing/x.parquet"),
    ])
    assert [(n.removed, n.bucket, n.key, n.tag) for n in found] == [
        (False, "data", "landing/a b.parquet", "0x8D4BCC2E4835CD0"),
        (True, "data", "landing/old.parquet", "0x8D4BCC2E4835CD0")]
    assert found[0].size == 524288
    cloud = {"specversion": "1.0", "type": "Microsoft.Storage.BlobCreated",
             "source": "/subscriptions/s/.../storageAccounts/acct", "id": "1",
             "time": "2026-12-06T10:00:00Z",
             "subject": "/blobServices/default/containers/data/blobs/landing/c.parquet",
             "data": {"api": "PutBlob", "eTag": "0x1", "contentLength": 3}}
    assert [n.key for n in read("eventgrid", cloud)] == ["landing/c.parquet"]


@pytest.mark.parametrize(("fmt", "value", "says"), [
    ("s3", {"hello": "world"}, "not an S3 event notification: no `Records` list"),
    ("s3", {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "d"}}}]},
     "Records[0]: no `s3.object`"),
    ("s3", {"Type": "Notification", "Message": "{not json"}, "Message is not JSON"),
    ("gcs", [1, 2], "not a GCS object notification: not a JSON object"),
    ("gcs", {"message": {"data": "%%%"}}, "`message.data` is not base64"),
    ("gcs", {"kind": "storage#object", "bucket": "data"}, "no `name`"),
    ("eventgrid", [{"eventType": "Microsoft.Storage.BlobCreated", "subject": "/x",
                    "data": {}}], "[0]: subject '/x' is not /blobServices/default/containers/"),
    ("eventgrid", {"id": 1}, "no `eventType` (Event Grid) or `type` (CloudEvents)"),
])
def test_a_message_that_is_not_a_notification_is_rejected_saying_why(
        fmt: str, value: Any, says: str) -> None:
    found = decoder(fmt).notices(record(value), NOW)
    assert not isinstance(found, list)
    assert found.kind == "notification" and says in found.error
    assert found.ref == "t/0/7" and found.head is not None


def test_invalid_json_and_oversized_messages_are_rejected_as_for_any_json_message() -> None:
    bad = decoder("s3").notices(record(b"{oops"), NOW)
    assert not isinstance(bad, list) and bad.kind == "json"


def event_of(opts: BucketOptions, notice: Notice, row: FileRow | None = None) -> Event | None:
    return notice_event("landing", opts, matcher_for(opts), notice, row, NOW)


def test_notices_become_the_events_the_listing_makes() -> None:
    """The same kind, subject, fingerprint and payload keys as `compare` gives the listed
    object; the row decides created or modified and a removal's fingerprint."""
    opts = bucket(patterns=["**/*.parquet"], events=["created", "modified", "deleted"])
    obj = Obj("landing/sales/1.parquet", 6, 1_765_000_000_000_000_000, "e1", None)
    (listed,) = compare("landing", opts, matcher_for(opts), [obj], {}, {}, NOW).events
    notified = event_of(opts, Notice(False, "data", obj.key, 6, 1_765_000_000_500_000_000,
                                     "e1", None))
    assert notified is not None
    assert (notified.kind, notified.subject, notified.fingerprint, notified.source) == (
        listed.kind, listed.subject, listed.fingerprint, "landing")
    assert notified.id == listed.id  # one event in the store, whichever comes first
    assert set(notified.payload) == set(listed.payload)
    row = FileRow(listed.subject, 0, 6, obj.mtime_ns, listed.fingerprint)
    changed = event_of(opts, Notice(False, "data", obj.key, 7, 0, "e2", None), row)
    assert changed is not None and changed.kind == "modified"
    assert changed.fingerprint == "sales/1.parquet:e2"
    gone = event_of(opts, Notice(True, "data", obj.key, 0, 0, None, None), row)
    (listed_gone,) = compare("landing", opts, matcher_for(opts), [], {row.path: row}, {},
                             NOW).events
    assert gone is not None and gone.id == listed_gone.id and gone.kind == "deleted"


@pytest.mark.parametrize(("notice", "why"), [
    (Notice(False, "other", "landing/a.parquet", 1, 0, "e", None), "another bucket"),
    (Notice(False, "data", "elsewhere/a.parquet", 1, 0, "e", None), "outside the prefix"),
    (Notice(False, "data", "landing/a.txt", 1, 0, "e", None), "not a watched pattern"),
    (Notice(True, "data", "landing/a.parquet", 0, 0, None, None), "removal of an unseen object"),
])
def test_notices_of_what_the_bucket_source_does_not_watch_make_no_event(
        notice: Notice, why: str) -> None:
    opts = bucket(patterns=["**/*.parquet"], events=["created", "deleted"])
    assert event_of(opts, notice) is None, why


def test_a_kind_the_bucket_source_leaves_out_makes_no_event() -> None:
    opts = bucket(events=["created"])
    row = FileRow("s3://data/landing/a", 0, 1, 0, "a:e0")
    assert event_of(opts, Notice(False, "data", "landing/a", 1, 0, "e1", None), row) is None
    assert event_of(opts, Notice(True, "data", "landing/a", 0, 0, None, None), row) is None


def _check(tmp_path: Path, sources: str) -> str:
    path = tmp_path / "triggerd.yaml"
    path.write_text("state_dir: state\nsources:\n" + sources +
                    "backends: {t: {type: command, argv: [echo]}}\n"
                    "rules: {r: {on: [landing], dispatch: {backend: t}}}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return "\n".join(exc.value.problems)


LANDING = "  landing: {type: bucket, url: 's3://data/in/', poll: 1m}\n"
NOTES = "  notes: {type: kafka, brokers: ['k:9092'], topic: t, "


@pytest.mark.parametrize(("sources", "says"), [
    (LANDING + NOTES + "format: s3}\n", "`format: s3` needs `bucket`"),
    (LANDING + NOTES + "format: json, bucket: landing}\n",
     "`bucket` applies to the notification formats (s3, gcs, eventgrid) only"),
    (LANDING + NOTES + "format: s3, bucket: nowhere}\n",
     "triggerd.yaml:4: sources.notes.bucket: unknown source 'nowhere'"),
    (LANDING + NOTES + "format: s3, bucket: landing, subject: '{key}'}\n",
     "leave out `subject` and `fingerprint`"),
    ("  landing: {type: bucket, url: 's3://data/in/', poll: 1m, fingerprint: stat}\n"
     + NOTES + "format: s3, bucket: landing}\n", "fingerprints by `stat`"),
    ("  landing: {type: cron, every: 1h}\n" + NOTES + "format: gcs, bucket: landing}\n",
     "source 'landing' is not a bucket source"),
])
def test_check_names_a_wrong_pairing(tmp_path: Path, sources: str, says: str) -> None:
    assert says in _check(tmp_path, sources)


def test_the_s3_message_moto_sends_gives_the_listings_fingerprint(s3_server: Any) -> None:
    """moto's server implements S3 event notifications to SQS (the message S3 sends, keys
    URL-encoded): an object is put over the wire, the queue's message is read over the wire
    (as an SQS-to-Kafka bridge would) and decoded, and the bucket is listed with the bucket
    source's own lister: one event id, whichever comes first."""
    from s3_server import KEY, SECRET

    name = s3_server.bucket("notify-contract")
    queue = s3_server.notify(name)
    s3_server.put(name, "landing/sales 2026/1+1.parquet", b"rows")
    bodies = s3_server.notifications(queue)
    notices = [n for b in bodies for n in read("s3", json.loads(b))]
    assert [n.key for n in notices] == ["landing/sales 2026/1+1.parquet"]
    opts = bucket(f"s3://{name}/landing/", endpoint_url=s3_server.endpoint,
                  credentials={"key": "K", "secret": "S"})
    lister = Lister(opts, {"K": KEY, "S": SECRET})
    (listed,) = compare("landing", opts, matcher_for(opts), lister.list(), {}, {}, NOW).events
    notified = event_of(opts, notices[0])
    assert notified is not None and notified.id == listed.id
    assert notified.fingerprint == listed.fingerprint == (
        f"sales 2026/1+1.parquet:{listed.payload['etag']}")
