"""The events of test inputs are the sources' own: kinds, subjects, fingerprints, payloads."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel

from triggerd.clock import ManualClock
from triggerd.model import Event
from triggerd.simulate.inputs import Builder
from triggerd.simulate.spec import Input
from triggerd.sources._bucketoptions import BucketOptions
from triggerd.sources._fsoptions import FilesystemOptions
from triggerd.sources._kafka.options import KafkaOptions
from triggerd.sources.cron import CronOptions, CronSource

T0 = datetime(2026, 3, 2, tzinfo=UTC)
SOURCES: dict[str, BaseModel] = {
    "landing": FilesystemOptions(type="filesystem", paths=["/data/landing"],
                                 patterns=["**/*.csv"], events=["created", "modified",
                                                                "deleted"]),
    "metrics": KafkaOptions(type="kafka", brokers=["k:9092"], topic="m", group="g",
                            subject="{value.model}"),
    "nightly": CronOptions(type="cron", schedule="0 2 * * *"),
    "raw": BucketOptions(type="bucket", url="s3://data/landing/", poll="1m",
                         patterns=["**/*.parquet"], events=["created", "modified", "deleted"]),
    "notes": KafkaOptions(type="kafka", brokers=["k:9092"], topic="s3", group="g",
                          format="s3", bucket="raw"),
}


class Inputs:
    """One timeline's builder (it remembers known files and Kafka offsets)."""

    def __init__(self) -> None:
        self.builder = Builder(SOURCES, T0, lambda at: str(at - T0))

    def __call__(self, raw: dict[str, Any], at: timedelta = timedelta(0)) -> list[Event]:
        item = Input.model_validate({"at": "0s", **raw})
        return [n.event for n in self.builder.build(item, T0 + at)[1]]


def test_a_file_is_created_then_modified_then_deleted_as_the_source_says() -> None:
    build = Inputs()
    first = build({"file": {"source": "landing", "path": "/data/landing/d/x.csv",
                            "size": "2KiB", "content": "a,b"}})
    again = build({"file": {"source": "landing", "path": "/data/landing/d/x.csv",
                            "size": 10, "content": "c,d"}}, timedelta(minutes=1))
    gone = build({"file": {"source": "landing", "path": "/data/landing/d/x.csv",
                           "kind": "deleted"}}, timedelta(minutes=2))
    ignored = build({"file": {"source": "landing", "path": "/data/landing/d/x.tmp"}})
    sha = hashlib.sha256(b"a,b").hexdigest()
    (event,) = first
    assert (event.kind, event.subject, event.fingerprint) == (
        "created", "/data/landing/d/x.csv", f"d/x.csv:{sha}")
    assert event.payload == {
        "path": "/data/landing/d/x.csv", "relpath": "d/x.csv", "dir": "d", "name": "x.csv",
        "size": 2048, "mtime": (T0 - timedelta(seconds=5)).isoformat(),
        "root": "/data/landing", "sha256": sha}
    assert [e.kind for e in again + gone] == ["modified", "deleted"]
    assert gone[0].fingerprint.endswith(":deleted") and ignored == []


def test_a_kafka_message_is_decoded_by_the_sources_decoder() -> None:
    build = Inputs()
    (event,) = build({"message": {"source": "metrics", "key": "k1",
                                  "value": {"model": "churn", "score": 0.4},
                                  "headers": {"h": "v"}}})
    assert (event.kind, event.subject, event.fingerprint) == ("message", "churn", "m/0/0")
    assert event.payload == {"value": {"model": "churn", "score": 0.4}, "key": "k1",
                             "topic": "m", "partition": 0, "offset": 0,
                             "timestamp": T0.isoformat(), "headers": {"h": "v"}}
    assert build({"message": {"source": "metrics", "raw": "{"}}) == []
    assert build.builder.notes[-1].startswith("message m/0/1 rejected by source metrics (json)")


def test_a_tick_is_the_cron_sources_own() -> None:
    slot = T0 + timedelta(hours=2)
    (event,) = Inputs()({"tick": {"source": "nightly"}}, timedelta(hours=2))
    source = CronSource("nightly", CronOptions(type="cron", schedule="0 2 * * *"))
    ctx: Any = SimpleNamespace(clock=ManualClock(slot))
    assert event == source._tick(ctx, slot, catch_up=False)
    assert event.fingerprint == "nightly@2026-03-02T02:00:00+00:00"


def test_an_object_is_what_the_bucket_listing_makes_of_it_and_notices_read_its_table() -> None:
    """`object:` inputs go through the bucket source's reconcile: created, a new content
    modified, the same content again no event (unchanged), deleted; the fingerprint is the
    listing's (relpath and content tag), so a notification of the same upload, decoded by the
    Kafka source, has the same one and deduplicates. Notices read the table the listings
    built: a listed object's notice is `modified`, a removal of it `deleted`."""
    build = Inputs()
    first = build({"object": {"source": "raw", "key": "dt=1/a.parquet", "size": 7,
                              "content": "v1"}})
    same = build({"object": {"source": "raw", "key": "s3://data/landing/dt=1/a.parquet",
                             "size": 7, "content": "v1"}})
    md5 = hashlib.md5(b"v1", usedforsecurity=False).hexdigest()
    (event,) = first
    assert (event.kind, event.subject, event.fingerprint) == (
        "created", "s3://data/landing/dt=1/a.parquet", f"dt=1/a.parquet:{md5}")
    assert {k: event.payload[k] for k in ("bucket", "key", "relpath", "dir", "name", "size",
                                          "etag")} == {
        "bucket": "data", "key": "landing/dt=1/a.parquet", "relpath": "dt=1/a.parquet",
        "dir": "dt=1", "name": "a.parquet", "size": 7, "etag": md5}
    assert same == []  # listed again unchanged: nothing new
    changed = build({"object": {"source": "raw", "key": "dt=1/a.parquet", "etag": "e2"}},
                    timedelta(minutes=1))
    notice = build({"message": {"source": "notes", "value": {"Records": [{
        "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "data"}, "object": {
            "key": "landing/dt=1/a.parquet", "size": 0, "eTag": "e2"}}}]}}},
                   timedelta(minutes=1))
    removed = build({"message": {"source": "notes", "value": {"Records": [{
        "eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "data"}, "object": {
            "key": "landing/dt=1/a.parquet"}}}]}}}, timedelta(minutes=2))
    fresh = build({"message": {"source": "notes", "value": {"Records": [{
        "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "data"}, "object": {
            "key": "landing/dt=2/b.parquet", "size": 1, "eTag": "e3"}}}]}}})
    gone = build({"object": {"source": "raw", "key": "dt=1/a.parquet", "kind": "deleted"}},
                 timedelta(minutes=3))
    assert [(e.kind, e.fingerprint) for e in changed + notice] == [
        ("modified", "dt=1/a.parquet:e2"), ("modified", "dt=1/a.parquet:e2")]
    assert [e.kind for e in removed + fresh + gone] == ["deleted", "created", "deleted"]
    assert build({"object": {"source": "raw", "key": "dt=1/notes.txt"}}) == []
