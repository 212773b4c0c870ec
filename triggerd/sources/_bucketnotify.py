"""Object-store notifications (as they arrive on Kafka) read into `Notice`s: which object of
which bucket was written or removed, with the content tag the listing fingerprints by.

Formats (the Kafka source's `format:`):

`s3`
    Amazon S3 event notifications: the `Records` JSON S3 sends to SQS, SNS and Lambda
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html),
    also wrapped in an SNS envelope (`{"Type": "Notification", "Message": "<the JSON>"}`),
    and S3 events as EventBridge delivers them (`detail-type` "Object Created" / "Object
    Deleted"). Keys in `Records` are URL-encoded (`+` for a space) and decoded here.
    `ObjectCreated:*` is a write; `ObjectRemoved:*` and `LifecycleExpiration:Delete*` are
    removals; S3's `s3:TestEvent` and every other event name are ignored.
`gcs`
    Google Cloud Storage Pub/Sub notifications with the `JSON_API_V1` payload (the object
    resource), the event type in the `eventType` attribute: as a Kafka header (Pub/Sub's
    Kafka connector copies attributes to headers), or in a Pub/Sub push envelope
    (`{"message": {"attributes": {...}, "data": "<base64>"}}`); also CloudEvents
    (`google.cloud.storage.object.v1.finalized` / `.deleted`, structured, or binary with
    a `ce_type` header). OBJECT_FINALIZE is a write; OBJECT_DELETE a removal unless the object
    was overwritten (`overwrittenByGeneration`: its new generation is notified as a write);
    OBJECT_ARCHIVE and OBJECT_METADATA_UPDATE are ignored (the live object did not change).
`eventgrid`
    Azure Event Grid blob events, in the Event Grid schema or the CloudEvents schema, one
    event or an array: `Microsoft.Storage.BlobCreated` is a write (but a Data Lake
    `CreateFile`, the empty file a `FlushWithClose` completes, is ignored);
    `Microsoft.Storage.BlobDeleted` a removal; others ignored. The container and blob path
    come from the subject (`/blobServices/default/containers/<c>/blobs/<path>`).

A message that is none of these raises `NotANotification` saying what is missing; the Kafka
source records it as a rejected message. Content tags match the listing's (`content_tag`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

__all__ = ["FORMATS", "NotANotification", "Notice", "content_tag", "notices"]


class NotANotification(ValueError):
    """A message of a notification format that is not a notification of it."""


@dataclass(frozen=True, slots=True)
class Notice:
    """One object written (`removed` False) or removed, as a notification tells it."""

    removed: bool
    bucket: str
    key: str
    size: int
    mtime_ns: int
    tag: str | None  # the content tag (see `content_tag`)
    version_id: str | None


# the fields a listing or a notification holds an object's content tag in, by fsspec protocol:
# S3's ETag (the MD5 of the bytes, or of the parts' MD5s for a multipart upload); GCS's
# md5Hash (crc32c for composite objects, which have none); Azure's ETag (which changes on
# every write: on Azure a re-upload of the same bytes is not recognised as one). The listing's
# names are the libraries': gcsfs gives the object resource's fields (md5Hash, crc32c, etag),
# adlfs `etag` in quotes ('"0x8DC..."'), s3fs `ETag` in quotes; notifications' are the
# documented ones (S3 `eTag`, the object resource, Event Grid `eTag`). Checked against the
# servers in tests/sources/test_bucket_gcs.py and test_bucket_azure.py.
TAG_FIELDS = {
    "s3": ("ETag", "etag", "eTag"),
    "gcs": ("md5Hash", "crc32c", "etag"),
    "abfs": ("etag", "ETag", "eTag"),
}


def content_tag(protocol: str, info: Mapping[str, Any]) -> str | None:
    """The content tag of an object (a listing's info or a notification's object), quotes
    stripped, or None when the store gave none."""
    for name in TAG_FIELDS.get(protocol, ("ETag", "etag")):
        tag = info.get(name)
        if tag:
            return str(tag).strip('"')
    return None


def _time_ns(text: Any) -> int:
    if not isinstance(text, str):
        return 0
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return 0
    return int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1e9)


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _need(mapping: Any, *path: str) -> Any:
    """mapping[path[0]][path[1]]...; NotANotification naming the missing field."""
    here = mapping
    for i, name in enumerate(path):
        if not isinstance(here, dict) or here.get(name) in (None, ""):
            raise NotANotification(f"no `{'.'.join(path[:i + 1])}`")
        here = here[name]
    return here


# -- S3 ---------------------------------------------------------------------------------------

def _s3(value: Any, headers: Mapping[str, str | None]) -> Iterator[Notice]:
    if isinstance(value, dict) and value.get("Type") == "Notification" and "Message" in value:
        try:  # an SNS envelope: the S3 JSON is its Message
            value = json.loads(value["Message"])
        except (TypeError, ValueError):
            raise NotANotification("an SNS envelope whose Message is not JSON") from None
    if not isinstance(value, dict):
        raise NotANotification("not a JSON object")
    if value.get("Event") == "s3:TestEvent":
        return
    if "detail-type" in value and value.get("source") == "aws.s3":
        yield from _s3_eventbridge(value)
        return
    records = value.get("Records")
    if not isinstance(records, list):
        raise NotANotification("no `Records` list (not an S3 event notification)")
    for i, record in enumerate(records):
        try:
            name = str(_need(record, "eventName"))
            if name.startswith("ObjectCreated:"):
                removed = False
            elif name.startswith(("ObjectRemoved:", "LifecycleExpiration:Delete")):
                removed = True
            else:
                continue
            obj = _need(record, "s3", "object")
            yield Notice(removed, str(_need(record, "s3", "bucket", "name")),
                         unquote_plus(str(_need(obj, "key"))), _int(obj.get("size")),
                         _time_ns(record.get("eventTime")), content_tag("s3", obj),
                         obj.get("versionId") or None)
        except NotANotification as exc:
            raise NotANotification(f"Records[{i}]: {exc}") from None


def _s3_eventbridge(value: dict[str, Any]) -> Iterator[Notice]:
    kind = value.get("detail-type")
    if kind not in ("Object Created", "Object Deleted"):
        return
    obj = _need(value, "detail", "object")
    yield Notice(kind == "Object Deleted", str(_need(value, "detail", "bucket", "name")),
                 str(_need(obj, "key")), _int(obj.get("size")), _time_ns(value.get("time")),
                 content_tag("s3", obj), obj.get("version-id") or None)


# -- GCS --------------------------------------------------------------------------------------

_GCS_CLOUDEVENTS = {"google.cloud.storage.object.v1.finalized": "OBJECT_FINALIZE",
                    "google.cloud.storage.object.v1.deleted": "OBJECT_DELETE"}


def _gcs(value: Any, headers: Mapping[str, str | None]) -> Iterator[Notice]:
    if not isinstance(value, dict):
        raise NotANotification("not a JSON object")
    attributes: Mapping[str, Any] = headers
    if isinstance(value.get("message"), dict):  # a Pub/Sub push envelope
        message = value["message"]
        attributes = message.get("attributes") or {}
        try:
            value = json.loads(base64.b64decode(_need(message, "data"), validate=True))
        except (binascii.Error, ValueError):
            raise NotANotification("`message.data` is not base64 of a JSON object") from None
        if not isinstance(value, dict):
            raise NotANotification("`message.data` is not a JSON object")
    if "specversion" in value:  # a structured CloudEvent
        event_type = _GCS_CLOUDEVENTS.get(str(value.get("type")))
        value = value.get("data")
        if not isinstance(value, dict):
            raise NotANotification("a CloudEvent without `data`")
    elif attributes.get("ce_type") or attributes.get("ce-type"):  # a binary CloudEvent
        event_type = _GCS_CLOUDEVENTS.get(str(attributes.get("ce_type")
                                              or attributes.get("ce-type")))
    else:
        event_type = str(attributes.get("eventType") or "OBJECT_FINALIZE")
    if event_type == "OBJECT_DELETE" and attributes.get("overwrittenByGeneration"):
        return  # overwritten: the new generation's OBJECT_FINALIZE is the news
    if event_type not in ("OBJECT_FINALIZE", "OBJECT_DELETE"):
        return
    yield Notice(event_type == "OBJECT_DELETE", str(_need(value, "bucket")),
                 str(_need(value, "name")), _int(value.get("size")),
                 _time_ns(value.get("updated") or value.get("timeCreated")),
                 content_tag("gcs", value), None)


# -- Azure Event Grid -------------------------------------------------------------------------

_BLOB_SUBJECT = "/blobServices/default/containers/"


def _eventgrid(value: Any, headers: Mapping[str, str | None]) -> Iterator[Notice]:
    events = value if isinstance(value, list) else [value]
    for i, event in enumerate(events):
        try:
            yield from _grid_event(event)
        except NotANotification as exc:
            raise NotANotification(f"[{i}]: {exc}" if isinstance(value, list)
                                   else str(exc)) from None


def _grid_event(event: Any) -> Iterator[Notice]:
    if not isinstance(event, dict):
        raise NotANotification("not a JSON object")
    kind = event.get("eventType") or event.get("type")
    if kind is None:
        raise NotANotification("no `eventType` (Event Grid) or `type` (CloudEvents)")
    if kind not in ("Microsoft.Storage.BlobCreated", "Microsoft.Storage.BlobDeleted"):
        return
    data = event.get("data")
    if not isinstance(data, dict):
        raise NotANotification("no `data` object")
    if data.get("api") == "CreateFile":
        return  # Data Lake: the empty file; its FlushWithClose is the write
    subject = str(_need(event, "subject"))
    if not subject.startswith(_BLOB_SUBJECT) or "/blobs/" not in subject:
        raise NotANotification(f"subject {subject[:200]!r} is not "
                               f"{_BLOB_SUBJECT}<container>/blobs/<path>")
    container, _, key = subject[len(_BLOB_SUBJECT):].partition("/blobs/")
    yield Notice(kind == "Microsoft.Storage.BlobDeleted", container, key,
                 _int(data.get("contentLength")),
                 _time_ns(event.get("eventTime") or event.get("time")),
                 content_tag("abfs", data), None)


Parser = Callable[[Any, Mapping[str, str | None]], Iterator[Notice]]
FORMATS: dict[str, Parser] = {"s3": _s3, "gcs": _gcs, "eventgrid": _eventgrid}


def notices(fmt: str, value: Any, headers: Mapping[str, str | None]) -> list[Notice]:
    """The notices in one message's decoded JSON `value` (and its headers); [] for a message
    of the format that tells of no object written or removed (a test event, a metadata
    change). Raises NotANotification."""
    return list(FORMATS[fmt](value, headers))
