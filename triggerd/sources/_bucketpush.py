"""Notifications into a bucket source's events: what a Kafka source with a notification
`format:` (s3, gcs, eventgrid) stores for the messages it reads.

Each notice becomes the event the bucket source's listing would make of that object
(`_bucketlist.notice_event`), under the bucket source's name and with its fingerprint, so the
store deduplicates push against scan: a notification fires at once, the next listing's event
for the same object is a duplicate, and an object whose notification was lost is found by the
listing. Created or modified, and a removal's fingerprint, come from the object table (the
listing's rows, read here, never written: the listing owns them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from triggerd.plugin import Event
from triggerd.sources._bucketlist import matcher_for, notice_event, url_of
from triggerd.sources._bucketnotify import Notice
from triggerd.sources._bucketoptions import BucketOptions
from triggerd.sources._fstable import FileTable

__all__ = ["BucketPush"]


class BucketPush:
    """The events of notices about the objects of bucket source `source`."""

    def __init__(self, source: str, options: BucketOptions, files: FileTable) -> None:
        self.source = source
        self.options = options
        self.files = files
        self.matcher = matcher_for(options)

    async def events(self, notices: Sequence[Notice], now: datetime) -> list[Event]:
        """The events of `notices` (in order), leaving out those that tell of nothing the
        bucket source watches. Raises StoreError when the object table cannot be read."""
        if not notices:
            return []
        mine = [n for n in notices if n.bucket == self.options.bucket]
        paths = sorted({url_of(self.options, n.key) for n in mine})
        rows = await self.files.lookup(self.source, paths) if paths else {}
        out = []
        for notice in notices:
            row = rows.get(url_of(self.options, notice.key))
            event = notice_event(self.source, self.options, self.matcher, notice, row, now)
            if event is not None:
                out.append(event)
        return out
