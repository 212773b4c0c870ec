"""The bucket source's listing (`Lister`) against a real S3-protocol server (moto's
ThreadedMotoServer, the Amazon S3 REST API: ListObjectsV2 with a delimiter, pagination):
the sub-prefixes it lists at once add up to exactly the objects a plain recursive listing
finds, at any depth, and nothing of a sibling prefix that shares the name's first letters."""

from __future__ import annotations

from typing import Any

import pytest
from polling import until
from s3_server import KEY, S3, SECRET

from triggerd.sources._bucketlist import FAN_OUT, Lister
from triggerd.sources._bucketoptions import BucketOptions

WAIT = 20.0  # seconds a source's listings may take to show (polls of 1-2 s)


def lister(s3: S3, url: str) -> Lister:
    options = BucketOptions.model_validate({
        "type": "bucket", "url": url, "poll": "1m", "endpoint_url": s3.endpoint,
        "credentials": {"key": "K", "secret": "S"}})
    return Lister(options, {"K": KEY, "S": SECRET})


def _fill(s3: S3, bucket: str, keys: list[str]) -> None:
    for key in keys:
        s3.put(bucket, key, key.encode())


LAYOUTS: dict[str, list[str]] = {
    # date partitions: more sub-prefixes than FAN_OUT at the first level
    "partitions": [f"landing/dt=2026-11-{d:02d}/part-{p}.parquet"
                   for d in range(1, FAN_OUT + 4) for p in range(3)] + ["landing/_SUCCESS"],
    # year/month/day: one sub-prefix per level until the days
    "nested": [f"landing/2026/{m:02d}/{d:02d}/x.parquet" for m in (11, 12)
               for d in range(1, 6)] + ["landing/2026/readme.txt", "landing/top.parquet"],
    # no sub-prefixes at all
    "flat": [f"landing/{i}.parquet" for i in range(25)],
    # sub-prefixes whose names begin other sub-prefixes' names (p1/ and p10/): each listed once
    "prefix-names": [f"landing/p{i}/x.parquet" for i in (1, 10, 11, 100, 2, 20, 3, 30, 4)]
    + ["landing/p1.parquet", "landing/p10x.parquet"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_fanned_out_listing_is_the_whole_prefix(s3_server: Any, layout: str) -> None:
    bucket = s3_server.bucket(f"listing-{layout}")
    keys = LAYOUTS[layout]
    _fill(s3_server, bucket, [*keys, "landing2/not-mine.parquet", "other/x.parquet"])
    listed = lister(s3_server, f"s3://{bucket}/landing/")
    objs = listed.list()
    assert sorted(o.key for o in objs) == sorted(keys)
    assert all(o.etag and o.size > 0 and o.mtime_ns > 0 for o in objs)
    assert listed.requests >= 1
    whole = lister(s3_server, f"s3://{bucket}/")
    assert len(whole.list()) == len(keys) + 2


def test_an_empty_prefix_lists_nothing_and_a_missing_bucket_says_so(s3_server: Any) -> None:
    bucket = s3_server.bucket("listing-empty")
    assert lister(s3_server, f"s3://{bucket}/landing/").list() == []
    with pytest.raises(FileNotFoundError):
        lister(s3_server, "s3://no-such-bucket-here/landing/").list()


def test_new_keys_listings_ask_only_after_the_greatest_key_seen(s3_server: Any) -> None:
    """`listing: new_keys`: a listing after a mark returns only later keys (ListObjectsV2's
    StartAfter, page by page), and the mark stays below a key still waiting to settle."""
    from datetime import UTC, datetime

    from triggerd.sources._bucketlist import compare, matcher_for, next_mark

    bucket = s3_server.bucket("listing-new-keys")
    old = [f"landing/dt=2026-11-{d:02d}/part-0.parquet" for d in (1, 2, 3)]
    _fill(s3_server, bucket, old)
    listed = lister(s3_server, f"s3://{bucket}/landing/")
    full = listed.list()
    opts = listed.options
    mark = next_mark(opts, (o.key for o in full), {}, None)
    assert mark == old[-1]
    new = [f"landing/dt=2026-11-04/part-{p}.parquet" for p in range(3)]
    _fill(s3_server, bucket, [*new, old[0]])  # three new keys, and an old one rewritten
    later = listed.list(after=mark)
    assert sorted(o.key for o in later) == new
    now = datetime.now(UTC)
    rows = {r.path: r for r in compare("b", opts.model_copy(update={"settle": False}),
                                       matcher_for(opts), full, {}, {}, now).saves}
    settling = compare("b", opts, matcher_for(opts), later, rows, {}, now, partial=True)
    assert settling.gone == [] and len(settling.waiting) == 3  # the old rows are not gone
    later_keys = [o.key for o in later]
    assert next_mark(opts, later_keys, settling.waiting, mark) == mark  # all three wait
    assert next_mark(opts, later_keys, {k: v for k, v in settling.waiting.items()
                                   if not k.endswith("part-0.parquet")}, mark) == new[0]
    # a full listing is what finds the rewritten old key
    assert {o.key for o in listed.list()} >= {old[0], *new}


def test_new_keys_is_refused_where_the_store_has_no_start_after() -> None:
    with pytest.raises(ValueError, match="`listing: new_keys` needs an s3:// URL"):
        BucketOptions.model_validate({"type": "bucket", "url": "gs://b/p/", "poll": "1m",
                                      "listing": "new_keys"})


class _Ctx:
    """What the bucket source needs of a SourceContext: emits and health recorded, figures
    kept; being told unhealthy fails the test unless `unhealthy_allowed`."""

    def __init__(self) -> None:
        from triggerd.clock import SystemClock

        self.clock = SystemClock()
        self.events: list[Any] = []
        self.details: dict[str, Any] = {}
        self.health: list[tuple[bool, str | None]] = []  # each set_health, in order
        self.unhealthy_allowed = False

    async def emit(self, events: Any, also: Any = None) -> None:
        self.events.extend(events)

    def set_health(self, healthy: bool, error: str | None = None) -> None:
        assert healthy or self.unhealthy_allowed, error
        self.health.append((healthy, error))

    def report(self, details: dict[str, Any]) -> None:
        self.details = details


def _behind_proxy(s3: S3, bucket: str, retries: int) -> tuple[Any, Any, _Ctx]:
    """A proxy in front of the S3 server (`FaultyS3`), a bucket source (poll 1 s, no settling)
    listing through it, and its context, which accepts being told unhealthy."""
    from s3_server import FaultyS3

    from triggerd.sources.bucket import BucketSource

    proxy = FaultyS3(s3.endpoint)
    options = BucketOptions.model_validate({
        "type": "bucket", "url": f"s3://{bucket}/landing/", "poll": "1s", "settle": False,
        "endpoint_url": proxy.endpoint, "options": {"retries": retries},
        "credentials": {"key": "K", "secret": "S"}})
    source = BucketSource("landing", options, lister=Lister(options, {"K": KEY, "S": SECRET}))
    ctx = _Ctx()
    ctx.unhealthy_allowed = True
    return proxy, source, ctx


async def test_the_source_lists_new_keys_between_full_listings(s3_server: Any) -> None:
    """The bucket source with `listing: new_keys` and `full_listing_every: 3`: new keys are
    found by the partial listings, a rewritten old key only by the next full one."""
    import asyncio

    from triggerd.sources.bucket import BucketSource

    bucket = s3_server.bucket("source-new-keys")
    _fill(s3_server, bucket, ["landing/dt=01/a.parquet"])
    options = BucketOptions.model_validate({
        "type": "bucket", "url": f"s3://{bucket}/landing/", "poll": "2s", "settle": False,
        "listing": "new_keys", "full_listing_every": 3, "endpoint_url": s3_server.endpoint,
        "credentials": {"key": "K", "secret": "S"}})
    source = BucketSource("landing", options, lister=Lister(options, {"K": KEY, "S": SECRET}))
    ctx = _Ctx()
    task = asyncio.create_task(source.run(ctx))  # type: ignore[arg-type]

    def keys() -> list[str]:
        return sorted(e.payload["relpath"] for e in ctx.events)

    try:
        await until(lambda: keys() == ["dt=01/a.parquet"], timeout=WAIT)
        s3_server.put(bucket, "landing/dt=02/b.parquet", b"b")
        s3_server.put(bucket, "landing/dt=01/a.parquet", b"a, rewritten")
        # (the first listing was full; the next two, 2 s apart, are partial)
        await until(lambda: "dt=02/b.parquet" in keys(), timeout=WAIT)
        assert keys() == ["dt=01/a.parquet", "dt=02/b.parquet"]  # a partial one found b only
        await until(lambda: len(keys()) == 3, timeout=WAIT)  # the third listing: a full one
        assert ctx.details["partial_listings"] == 2
        assert [e.kind for e in ctx.events if e.payload["relpath"] == "dt=01/a.parquet"] == [
            "created", "modified"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_throttling_and_a_denied_listing_say_what_to_fix_back_off_and_lose_nothing(
        s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 server behind a proxy that answers with S3's own error responses (503 SlowDown,
    403 AccessDenied): the source turns unhealthy saying what to fix, waits longer after each
    failed listing (poll x 2, x 4, ...), and finds what landed meanwhile once it is let in."""
    import asyncio

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries: s3fs's are enough
    bucket = s3_server.bucket("source-faults")
    _fill(s3_server, bucket, ["landing/a.parquet"])
    proxy, source, ctx = _behind_proxy(s3_server, bucket, retries=2)
    health = ctx.health
    task = asyncio.create_task(source.run(ctx))

    def errors() -> list[str]:
        return [e for ok, e in health if not ok and e]

    try:
        await until(lambda: [e.payload["relpath"] for e in ctx.events] == ["a.parquet"],
                    timeout=WAIT)
        proxy.fault = "SlowDown"
        await until(lambda: len(errors()) >= 1, timeout=WAIT)
        assert errors()[0] == (f"s3://{bucket}/landing/: the store is throttling listings "
                               "(SlowDown): raise `poll`; next listing in 2s")
        proxy.fault = "AccessDenied"
        await until(lambda: any("access denied" in e for e in errors()), timeout=WAIT)
        said = next(e for e in errors() if "access denied" in e)
        assert said.startswith(f"s3://{bucket}/landing/: access denied: check the credentials")
        assert said.endswith("; next listing in 4s")  # backing off: poll x 2, x 4, ...
        assert SECRET not in " ".join(errors())
        s3_server.put(bucket, "landing/b.parquet", b"landed while refused")
        proxy.fault = None
        await until(lambda: health[-1] == (True, None)
                    and len(ctx.events) == 2, timeout=30)
        assert ctx.events[-1].payload["relpath"] == "b.parquet"
        assert ctx.details["listing_failures"] >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        proxy.close()


async def test_a_listing_is_emitted_as_it_arrives_and_one_failing_halfway_loses_nothing(
        s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing's events are emitted part by part while it is still listing (a page or a
    sub-prefix at a time: the first listing of a large prefix is never held whole). Here one
    sub-prefix's requests are held at the proxy: every other sub-prefix's objects are emitted
    while that request waits; then it fails (S3's 503 SlowDown). What was emitted stays
    emitted with its rows, the source says what to fix, and the next listing emits only the
    rest: every object exactly one event."""
    import asyncio

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    bucket = s3_server.bucket("source-halfway")
    days = range(1, FAN_OUT + 3)  # more sub-prefixes than are listed at once
    everything = [f"landing/dt={d:02d}/part-{p}.parquet" for d in days for p in range(2)]
    _fill(s3_server, bucket, everything)
    proxy, source, ctx = _behind_proxy(s3_server, bucket, retries=1)
    proxy.fault, proxy.only, proxy.hold = "SlowDown", "prefix=landing/dt=05/", True
    health = ctx.health
    task = asyncio.create_task(source.run(ctx))

    def emitted() -> list[str]:
        return sorted(e.payload["key"] for e in ctx.events)

    others = sorted(k for k in everything if not k.startswith("landing/dt=05/"))
    try:
        await until(lambda: emitted() == others, timeout=WAIT)  # while dt=05's listing is held
        assert health == [] and ctx.details == {}  # the first listing has not ended
        proxy.release.set()
        await until(lambda: bool(health), timeout=WAIT)
        assert health[0][0] is False and "throttling listings (SlowDown)" in str(health[0][1])
        assert emitted() == others
        proxy.fault = None
        await until(lambda: health[-1] == (True, None) and len(ctx.events) == len(everything),
                    timeout=WAIT)
        assert emitted() == sorted(everything)  # each object once: none emitted again
        assert ctx.details["objects_tracked"] == len(everything)
        assert ctx.details["listing_failures"] == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        proxy.close()
