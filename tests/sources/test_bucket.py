"""The `bucket` source's options (what `triggerd check` says) and its reconcile (`compare`:
a listing against the object table), without a server; the e2e tests run it against one."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from triggerd.config.loader import load_config
from triggerd.errors import ConfigError
from triggerd.model import FileRow
from triggerd.sources._bucketlist import Obj, compare, matcher_for, watched
from triggerd.sources._bucketoptions import BucketOptions

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def options(**kw: Any) -> BucketOptions:
    return BucketOptions.model_validate({"type": "bucket", "url": "s3://data/landing/",
                                         "poll": "1m", **kw})


def _check(tmp_path: Path, source: str) -> str:
    path = tmp_path / "triggerd.yaml"
    path.write_text(f"state_dir: state\nsources:\n  b: {source}\n"
                    "backends: {t: {type: command, argv: [echo]}}\n"
                    "rules: {r: {on: [b], dispatch: {backend: t}}}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return "\n".join(exc.value.problems)


def test_check_names_the_extra_a_url_needs(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "s3fs" else real(name, *a))
    said = _check(tmp_path, "{type: bucket, url: 's3://data/in/', poll: 1m}")
    assert "s3:// needs the package s3fs: install triggerd with the s3 extra " \
           "(pip install 'triggerd[s3]')" in said
    assert "triggerd.yaml:3: sources.b.url" in said


@pytest.mark.parametrize(("source", "says"), [
    ("{type: bucket, url: 'ftp://x/y', poll: 1m}", "the URL must start with one of s3://"),
    ("{type: bucket, url: 's3:///y', poll: 1m}", "no bucket (or container) in the URL"),
    ("{type: bucket, url: 's3://x/y'}", "sources.b: missing required key 'poll'"),
    ("{type: bucket, url: 's3://x/y', poll: 100ms}", "`poll` must be at least 1s"),
    ("{type: bucket, url: 's3://x/y', poll: 1m, patterns: ['[']}", "sources.b.patterns"),
    # a URL as a filesystem path would watch a local directory named "s3:"
    ("{type: filesystem, paths: ['s3://x/y/'], poll: 1m, fingerprint: etag}",
     "triggerd.yaml:3: sources.b: paths: 's3://x/y/' is an object-store URL, not a directory: "
     "watch it with a source of `type: bucket` and `url: s3://x/y/`"),
])
def test_bad_options_are_named(tmp_path: Path, source: str, says: str) -> None:
    assert says in _check(tmp_path, source)


def test_the_prefix_is_a_folder() -> None:
    assert options(url="s3://data/landing").prefix == "landing/"
    assert options(url="s3://data").prefix == ""
    assert options().bucket == "data"


T = 1_700_000_000_000_000_000  # a last-modified time, ns


def _obj(key: str, etag: str = "e1", size: int = 10) -> Obj:
    return Obj(key, size, T, etag, None)


def test_a_new_object_waits_for_a_second_listing_that_sees_it_unchanged() -> None:
    opts = options()
    m = matcher_for(opts)
    first = compare("b", opts, m, [_obj("landing/a.parquet")], {}, {}, NOW)
    assert first.events == [] and list(first.waiting) == ["s3://data/landing/a.parquet"]
    assert first.waiting["s3://data/landing/a.parquet"] == "a.parquet:e1@1700000000000000000"
    changed = compare("b", opts, m, [_obj("landing/a.parquet", "e2")], {}, first.waiting, NOW)
    assert changed.events == []  # rewritten meanwhile: waits again
    second = compare("b", opts, m, [_obj("landing/a.parquet", "e2")], {}, changed.waiting, NOW)
    (event,) = second.events
    assert (event.kind, event.subject, event.fingerprint) == (
        "created", "s3://data/landing/a.parquet", "a.parquet:e2")
    assert event.payload == {
        "url": "s3://data/landing/a.parquet", "bucket": "data", "key": "landing/a.parquet",
        "relpath": "a.parquet", "dir": "", "name": "a.parquet", "size": 10,
        "mtime": "2023-11-14T22:13:20+00:00", "etag": "e2"}
    assert [r.fingerprint for r in second.saves] == ["a.parquet:e2"]


def test_known_changed_gone_and_ignored_objects() -> None:
    opts = options(settle=False, events=["created", "modified", "deleted"],
                   patterns=["**/*.parquet"])
    rows = {f"s3://data/landing/{k}": FileRow(f"s3://data/landing/{k}", 0, 10, T, f"{k}:{e}")
            for k, e in (("same.parquet", "e1"), ("edit.parquet", "e1"),
                         ("gone.parquet", "e1"))}
    listing = [_obj("landing/same.parquet"), _obj("landing/edit.parquet", "e9"),
               _obj("landing/notes.txt"), _obj("landing/.hidden.parquet"),
               _obj("elsewhere/x.parquet")]
    found = compare("b", opts, matcher_for(opts), listing, rows, {}, NOW)
    assert sorted((e.kind, e.payload["relpath"]) for e in found.events) == [
        ("deleted", "gone.parquet"), ("modified", "edit.parquet")]
    assert found.gone == ["s3://data/landing/gone.parquet"]
    deleted = next(e for e in found.events if e.kind == "deleted")
    assert deleted.fingerprint == f"gone.parquet:10:{T}:deleted"


def test_stat_fingerprints_and_version_ids() -> None:
    """The content tag is the fingerprint when there is one (a notification carries it too,
    so push and scan agree); the version id is in the payload, and the fingerprint only where
    a store gives no tag."""
    stat = options(settle=False, fingerprint="stat")
    (event,) = compare("b", stat, matcher_for(stat), [_obj("landing/a")], {}, {}, NOW).events
    assert event.fingerprint == "a:10:1700000000000000000"
    versioned = options(settle=False)
    obj = Obj("landing/a", 10, 0, "e1", "v7")
    (event,) = compare("b", versioned, matcher_for(versioned), [obj], {}, {}, NOW).events
    assert event.fingerprint == "a:e1" and event.payload["version_id"] == "v7"
    untagged = Obj("landing/a", 10, 0, None, "v7")
    (event,) = compare("b", versioned, matcher_for(versioned), [untagged], {}, {}, NOW).events
    assert event.fingerprint == "a:v7"


def test_the_same_bytes_uploaded_again_make_an_event_with_the_same_fingerprint() -> None:
    """A re-upload keeps the ETag and moves last-modified: its event repeats the fingerprint,
    so the store counts a duplicate (and the row takes the new time); an unchanged object
    makes none."""
    opts = options(settle=False)
    row = FileRow("s3://data/landing/a", 0, 10, 5, "a:e1")
    unchanged = compare("b", opts, matcher_for(opts), [Obj("landing/a", 10, 5, "e1", None)],
                        {row.path: row}, {}, NOW)
    assert unchanged.events == [] and unchanged.saves == []
    again = compare("b", opts, matcher_for(opts), [Obj("landing/a", 10, 9, "e1", None)],
                    {row.path: row}, {}, NOW)
    assert [(e.kind, e.fingerprint) for e in again.events] == [("modified", "a:e1")]
    assert [r.mtime_ns for r in again.saves] == [9]


def test_rows_the_options_no_longer_watch_are_not_reported_deleted() -> None:
    """After `patterns` (or the URL) changed, the table still holds rows of objects the
    source no longer watches: they are left out when it loads (`watched`), so the first
    listing neither reports them deleted nor matches the unchanged watched ones again."""
    opts = options(settle=False, patterns=["**/*.parquet"], events=["created", "deleted"])
    keep = FileRow("s3://data/landing/a.parquet", 0, 10, T, "a.parquet:e1")
    rows = {keep.path: keep,
            "s3://data/landing/a.csv": FileRow("s3://data/landing/a.csv", 0, 10, T, "a.csv:e1"),
            "s3://data/elsewhere/b.parquet": FileRow("s3://data/elsewhere/b.parquet", 0, 10, T,
                                                     "b.parquet:e1")}
    loaded = watched(opts, matcher_for(opts), rows)
    assert list(loaded) == [keep.path]
    found = compare("b", opts, matcher_for(opts),
                    [_obj("landing/a.parquet"), _obj("landing/a.csv")], loaded, {}, NOW)
    assert found.events == [] and found.gone == [] and found.saves == []
