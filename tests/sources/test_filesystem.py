"""The filesystem source against real files in tmp_path: settle, fingerprints, renames,
patterns, the start-up scan against a stored file table, polling, overflow, late roots.

Tests wait on conditions (with timeouts), never on sleeps. "Exactly one event" is checked by
writing a sentinel file afterwards and waiting for *its* event: events are emitted in order of
settling, so anything the first file would still cause has been emitted by then.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from triggerd.clock import SystemClock
from triggerd.errors import StoreError
from triggerd.interfaces import Source, StoreWork
from triggerd.model import Event
from triggerd.plugin import RejectLog
from triggerd.registry import source_class
from triggerd.sources._fstable import FileTable
from triggerd.sources.filesystem import FilesystemOptions, FilesystemSource
from triggerd.store import Store
from triggerd.store.files import StoreFileTable, load_files

NAME = "landing"


class FakeContext:
    """A SourceContext recording emits and health, letting tests wait on conditions."""

    def __init__(self, name: str = NAME) -> None:
        self.name = name
        self.clock = SystemClock()
        self.batches: list[list[Event]] = []
        self.health: list[tuple[bool, str | None]] = []
        self.store: Store | None = None  # where `emit` runs `also` (a StoreFileTable's store)
        self._changed = asyncio.Event()

    @property
    def events(self) -> list[Event]:
        return [e for batch in self.batches for e in batch]

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.payload["name"] == name]

    async def emit(self, events: Sequence[Event], also: StoreWork | None = None) -> None:
        if also is not None:  # the file rows, in the events' transaction (as the daemon does)
            assert self.store is not None, "a store-backed file table needs ctx.store"
            with self.store.write() as c:
                also(c)
        self.batches.append(list(events))
        self._changed.set()

    async def load_checkpoint(self) -> dict[str, Any] | None:
        return None

    async def save_checkpoint(self, data: dict[str, Any]) -> None:
        raise AssertionError("the filesystem source keeps no checkpoint")

    def set_health(self, healthy: bool, error: str | None = None) -> None:
        self.health.append((healthy, error))
        self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def options(root: Path, **overrides: Any) -> FilesystemOptions:
    data: dict[str, Any] = {"type": "filesystem", "paths": [str(root)], "settle": "0s",
                            "rescan": "10m"}
    data.update(overrides)
    return FilesystemOptions.model_validate(data)


@asynccontextmanager
async def running(root: Path, *, files: FileTable | None = None, ctx: FakeContext | None = None,
                  rejects: RejectLog | None = None,
                  **overrides: Any) -> AsyncIterator[tuple[FilesystemSource, FakeContext]]:
    source = FilesystemSource(NAME, options(root, **overrides), files=files, rejects=rejects,
                              root_check=0.05)
    ctx = ctx or FakeContext()
    if isinstance(files, StoreFileTable):
        ctx.store = files.store
    task = asyncio.create_task(source.run(ctx))
    try:
        started = asyncio.create_task(source.started.wait())
        await asyncio.wait([task, started], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if task.done():
            task.result()
        assert source.started.is_set(), "the source did not start within 5s"
        yield source, ctx
    finally:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=6)
        assert task in done, "the source did not stop within 6s of cancellation"
        if not task.cancelled():
            task.result()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


async def sentinel(ctx: FakeContext, root: Path, name: str = "zz-sentinel.dat") -> None:
    write(root / name, name.encode())
    await ctx.wait_until(lambda: bool(ctx.named(name)))


# --- live events ------------------------------------------------------------------------------


async def test_a_created_file_gives_one_event_with_payload_and_fingerprint(
        tmp_path: Path) -> None:
    (tmp_path / "churn").mkdir()
    async with running(tmp_path) as (_, ctx):
        assert ctx.health[-1] == (True, None)
        target = tmp_path / "churn" / "a.parquet"
        write(target, b"hello")
        await ctx.wait_until(lambda: bool(ctx.events))
        await sentinel(ctx, tmp_path)
    [event] = ctx.named("a.parquet")
    digest = hashlib.sha256(b"hello").hexdigest()
    st = target.stat()
    assert (event.source, event.kind, event.subject) == (NAME, "created", str(target))
    assert event.fingerprint == f"churn/a.parquet:{digest}"
    assert event.payload["path"] == str(target)
    assert event.payload["relpath"] == "churn/a.parquet"
    assert event.payload["dir"] == "churn"
    assert event.payload["name"] == "a.parquet"
    assert event.payload["size"] == 5
    assert event.payload["sha256"] == digest
    assert event.payload["root"] == str(tmp_path)
    assert event.payload["mtime"].startswith(time.strftime("%Y-", time.gmtime(st.st_mtime)))
    assert ctx.named("zz-sentinel.dat")[0].payload["dir"] == ""


async def test_stat_fingerprint(tmp_path: Path) -> None:
    async with running(tmp_path, fingerprint="stat") as (_, ctx):
        write(tmp_path / "a.csv", b"abc")
        await ctx.wait_until(lambda: bool(ctx.named("a.csv")))
    st = (tmp_path / "a.csv").stat()
    [event] = ctx.named("a.csv")
    assert event.fingerprint == f"a.csv:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    assert "sha256" not in event.payload


async def test_rename_into_place_gives_one_moved_event_and_none_for_the_temp_name(
        tmp_path: Path) -> None:
    async with running(tmp_path) as (_, ctx):
        write(tmp_path / "a.parquet.tmp", b"payload")
        os.rename(tmp_path / "a.parquet.tmp", tmp_path / "a.parquet")
        await ctx.wait_until(lambda: bool(ctx.named("a.parquet")))
        await sentinel(ctx, tmp_path)
    [event] = ctx.named("a.parquet")
    assert event.kind == "moved"
    assert event.payload["size"] == 7
    assert not ctx.named("a.parquet.tmp")
    assert {e.payload["name"] for e in ctx.events} == {"a.parquet", "zz-sentinel.dat"}


async def test_deleted_events_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "a.csv"
    async with running(tmp_path, events=["created", "deleted"]) as (_, ctx):
        write(target, b"x")
        await ctx.wait_until(lambda: bool(ctx.named("a.csv")))
        target.unlink()
        await ctx.wait_until(lambda: len(ctx.named("a.csv")) == 2)
    created, deleted = ctx.named("a.csv")
    assert deleted.kind == "deleted"
    assert deleted.fingerprint != created.fingerprint
    assert deleted.payload["size"] == 1


# --- patterns and ignores ---------------------------------------------------------------------


def test_patterns_and_ignores_are_relative_to_the_root(tmp_path: Path) -> None:
    source = FilesystemSource(NAME, options(tmp_path, patterns=["**/*.parquet"],
                                            ignore=["skip/**"]))
    assert source.wanted("a.parquet")
    assert source.wanted("x/y/a.parquet")
    assert not source.wanted("a.csv")
    assert not source.wanted("skip/a.parquet")
    for partial in ("a.parquet.tmp", "a.parquet.part", ".a.parquet", "a.parquet~",
                    ".a.parquet.swp", ".goutputstream-XYZ", ".git/x.parquet", "d/.h/a.parquet"):
        assert not source.wanted(partial), partial


async def test_patterns_and_ignores_in_scan_and_live(tmp_path: Path) -> None:
    for rel in ("a.parquet", "b.csv", "skip/c.parquet", ".hidden.parquet", "d.parquet~",
                "x/e.parquet", ".cache/f.parquet"):
        write(tmp_path / rel, rel.encode())
    async with running(tmp_path, patterns=["**/*.parquet"], ignore=["skip/**"]) as (_, ctx):
        write(tmp_path / "live.csv", b"no")
        staging = tmp_path.parent / f"{tmp_path.name}-staging"
        write(staging / "g.parquet", b"no")
        os.rename(staging, tmp_path / ".cache" / "deep")  # a dir moved in below an ignored one
        write(tmp_path / "new" / "live.parquet", b"yes")  # a new directory: scanned
        await ctx.wait_until(lambda: bool(ctx.named("live.parquet")))
        await sentinel(ctx, tmp_path, "zz-sentinel.parquet")
    assert sorted(e.payload["relpath"] for e in ctx.events) == [
        "a.parquet", "new/live.parquet", "x/e.parquet", "zz-sentinel.parquet"]


def test_options_validation(tmp_path: Path) -> None:
    opts = options(tmp_path)
    assert opts.patterns == ["**/*"]
    assert opts.events == ["created", "modified", "moved"]
    assert opts.fingerprint == "sha256"
    assert opts.poll is False
    assert options(tmp_path, poll="10s").poll is not False
    for bad in ({"paths": []}, {"events": ["touched"]}, {"patterns": ["[z-a]"]},
                {"fingerprint": "md5"}, {"poll": True}, {"surprise": 1}, {"rescan": "10ms"}):
        with pytest.raises(ValidationError):
            options(tmp_path, **bad)
    assert source_class("filesystem") is FilesystemSource
    assert isinstance(FilesystemSource(NAME, opts), Source)


# --- never lost -------------------------------------------------------------------------------


async def test_files_landing_while_stopped_are_found_by_the_start_scan(
        tmp_path: Path, store: Store) -> None:
    root = tmp_path / "landing"
    write(root / "a.csv", b"first")
    async with running(root, files=StoreFileTable(store)) as (_, ctx):
        await ctx.wait_until(lambda: bool(ctx.named("a.csv")))
        await sentinel(ctx, root, "zz-first.dat")  # its emit follows a.csv's rows being saved
    assert [e.kind for e in ctx.events] == ["created", "created"]

    # while the daemon is down: a new file, a changed one, an unchanged one
    write(root / "sub" / "b.csv", b"second")
    write(root / "a.csv", b"first, changed")
    write(root / "c.csv", b"third")
    os.utime(root / "c.csv", ns=(1_000_000_000, 1_000_000_000))  # an old mtime: still found

    async with running(root, files=StoreFileTable(store)) as (_, ctx2):
        await ctx2.wait_until(lambda: len(ctx2.events) >= 3)
        await sentinel(ctx2, root)
    got = sorted((e.payload["relpath"], e.kind) for e in ctx2.events)
    assert got == [("a.csv", "modified"), ("c.csv", "created"), ("sub/b.csv", "created"),
                   ("zz-sentinel.dat", "created")]

    async with running(root, files=StoreFileTable(store)) as (_, ctx3):
        await sentinel(ctx3, root, "zz-second.dat")
    assert [e.payload["name"] for e in ctx3.events] == ["zz-second.dat"]
    rows = load_files(store, NAME)
    assert sorted(rows) == sorted(str(root / n) for n in (
        "a.csv", "c.csv", "sub/b.csv", "zz-first.dat", "zz-sentinel.dat", "zz-second.dat"))
    assert rows[str(root / "a.csv")].size == len(b"first, changed")


async def test_a_full_bridge_queue_reconciles_and_loses_nothing(tmp_path: Path) -> None:
    source = FilesystemSource(NAME, options(tmp_path), queue_limit=5, root_check=0.05)
    ctx = FakeContext()
    task = asyncio.create_task(source.run(ctx))
    try:
        await ctx.wait_until(lambda: bool(ctx.health))
        bridge = source.bridge
        assert bridge is not None
        for i in range(50):
            write(tmp_path / f"f{i:03}.csv", b"%d" % i)
        # stall the loop (as a busy daemon would) until the observer overflowed the bridge
        deadline = time.monotonic() + 5
        while bridge.stats.dropped == 0 and time.monotonic() < deadline:
            time.sleep(0.001)  # deliberately blocking the loop
        assert bridge.stats.dropped > 0
        await ctx.wait_until(lambda: len({e.subject for e in ctx.events}) == 50)
        await sentinel(ctx, tmp_path)
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=6)
    names = [e.payload["name"] for e in ctx.events]
    assert len(names) == 51 and len(set(names)) == 51
    assert source.stats["overflows"] >= 1


# --- polling, roots ---------------------------------------------------------------------------


async def test_a_missing_root_is_waited_for(tmp_path: Path) -> None:
    root = tmp_path / "later"
    async with running(root) as (_, ctx):
        assert ctx.health[-1] == (False, f"root {root} does not exist yet")
        root.mkdir()
        await ctx.wait_until(lambda: ctx.health[-1] == (True, None))
        write(root / "a.csv", b"x")
        await ctx.wait_until(lambda: bool(ctx.named("a.csv")))


async def test_symlinks_leading_outside_the_root_are_ignored(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write(outside / "secret.csv", b"secret")
    write(root / "real.csv", b"real")
    (root / "link.csv").symlink_to(outside / "secret.csv")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "inside.csv").symlink_to(root / "real.csv")
    async with running(root) as (_, ctx):
        await ctx.wait_until(lambda: len(ctx.events) >= 2)
        await sentinel(ctx, root)
    assert sorted(e.payload["name"] for e in ctx.events) == [
        "inside.csv", "real.csv", "zz-sentinel.dat"]


async def test_a_root_that_disappears_and_comes_back(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    async with running(root) as (_, ctx):
        root.rmdir()
        await ctx.wait_until(lambda: ctx.health[-1][0] is False)
        root.mkdir()
        write(root / "a.csv", b"back")
        await ctx.wait_until(lambda: bool(ctx.named("a.csv")))
        assert ctx.health[-1] == (True, None)
        await sentinel(ctx, root)
    assert len(ctx.named("a.csv")) == 1


async def test_hostile_names_are_delivered_intact(tmp_path: Path) -> None:
    names = ["new\nline.csv", "$(rm -rf ~); `x` 'q' \"d\" |&;<>.csv", "spaced name *?[.csv"]
    async with running(tmp_path) as (_, ctx):
        for name in names:
            write(tmp_path / name, name.encode())
        await ctx.wait_until(lambda: len(ctx.events) == 3)
    assert sorted(e.payload["name"] for e in ctx.events) == sorted(names)
    assert all(e.subject == str(tmp_path / e.payload["name"]) for e in ctx.events)


async def test_a_directory_moved_in_is_scanned(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    for i in range(3):
        write(outside / "batch" / "deep" / f"{i}.csv", b"%d" % i)
    async with running(root) as (_, ctx):
        os.rename(outside / "batch", root / "batch")
        await ctx.wait_until(lambda: len(ctx.events) == 3)
        await sentinel(ctx, root)
    assert sorted(e.payload["relpath"] for e in ctx.events) == [
        "batch/deep/0.csv", "batch/deep/1.csv", "batch/deep/2.csv", "zz-sentinel.dat"]


async def test_the_periodic_rescan_finds_what_no_notification_reported(tmp_path: Path) -> None:
    # created before the watch, written while watched but not closed: IN_MODIFY only, which
    # is not watched (creations, close-writes and moves are)
    with open(tmp_path / "a.csv", "wb") as f:
        async with running(tmp_path, rescan="1s", scan_on_start=False) as (_, ctx):
            f.write(b"silent")
            f.flush()
            await ctx.wait_until(lambda: bool(ctx.named("a.csv")), timeout=5)
            assert ctx.named("a.csv")[0].payload["size"] == 6


async def test_an_inotify_overflow_reconciles_at_once(tmp_path: Path) -> None:
    with open(tmp_path / "a.csv", "wb") as f:  # written while watched, never closed: no
        async with running(tmp_path, scan_on_start=False) as (source, ctx):  # notification
            f.write(b"lost")
            f.flush()
            # what watchdog does on IN_Q_OVERFLOW (it has no handler callback for it)
            logging.getLogger("watchdog.observers.inotify_c").warning(
                "Inotify queue overflowed; filesystem events were lost")
            await ctx.wait_until(lambda: bool(ctx.named("a.csv")))
    assert source.stats["overflows"] == 1


async def test_names_that_are_not_utf8_are_delivered_intact_and_remembered(
        tmp_path: Path, store: Store) -> None:
    """A name with a byte that is not UTF-8 becomes an event like any other: readable in the
    subject (`\\xff`), exact in `payload.path_b64`, JSON-safe; a file literally named with a
    backslash is a different file; after a restart the stored row is found, not re-emitted."""
    root = tmp_path / "root"  # not tmp_path itself: the SQLite store lives there
    root.mkdir()
    raw = os.path.join(os.fsencode(root), b"bad-\xff.csv")
    with open(raw, "wb") as f:
        f.write(b"same")
    write(root / "bad-\\xff.csv", b"same")  # a real backslash in the name
    async with running(root, files=StoreFileTable(store)) as (_, ctx):
        await ctx.wait_until(lambda: len(ctx.events) == 2)
    by_b64 = {e.payload.get("path_b64"): e for e in ctx.events}
    bad = by_b64[base64.b64encode(raw).decode()]
    assert bad.payload["name"] == "bad-\\xff.csv" and bad.subject.endswith("/bad-\\xff.csv")
    assert base64.b64decode(bad.payload["path_b64"]) == raw
    literal = by_b64[None]
    assert literal.payload["name"] == "bad-\\xff.csv"
    assert bad.fingerprint != literal.fingerprint
    json.dumps([e.to_dict() for e in ctx.events])  # storable as it is
    async with running(root, files=StoreFileTable(store)) as (_, ctx2):
        await sentinel(ctx2, root)
    assert [e.payload["name"] for e in ctx2.events] == ["zz-sentinel.dat"]


class FailingOnce(FakeContext):
    """The store is unreachable for the first emit: the source fails (the daemon restarts it)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def emit(self, events: Sequence[Event], also: StoreWork | None = None) -> None:
        if self.failures:
            self.failures -= 1
            self._changed.set()
            raise StoreError("connection refused (simulated)")
        await super().emit(events, also)


async def test_a_failed_emit_loses_nothing_when_the_source_is_run_again(tmp_path: Path) -> None:
    """A file whose emit failed is looked at again by the next `run` (the supervisor's
    restart), even without a start-up scan to find it."""
    source = FilesystemSource(NAME, options(tmp_path, scan_on_start=False), root_check=0.05)
    ctx = FailingOnce()
    first = asyncio.create_task(source.run(ctx))
    await source.started.wait()
    write(tmp_path / "a.csv", b"a")
    with pytest.raises(StoreError):
        async with asyncio.timeout(5):
            await first
    assert ctx.events == []
    source.started.clear()
    second = asyncio.create_task(source.run(ctx))
    try:
        await ctx.wait_until(lambda: bool(ctx.named("a.csv")))
        await source.started.wait()
        write(tmp_path / "b.csv", b"b")  # and the restarted source watches again
        await ctx.wait_until(lambda: bool(ctx.named("b.csv")))
    finally:
        second.cancel()
        await asyncio.wait([second], timeout=6)
    assert [e.payload["name"] for e in ctx.events] == ["a.csv", "b.csv"]


async def test_a_watchdog_observer_that_hangs_on_stop_does_not_hang_the_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """watchdog's `Observer.stop()` joins its emitter threads without a timeout. One that hangs
    (a stuck emitter) must not block the event loop or the daemon's stop: the source waits for
    it a bounded time, says so, and ends."""
    import triggerd.sources.filesystem as fs

    stuck = threading.Event()

    class HangingObserver(fs.Observer):
        def stop(self) -> None:
            stuck.wait(30)  # until the test ends
            super().stop()

    monkeypatch.setattr(fs, "Observer", HangingObserver)
    monkeypatch.setattr(fs, "STOP_TIMEOUT", 0.3)
    try:
        with caplog.at_level(logging.WARNING, logger="triggerd.sources.filesystem"):
            # leaving `running` cancels the source and fails unless it ends within 6 s (the
            # stop used to block the loop until watchdog's stop returned: 30 s here)
            async with running(tmp_path):
                pass
        assert "watchdog's observer did not stop within" in caplog.text
    finally:
        stuck.set()
