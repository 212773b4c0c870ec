"""Listing an object-store prefix (fsspec), and what a listing means against the object table.

`Lister` opens the store's fsspec filesystem once (s3fs, gcsfs or adlfs; credentials from the
environment variables the options name, else the library's own chain) and lists the prefix
with the listings cache off, so every listing asks the store. It blocks: the source runs it in
a thread of its own.

`compare` is the reconcile: a listing against the stored rows (`FileRow`, path = the object's
URL, `inode` 0, `mtime_ns` its last-modified time) and the previous listing (for settling). It
returns the events and the row changes, as data; nothing here touches the store or a clock.

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

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from triggerd.plugin import Event, FileRow
from triggerd.sources._bucketnotify import Notice, content_tag
from triggerd.sources._bucketoptions import SCHEMES, BucketOptions
from triggerd.sources._fsoptions import DEFAULT_IGNORES
from triggerd.sources._fsscan import Matcher

__all__ = ["Found", "Lister", "Obj", "compare", "notice_event"]


@dataclass(frozen=True, slots=True)
class Obj:
    """One object of a listing."""

    key: str  # the full key (prefix included)
    size: int
    mtime_ns: int
    etag: str | None
    version_id: str | None


class Lister:
    """Lists the objects under the options' prefix (blocking; see the module docstring)."""

    def __init__(self, options: BucketOptions, env: Mapping[str, str] | None = None) -> None:
        import fsspec  # an extra: imported when a bucket source starts

        self.options = options
        store = SCHEMES[options.scheme]
        self.fs = fsspec.filesystem(store.protocol, skip_instance_cache=True,
                                    use_listings_cache=False,
                                    **_storage_options(options, env or os.environ))
        self.root = f"{options.bucket}/{options.prefix}"
        self.protocol = store.protocol

    def list(self) -> list[Obj]:
        found = self.fs.find(self.root, detail=True, withdirs=False)
        out = []
        cut = len(self.options.bucket) + 1
        for name, info in found.items():
            if info.get("type", "file") != "file":
                continue
            out.append(Obj(name[cut:], int(info.get("size") or 0), _mtime_ns(info),
                           content_tag(self.protocol, info),
                           info.get("VersionId") or info.get("version_id")))
        return out


def _storage_options(options: BucketOptions, env: Mapping[str, str]) -> dict[str, Any]:
    """fsspec's options for the store: the explicit ones, the endpoint, and credentials read
    from the environment variables the options name (a missing one is an error naming it)."""
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
    else:  # az, abfs
        if creds.key is not None:
            out["account_name"] = value(creds.key)
        if creds.secret is not None:
            out["account_key"] = value(creds.secret)
    return out


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
    settle (path -> fingerprint@mtime_ns, for the next listing)."""

    events: list[Event] = field(default_factory=list)
    saves: list[FileRow] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)


def url_of(options: BucketOptions, key: str) -> str:
    return f"{options.scheme}://{options.bucket}/{key}"


def compare(source: str, options: BucketOptions, matcher: Matcher, listing: list[Obj],
            rows: Mapping[str, FileRow], previous: Mapping[str, str], now: datetime) -> Found:
    """The reconcile of one listing (see the module docstring)."""
    out = Found()
    seen: set[str] = set()
    prefix = options.prefix
    for obj in listing:
        if not obj.key.startswith(prefix):
            continue  # a listing returns only the prefix's keys; never trust it blindly
        rel = obj.key[len(prefix):]
        if not rel or not matcher.wanted(rel):
            continue
        path = url_of(options, obj.key)
        seen.add(path)
        fingerprint = _fingerprint(options, rel, obj)
        row = rows.get(path)
        if row is not None and (row.fingerprint, row.size, row.mtime_ns) == (
                fingerprint, obj.size, obj.mtime_ns):
            continue
        # (the same fingerprint with a newer last-modified time: the same bytes uploaded
        # again; its event is a duplicate the store counts, as a rewritten file's is)
        look = f"{fingerprint}@{obj.mtime_ns}"
        if options.settle and previous.get(path) != look:
            out.waiting[path] = look  # emitted if the next listing sees it the same
            continue
        kind = "created" if row is None else "modified"
        out.saves.append(FileRow(path, 0, obj.size, obj.mtime_ns, fingerprint, now))
        if kind in options.events:
            out.events.append(_event(source, options, kind, obj, rel, fingerprint, now))
    for path, row in rows.items():
        if path in seen:
            continue
        out.gone.append(path)
        if "deleted" in options.events:
            out.events.append(_deleted(source, options, row, now))
    return out


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
        return _deleted(source, options, row, now)
    kind = "created" if row is None else "modified"
    if kind not in options.events:
        return None
    obj = Obj(notice.key, notice.size, notice.mtime_ns, notice.tag, notice.version_id)
    return _event(source, options, kind, obj, rel, _fingerprint(options, rel, obj), now)


def _deleted(source: str, options: BucketOptions, row: FileRow, now: datetime) -> Event:
    key = row.path.removeprefix(url_of(options, ""))
    rel = key[len(options.prefix):]
    obj = Obj(key, row.size, row.mtime_ns, None, None)
    return _event(source, options, "deleted", obj, rel,
                  f"{rel}:{row.size}:{row.mtime_ns}:deleted", now)


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
