"""The `bucket` source: objects that land or change under a prefix of an object store
(S3 and S3-compatible stores, Google Cloud Storage, Azure Blob Storage), through fsspec.

The listing is the truth
    An object store sends no notifications of its own, so the source lists the prefix every
    `poll` (and at start) and reconciles the listing against its object table (the daemon's
    file table, `"files"`, one row per object: its URL, size, last-modified time and
    fingerprint), as the filesystem source reconciles a tree: a new object is `created`, one
    whose fingerprint changed `modified`, one gone `deleted` (when asked). Objects that landed
    while the daemon was down are found by the first listing; nothing is lost. Notifications
    (S3 event notifications, GCS Pub/Sub, Event Grid) arriving on Kafka make it faster; the
    listing still finds what a lost one missed.

Cheaper listings
    Sub-prefixes are listed at once (`_bucketlist.Lister`). With `listing: new_keys` (S3), a
    listing asks only for the keys after the greatest key seen (StartAfter), below any key
    still waiting to settle; every `full_listing_every`-th listing (the first included) is a
    full one, so changed and deleted objects and keys that sort earlier are found within that
    many polls. For prefixes whose new keys sort last (date partitions, timestamps).

Settling
    With `settle` (the default) an object becomes an event once two listings in a row saw it
    with the same fingerprint: a writer that rewrites a key in quick succession makes one event.
    Uploads are atomic in every object store, so `settle: false` is safe when keys are written
    once; it saves one `poll` of latency.

Events
    kinds created / modified / deleted; subject: the object's URL; fingerprint: see
    `_bucketlist`; payload: url, bucket, key, relpath (the key below the prefix), dir, name,
    size, mtime (last-modified, ISO 8601 UTC), etag and version_id when the store gives them.
    Emitted while the listing runs: each part of it (a page of 1,000 keys on S3, a sub-prefix
    elsewhere) is reconciled in the listing's thread and its events emitted here in batches
    of at most 1,000, with their rows in the same store transaction; at most `PARTS_AHEAD`
    parts wait, and the listing waits for them. So the first listing of a large prefix is
    never held whole (objects gone are known only once it is complete).

Failures
    A missing bucket, denied access, throttling (S3's 503 SlowDown) or an unreachable endpoint
    make the source unhealthy with what to fix (`triggerd status`), and the next listing waits
    longer (doubling, up to 10 `poll`s or 5 minutes, whichever is longer). What a listing
    emitted before it failed is stored with its rows; nothing else changes, so nothing is
    lost. Messages never carry a credential: the options name environment variables, whose
    values are never logged.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from triggerd.plugin import FileRow, SourceContext, to_the_end
from triggerd.sources._bucketlist import (
    Found,
    Lister,
    Obj,
    Reconcile,
    Sink,
    matcher_for,
    next_mark,
    watched,
)
from triggerd.sources._bucketoptions import BucketOptions
from triggerd.sources._fstable import FileTable, MemoryFileTable
from triggerd.sources._fswatch import in_thread
from triggerd.sources._handoff import Closed, Handoff

__all__ = ["BucketOptions", "BucketSource"]

log = logging.getLogger("triggerd.sources.bucket")
BATCH = 1000
PARTS_AHEAD = 4  # parts of a listing reconciled and waiting to be emitted
MAX_BACKOFF = timedelta(minutes=5)


class BucketSource:
    Options = BucketOptions
    wants = ("files",)

    def __init__(self, name: str, options: BucketOptions, *,
                 files: FileTable | None = None, lister: Lister | None = None) -> None:
        """`files`: the daemon's object table; `lister` exists for tests."""
        self.name = name
        self.options = options
        self.files: FileTable = files if files is not None else MemoryFileTable()
        self.matcher = matcher_for(options)
        self._lister = lister
        self._health: tuple[bool, str | None] | None = None
        self._listings: set[asyncio.Future[None]] = set()
        self.stats: dict[str, Any] = {
            "url": options.url, "objects_tracked": 0, "waiting_to_settle": 0,
            "last_listing_at": None, "last_listing_seconds": None, "listings": 0,
            "listing_failures": 0, "last_event_at": None, "full_listings": 0,
            "partial_listings": 0, "last_listing_objects": 0,
        }

    async def run(self, ctx: SourceContext) -> None:
        loaded = await self.files.load(self.name)
        # matching every row (100,000: ~1 s) is kept off the loop, as the compare is
        rows = await in_thread(functools.partial(watched, self.options, self.matcher, loaded),
                               f"triggerd-bucket-{self.name}")
        del loaded
        waiting: dict[str, str] = {}
        failures = 0
        poll = self.options.poll
        mark: str | None = None  # `listing: new_keys`: list after this key (None: in full)
        while True:
            started = asyncio.get_running_loop().time()
            after = mark if self._partial_now() else None
            now = ctx.clock.now()
            # `rows` and `waiting` change only here, after the listing: the reconcile reads
            # them from the listing's thread while it runs
            reconcile = Reconcile(self.name, self.options, self.matcher, rows, waiting, now,
                                  partial=after is not None,
                                  keys=self.options.listing == "new_keys")
            saved: list[FileRow] = []
            gone: list[str] = []
            try:
                last = await self._list_and_emit(ctx, after, reconcile, saved, gone)
            except _ListingFailed as failed:
                for row in saved:  # stored with their events: not new at the next listing
                    rows[row.path] = row
                failures += 1
                self.stats["listing_failures"] += 1
                wait = min(poll * 2 ** failures, max(poll * 10, MAX_BACKOFF))
                self._set_health(ctx, False, f"{_what_to_fix(self.options, failed.error)}; "
                                             f"next listing in {wait.total_seconds():.0f}s")
                self._report(ctx)
                await asyncio.sleep(wait.total_seconds())
                continue
            failures = 0
            self._set_health(ctx, True, None)
            for row in saved:
                rows[row.path] = row
            for path in gone:
                rows.pop(path, None)
            waiting = last.waiting
            if reconcile.keys is not None:
                mark = next_mark(self.options, reconcile.keys, waiting, after)
            self.stats["full_listings" if after is None else "partial_listings"] += 1
            self.stats["last_listing_objects"] = reconcile.listed
            del reconcile
            self.stats.update(objects_tracked=len(rows), waiting_to_settle=len(waiting),
                              last_listing_at=now.isoformat(), listings=self.stats["listings"] + 1,
                              last_listing_seconds=round(
                                  asyncio.get_running_loop().time() - started, 3))
            self._report(ctx)
            await asyncio.sleep(poll.total_seconds())

    async def _list_and_emit(self, ctx: SourceContext, after: str | None, reconcile: Reconcile,
                             saved: list[FileRow], gone: list[str]) -> Found:
        """One listing, emitted as it arrives: the listing and the reconcile of each part run
        in the listing's thread, and each part's events are emitted here (with their rows)
        while the next parts are listed; at most `PARTS_AHEAD` wait. Fills `saved` and
        `gone` with what was stored; returns the last part (gone rows, objects waiting to
        settle). A listing that fails raises `_ListingFailed` after the parts before it
        were emitted; a failure to store raises as it is."""
        handoff: Handoff[_Part] = Handoff(asyncio.get_running_loop(), PARTS_AHEAD)
        listing = asyncio.ensure_future(in_thread(
            functools.partial(self._list_into, after, reconcile, handoff),
            f"triggerd-bucket-{self.name}"))
        self._listings.add(listing)  # (it ends by a put, or by Closed once we have gone)
        listing.add_done_callback(self._listings.discard)
        try:
            while True:
                part = await handoff.get()
                if part.error is not None:
                    raise _ListingFailed(part.error)
                await self._emit(ctx, part.found)
                saved.extend(part.found.saves)
                gone.extend(part.found.gone)
                if part.last:
                    return part.found
        finally:
            handoff.close()

    def _list_into(self, after: str | None, reconcile: Reconcile,
                   handoff: Handoff[_Part]) -> None:
        """In the listing's thread: list, reconcile each part as it comes, hand it over."""
        async def feed(objs: list[Obj]) -> None:
            found = reconcile.feed(objs)
            if found.news or found.saves:
                await handoff.put(_Part(found))

        try:
            try:
                self._stream(after, feed)
            except Closed:
                raise
            except Exception as exc:
                handoff.put_blocking(_Part(Found(self.name, self.options, reconcile.now),
                                           error=exc))
                return
            handoff.put_blocking(_Part(reconcile.finish(), last=True))
        except Closed:
            return  # the source stopped reading (cancelled, or storing failed)

    def _partial_now(self) -> bool:
        """Whether this listing lists only new keys (`listing: new_keys`, and not the
        `full_listing_every`-th listing)."""
        if self.options.listing != "new_keys":
            return False
        listings: int = self.stats["listings"]
        return listings % self.options.full_listing_every != 0

    def _stream(self, after: str | None, sink: Sink) -> int:
        """One listing (blocking), a part at a time to `sink`; `after`: only the keys after
        it. The filesystem is opened at the first (it may read credential files, and a
        credential variable that is not set is reported like any listing failure)."""
        if self._lister is None:
            self._lister = Lister(self.options)
        return self._lister.stream(after, sink)

    async def _emit(self, ctx: SourceContext, found: Found) -> None:
        """Emit the events in batches, each with the rows of its objects in the same store
        transaction; then record the rows no event covers."""
        row_of = {r.path: r for r in found.saves}
        gone_set = set(found.gone)
        covered: set[str] = set()
        for batch in found.batches(BATCH):
            paths = [e.subject for e in batch]
            covered.update(paths)
            rows = [row_of[p] for p in paths if p in row_of]
            dropped = [p for p in paths if p in gone_set]
            joined = self.files.with_events(self.name, rows, dropped)
            await ctx.emit(batch, also=joined)
            self.stats["last_event_at"] = ctx.clock.now().isoformat()
            if joined is None:
                await to_the_end(self._record(rows, dropped), None)
        quiet = [r for r in found.saves if r.path not in covered]
        gone_quiet = [p for p in found.gone if p not in covered]
        if quiet or gone_quiet:
            await to_the_end(self._record(quiet, gone_quiet), None)

    async def _record(self, saves: list[FileRow], gone: list[str]) -> None:
        if saves:
            await self.files.save(self.name, saves)
        if gone:
            await self.files.delete(self.name, gone)

    def _report(self, ctx: SourceContext) -> None:
        report = getattr(ctx, "report", None)
        if report is not None:
            report(dict(self.stats))

    def _set_health(self, ctx: SourceContext, healthy: bool, error: str | None) -> None:
        if self._health != (healthy, error):
            if error is not None:
                log.warning("bucket source %s: %s", self.name, error,
                            extra={"source": self.name})
            elif self._health is not None:
                log.info("bucket source %s: listing again", self.name,
                         extra={"source": self.name})
            self._health = (healthy, error)
            ctx.set_health(healthy, error)


@dataclass(frozen=True)
class _Part:
    """What the listing's thread hands over: a part of the reconcile, the last one, or the
    listing's failure."""

    found: Found
    last: bool = False
    error: Exception | None = None


class _ListingFailed(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _what_to_fix(options: BucketOptions, exc: BaseException) -> str:
    """The listing's failure as what to fix (never a credential: only names appear)."""
    where = options.url
    text = f"{exc} {exc.__cause__ or ''}"  # s3fs raises OSError from the ClientError
    if isinstance(exc, FileNotFoundError):
        return (f"{where}: the bucket does not exist (or is not visible with these "
                "credentials): check `url`")
    if isinstance(exc, PermissionError) or any(word in text for word in (
            "AccessDenied", "Forbidden", "AuthorizationFailure", "AuthenticationFailed")):
        return (f"{where}: access denied: check the credentials and that they may list the "
                "bucket (s3:ListBucket, storage.objects.list, or a reader role)")
    if (isinstance(exc, OSError) and exc.errno == errno.EBUSY) or any(word in text for word in (
            "SlowDown", "reduce your request rate", "503", "Throttl", "TooManyRequests")):
        # (s3fs turns S3's SlowDown into EBUSY "Please reduce your request rate.")
        return f"{where}: the store is throttling listings (SlowDown): raise `poll`"
    return f"{where}: listing failed: {type(exc).__name__}: {str(exc)[:300]}"
