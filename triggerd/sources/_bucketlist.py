"""Listing an object-store prefix (fsspec), and what a listing means against the object table.

`Lister` opens the store's fsspec filesystem once (s3fs, gcsfs or adlfs; credentials from the
environment variables the options name, else the library's own chain) and lists the prefix
with the listings cache off, so every listing asks the store. It blocks: the source runs it in
a thread of its own.

`Reconcile` (`compare` for a whole listing at once) is the reconcile: a listing, fed a part at
a time, against the stored rows (`FileRow`, path = the object's URL, `inode` 0, `mtime_ns` its
last-modified time) and the previous listing (for settling). It returns the events and the
row changes, as data; nothing here touches the store or a clock.

`notice_event` is the same for one object a notification tells of (`_bucketnotify`), given
the object's row: the event the listing would make of it, with the same fingerprint, so push and
scan deduplicate against each other in the store.

Fingerprints (the dedup key, the same whichever way an object is found):
`relpath:tag`, the object's content tag (`_bucketnotify.content_tag`: S3's ETag, GCS's md5Hash,
Azure's ETag; the version id where a store gives no tag), or `relpath:size:mtime_ns` with
`fingerprint: stat`; a deleted object: `relpath:size:mtime_ns:deleted` of its row. So the same
bytes uploaded again to the same key make a duplicate the store counts.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from triggerd.plugin import Event, FileRow
from triggerd.sources._bucketnotify import Notice, content_tag
from triggerd.sources._bucketoptions import SCHEMES, BucketOptions
from triggerd.sources._fsoptions import DEFAULT_IGNORES
from triggerd.sources._fsscan import Matcher

__all__ = ["Found", "Lister", "Obj", "Reconcile", "compare", "next_mark", "notice_event",
           "watched"]


@dataclass(frozen=True, slots=True)
class Obj:
    """One object of a listing."""

    key: str  # the full key (prefix included)
    size: int
    mtime_ns: int
    etag: str | None
    version_id: str | None


Sink = Callable[[list[Obj]], Awaitable[None]]  # takes a listing's objects, a part at a time
FAN_OUT = 8  # sub-prefixes listed at once
FAN_DEPTH = 3  # levels descended to find FAN_OUT sub-prefixes


class Lister:
    """Lists the objects under the options' prefix (blocking; see the module docstring).

    A listing is paged (1,000 keys a request on S3), so one long listing is a chain of round
    trips. Where the prefix has sub-prefixes ("folders", e.g. `dt=2026-11-01/`), up to
    `FAN_OUT` of them are listed at once: the sub-prefixes are found by delimiter listings,
    descending up to `FAN_DEPTH` levels until there are `FAN_OUT` of them (objects met on
    the way are part of the listing). `stream` hands the objects to a sink as they arrive: on
    S3 a page at a time (ListObjectsV2, read here page by page), on GCS and Azure a
    sub-prefix at a time (the library's `find`); `list` collects them. On S3 the responses'
    timestamps are parsed by `datetime.fromisoformat` (`_s3_session`)."""

    def __init__(self, options: BucketOptions, env: Mapping[str, str] | None = None) -> None:
        import fsspec  # an extra: imported when a bucket source starts

        self.options = options
        store = SCHEMES[options.scheme]
        storage = _storage_options(options, env or os.environ)
        if store.protocol == "s3" and "session" not in storage:
            storage["session"] = _s3_session(storage.pop("profile", None))
        if store.protocol == "abfs":  # the Azure SDK logs every request at INFO
            logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(
                logging.WARNING)
        self.fs = fsspec.filesystem(store.protocol, skip_instance_cache=True,
                                    use_listings_cache=False, **storage)
        self.root = f"{options.bucket}/{options.prefix}".rstrip("/")
        self.protocol = store.protocol
        self.requests = 0  # listing calls of the last listing (delimiter lists and finds)

    async def _fanned(self, sink: Sink) -> None:
        level = [self.root]
        for _ in range(FAN_DEPTH):
            if len(level) >= FAN_OUT:
                break
            self.requests += len(level)
            found = await asyncio.gather(*(self._ls(d) for d in level))
            level = []
            for infos in found:
                level.extend(i["name"] for i in infos if i.get("type") == "directory")
                await sink(self._objs(infos))
            if not level:
                return
        self.requests += len(level)
        room = asyncio.Semaphore(FAN_OUT)

        async def under(prefix: str) -> None:
            async with room:
                if self.protocol == "s3":  # page by page
                    await self._s3_pages(prefix.partition("/")[2] + "/", None, sink)
                    return
                self.requests += 1
                found = await self.fs._find(prefix, detail=True, withdirs=False)
                await sink(self._objs(found.values()))

        await asyncio.gather(*(under(d) for d in level))

    async def _ls(self, prefix: str) -> list[dict[str, Any]]:
        """One level below `prefix`. A prefix without objects is "not found" to the library:
        at the root that is an empty listing (or, from `find`, a missing bucket's error);
        below it, a sub-prefix emptied since the level above was listed."""
        try:
            found: list[dict[str, Any]] = await self.fs._ls(prefix, detail=True)
        except FileNotFoundError:
            if prefix != self.root:
                return []
            return list((await self.fs._find(prefix, detail=True, withdirs=False)).values())
        return found

    def _objs(self, infos: Iterable[Mapping[str, Any]]) -> list[Obj]:
        out = []
        cut = len(self.options.bucket) + 1
        for info in infos:
            if info.get("type", "file") != "file":
                continue
            out.append(Obj(info["name"][cut:], int(info.get("size") or 0), _mtime_ns(info),
                           content_tag(self.protocol, info),
                           info.get("VersionId") or info.get("version_id")))
        return out

    async def _s3_pages(self, prefix: str, after: str | None, sink: Sink) -> None:
        """The objects under `prefix` (a key prefix of the bucket; after `after`: StartAfter),
        by ListObjectsV2, each page of 1,000 handed to `sink` as `Obj`s before the next is
        asked for: the library's per-object dicts never outlive their page (s3fs's `find`
        keeps one per object of the whole sub-prefix until it returns)."""
        asked: dict[str, Any] = {"Bucket": self.options.bucket, "Prefix": prefix}
        if after is not None:
            asked["StartAfter"] = after
        while True:
            self.requests += 1
            page = await self.fs._call_s3("list_objects_v2", **asked)
            await sink([Obj(info["Key"], int(info.get("Size") or 0), _mtime_ns(info),
                            content_tag(self.protocol, info), info.get("VersionId"))
                        for info in page.get("Contents", ())])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            asked["ContinuationToken"] = token

    def stream(self, after: str | None, sink: Sink) -> int:
        """List the prefix (blocking), handing the objects to `sink` a page (or a sub-prefix)
        at a time, on the library's event loop; returns how many there were. With `after`,
        only the keys that sort after it (S3 only: `listing: new_keys`). A full listing that
        finds nothing checks that the bucket exists (adlfs lists a missing container as
        empty): FileNotFoundError if not, never an empty listing that would make every
        tracked object gone. `sink` may wait (that holds the listing back); what it raises
        ends the listing."""
        count = 0

        async def counted(objs: list[Obj]) -> None:
            nonlocal count
            count += len(objs)
            if objs:
                await sink(objs)

        self.requests = 0  # listing calls of this listing
        if getattr(self.fs, "async_impl", False):
            from fsspec.asyn import sync

            if after is not None:
                sync(self.fs.loop, self._s3_pages, self.options.prefix, after, counted)
                return count
            sync(self.fs.loop, self._fanned, counted)
        else:
            self.requests = 1
            asyncio.run(counted(self._objs(
                self.fs.find(self.root, detail=True, withdirs=False).values())))
        if not count and not self.fs.exists(self.options.bucket):
            raise FileNotFoundError(f"{self.options.bucket}: no such bucket or container")
        return count

    def list(self, after: str | None = None) -> list[Obj]:
        """The whole listing at once (`stream` collected)."""
        out: list[Obj] = []

        async def collect(objs: list[Obj]) -> None:
            out.extend(objs)

        self.stream(after, collect)
        return out


def _s3_session(profile: Any) -> Any:
    """An aiobotocore session whose response timestamps are parsed by `fromisoformat`:
    botocore's default (dateutil's parser, per object) was 60 % of the CPU of listing
    100,000 objects. Anything it cannot read goes to botocore's own parser."""
    from aiobotocore.session import AioSession
    from botocore.utils import parse_timestamp

    def timestamp(value: Any) -> datetime:
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except (AttributeError, ValueError):
            return parse_timestamp(value)  # type: ignore[no-any-return]
        return at if at.tzinfo is not None else at.replace(tzinfo=UTC)

    session = AioSession(profile=profile)
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=timestamp)
    return session


def _storage_options(options: BucketOptions, env: Mapping[str, str]) -> dict[str, Any]:
    """fsspec's options for the store: the explicit ones, the endpoint, and credentials read
    from the environment variables the options name (a missing one is an error naming it).

    With `endpoint_url` (an S3-compatible store, a GCS or Azure emulator): s3fs takes it as
    it is; gcsfs too (`_gcs_endpoint`), with anonymous requests unless a token is named; adlfs
    has no endpoint option of its own, so it gets a connection string (`_azure_connection`).
    """
    out: dict[str, Any] = dict(options.options)
    creds = options.credentials

    def value(var: str | None) -> str | None:
        if var is None:
            return None
        if var not in env:
            raise ValueError(f"credentials: the environment variable {var} is not set")
        return env[var]

    scheme = options.scheme
    if scheme == "s3":
        if options.endpoint_url:
            out["endpoint_url"] = options.endpoint_url
        if options.region:
            out.setdefault("client_kwargs", {})["region_name"] = options.region
        for name, var in (("key", creds.key), ("secret", creds.secret),
                          ("token", creds.token)):
            if var is not None:
                out[name] = value(var)
    elif scheme in ("gs", "gcs"):
        if creds.token is not None:
            out["token"] = value(creds.token)
        if options.endpoint_url:
            _gcs_endpoint(out, options.endpoint_url)
    else:  # az, abfs
        account, account_key = value(creds.key), value(creds.secret)
        if options.endpoint_url:
            out["connection_string"] = _azure_connection(options.endpoint_url, account,
                                                         account_key)
        else:
            if account is not None:
                out["account_name"] = account
            if account_key is not None:
                out["account_key"] = account_key
    return out


def _gcs_endpoint(out: dict[str, Any], url: str) -> None:
    """gcsfs's options for a GCS JSON API server at `url` (an emulator, as a rule).

    - `token: anon` unless a token was given: gcsfs's default chain would try the gcloud
      credentials and Google's metadata server, which an emulator does not need (and which
      is not there).
    - `retry_timeout: 0`: gcsfs 2026.3 and later (`ExtendedGcsFileSystem`, on unless
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false) asks the endpoint for each bucket's storage
      layout over gRPC (the Storage Control API, which emulators do not serve) and retries
      for 60 s before listing the plain way: one attempt here, so a listing does not wait a
      minute. The failed attempt is logged by gcsfs ("Could not determine bucket type").
    """
    out["endpoint_url"] = url.rstrip("/")
    out.setdefault("token", "anon")
    out.setdefault("retry_timeout", 0)


def _azure_connection(url: str, account: str | None, key: str | None) -> str:
    """An Azure Storage connection string for the Blob endpoint `url` (adlfs builds its
    endpoint from the account name, always https://<account>.blob.core.windows.net or
    `account_host` over https; a connection string's BlobEndpoint is taken as it is):
    signed with the account key when one is given, else anonymous."""
    parts = [f"BlobEndpoint={url.rstrip('/')}"]
    if account is not None and key is not None:
        parts += [f"AccountName={account}", f"AccountKey={key}"]
    return ";".join(parts) + ";"


def _mtime_ns(info: Mapping[str, Any]) -> int:
    for name in ("LastModified", "last_modified", "updated", "mtime"):
        at = info.get(name)
        if isinstance(at, datetime):
            return int(at.astimezone(UTC).timestamp() * 1e9)
        if isinstance(at, str):
            try:
                parsed = datetime.fromisoformat(at.replace("Z", "+00:00"))
            except ValueError:
                continue
            return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
                       .timestamp() * 1e9)
        if isinstance(at, int | float) and not isinstance(at, bool):
            return int(at * 1e9)
    return 0


@dataclass
class Found:
    """What a listing means: events to emit, rows to save, rows gone, and objects waiting to
    settle (path -> fingerprint@mtime_ns, for the next listing).

    The events are built when asked for (`batches`, or all at once: `events`), not by the
    reconcile: a first listing of 100,000 new objects would otherwise hold 100,000 events
    (~1.3 KB each) at once."""

    source: str
    options: BucketOptions
    now: datetime
    news: list[tuple[str, Obj, str, str]] = field(default_factory=list)  # kind, obj, rel, fp
    saves: list[FileRow] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)

    def batches(self, size: int) -> Iterator[list[Event]]:
        for i in range(0, len(self.news), size):
            yield [_event(self.source, self.options, kind, obj, rel, fingerprint, self.now)
                   for kind, obj, rel, fingerprint in self.news[i:i + size]]

    @property
    def events(self) -> list[Event]:
        return [e for batch in self.batches(len(self.news) or 1) for e in batch]


def url_of(options: BucketOptions, key: str) -> str:
    return f"{options.scheme}://{options.bucket}/{key}"


class Reconcile:
    """The reconcile of one listing, fed a part of it at a time (see the module docstring):
    `feed` returns the events and rows of those objects, `finish` (after the last part) the
    rows gone and the objects waiting to settle. `rows` are of watched objects only
    (`watched`), and neither they nor `previous` may change until `finish`: an object whose
    row is unchanged is not matched again, which is most of a listing. `partial`: the listing
    holds only some keys (`listing: new_keys`), so a row it does not hold is not gone.
    `keys`: keep the listed keys for `next_mark` (their strings outlive the parts fed)."""

    def __init__(self, source: str, options: BucketOptions, matcher: Matcher,
                 rows: Mapping[str, FileRow], previous: Mapping[str, str], now: datetime,
                 *, partial: bool = False, keys: bool = False) -> None:
        self.source, self.options, self.matcher = source, options, matcher
        self.rows, self.previous, self.now, self.partial = rows, previous, now, partial
        self.seen: set[str] = set()  # the paths of rows listed (new objects have no row)
        self.waiting: dict[str, str] = {}
        self.keys: list[str] | None = [] if keys else None
        self.listed = 0

    def feed(self, listing: Iterable[Obj]) -> Found:
        out = Found(self.source, self.options, self.now)
        options, rows, seen = self.options, self.rows, self.seen
        prefix = options.prefix
        cut = len(prefix)
        for obj in listing:
            self.listed += 1
            if self.keys is not None:
                self.keys.append(obj.key)
            if not obj.key.startswith(prefix):
                continue  # a listing returns only the prefix's keys; never trust it blindly
            rel = obj.key[cut:]
            path = url_of(options, obj.key)
            row = rows.get(path)
            if row is None:
                if not rel or not self.matcher.wanted(rel):
                    continue
            else:
                seen.add(row.path)  # (the row's string: this one is freed)
            fingerprint = _fingerprint(options, rel, obj)
            if row is not None and (row.fingerprint, row.size, row.mtime_ns) == (
                    fingerprint, obj.size, obj.mtime_ns):
                continue
            # (the same fingerprint with a newer last-modified time: the same bytes uploaded
            # again; its event is a duplicate the store counts, as a rewritten file's is)
            look = f"{fingerprint}@{obj.mtime_ns}"
            if options.settle and self.previous.get(path) != look:
                self.waiting[path] = look  # emitted if the next listing sees it the same
                continue
            kind = "created" if row is None else "modified"
            out.saves.append(FileRow(path, 0, obj.size, obj.mtime_ns, fingerprint, self.now))
            if kind in options.events:
                out.news.append((kind, obj, rel, fingerprint))
        return out

    def finish(self) -> Found:
        out = Found(self.source, self.options, self.now, waiting=self.waiting)
        for path, row in () if self.partial else self.rows.items():
            if path in self.seen:
                continue
            out.gone.append(path)
            if "deleted" in self.options.events:
                out.news.append(_deletion(self.options, row))
        return out


def compare(source: str, options: BucketOptions, matcher: Matcher, listing: list[Obj],
            rows: Mapping[str, FileRow], previous: Mapping[str, str], now: datetime,
            *, partial: bool = False) -> Found:
    """The reconcile of a whole listing at once (`Reconcile` fed one part)."""
    reconcile = Reconcile(source, options, matcher, rows, previous, now, partial=partial)
    found = reconcile.feed(listing)
    rest = reconcile.finish()
    found.news += rest.news
    found.gone, found.waiting = rest.gone, rest.waiting
    return found


def next_mark(options: BucketOptions, keys: Iterable[str], waiting: Mapping[str, str],
              mark: str | None) -> str | None:
    """Where the next `listing: new_keys` listing starts after: the greatest of the `keys`
    listed (or
    the mark it started after), but below every key still waiting to settle, so that the
    next listing sees those again; None (the next listing is a full one) when there is no
    such key."""
    base = len(url_of(options, ""))
    low = min((path[base:] for path in waiting), default=None)
    below = [key for key in keys if low is None or key < low]
    if mark is not None and (low is None or mark < low):
        below.append(mark)
    return max(below, default=None)


def watched(options: BucketOptions, matcher: Matcher, rows: Mapping[str, FileRow]
            ) -> dict[str, FileRow]:
    """The rows of objects the options watch. Rows the table keeps from other options (a
    pattern or the URL changed since) are left out, not reported deleted: the objects are
    not gone, they are no longer watched."""
    base = url_of(options, options.prefix)
    cut = len(base)
    return {path: row for path, row in rows.items()
            if path.startswith(base) and len(path) > cut and matcher.wanted(path[cut:])}


def notice_event(source: str, options: BucketOptions, matcher: Matcher, notice: Notice,
                 row: FileRow | None, now: datetime) -> Event | None:
    """The event the listing would make of the object `notice` tells of (`row`: its row in
    the object table, if any), or None: another bucket, outside the prefix, not watched, a
    kind `events` leaves out, or the removal of an object the table never held (the listing
    never reported it either)."""
    prefix = options.prefix
    if notice.bucket != options.bucket or not notice.key.startswith(prefix):
        return None
    rel = notice.key[len(prefix):]
    if not rel or not matcher.wanted(rel):
        return None
    if notice.removed:
        if row is None or "deleted" not in options.events:
            return None
        kind, obj, rel, fingerprint = _deletion(options, row)
        return _event(source, options, kind, obj, rel, fingerprint, now)
    kind = "created" if row is None else "modified"
    if kind not in options.events:
        return None
    obj = Obj(notice.key, notice.size, notice.mtime_ns, notice.tag, notice.version_id)
    return _event(source, options, kind, obj, rel, _fingerprint(options, rel, obj), now)


def _deletion(options: BucketOptions, row: FileRow) -> tuple[str, Obj, str, str]:
    key = row.path.removeprefix(url_of(options, ""))
    rel = key[len(options.prefix):]
    return ("deleted", Obj(key, row.size, row.mtime_ns, None, None), rel,
            f"{rel}:{row.size}:{row.mtime_ns}:deleted")


def _fingerprint(options: BucketOptions, rel: str, obj: Obj) -> str:
    if options.fingerprint == "etag" and (obj.etag or obj.version_id):
        return f"{rel}:{obj.etag or obj.version_id}"
    return f"{rel}:{obj.size}:{obj.mtime_ns}"


def _event(source: str, options: BucketOptions, kind: str, obj: Obj, rel: str,
           fingerprint: str, now: datetime) -> Event:
    directory, _, name = rel.rpartition("/")
    payload: dict[str, Any] = {
        "url": url_of(options, obj.key), "bucket": options.bucket, "key": obj.key,
        "relpath": rel, "dir": directory, "name": name, "size": obj.size,
        "mtime": datetime.fromtimestamp(obj.mtime_ns / 1e9, UTC).isoformat()}
    if obj.etag is not None:
        payload["etag"] = obj.etag
    if obj.version_id is not None:
        payload["version_id"] = obj.version_id
    return Event(source=source, kind=kind, subject=payload["url"], fingerprint=fingerprint,
                 payload=payload, observed_at=now)


def matcher_for(options: BucketOptions) -> Matcher:
    return Matcher(options.patterns, options.ignore, DEFAULT_IGNORES)
