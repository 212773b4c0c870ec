"""The filesystem source and what is not a regular file, and publishing by rename.

A FIFO, socket or device where a landing file is expected must never block a thread (a
blocking open of a FIFO waits for a writer forever), never become an event, and be counted
(`not_regular`) and recorded as a reject, so a user sees why "the file" did nothing. A file or
directory moved into a root from a staging directory outside it (the usual atomic publish) is
an event at once, not at the next `rescan`.

Like test_filesystem.py (whose fake context and helpers are reused), tests wait on conditions
with timeouts, never on sleeps. What could hang (a look at a FIFO) runs in a thread joined
with a timeout, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_filesystem import NAME, running, sentinel, write
from test_filesystem_hard import eventually

import triggerd.sources.filesystem as fs
from triggerd.sources import _fsscan
from triggerd.sources._fsscan import Look, Root
from triggerd.store import Store
from triggerd.store.rejects import Reject, StoreRejectLog, count_rejects, list_rejects

OLD_NS = 1_000_000_000_000_000_000  # 2001: an mtime far older than any `settle`
PROMPT = 2.5  # seconds: well under the default `settle` (5 s), far under `rescan: 1h`


class MemoryRejects:
    """A `RejectLog` that keeps what the source recorded."""

    def __init__(self) -> None:
        self.rejects: list[Reject] = []

    async def add(self, rejects: Sequence[Reject]) -> None:
        self.rejects.extend(rejects)


def aged(path: Path) -> None:
    """Give `path` an old mtime: a file that was complete long before it was published."""
    os.utime(path, ns=(OLD_NS, OLD_NS))


# --- special files through the running source ----------------------------------------------


async def test_a_fifo_made_in_the_root_is_skipped_counted_and_recorded_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rejects = MemoryRejects()
    fifo = tmp_path / "x.parquet"
    with caplog.at_level(logging.WARNING, logger="triggerd.sources.filesystem"):
        async with running(tmp_path, rejects=rejects, fingerprint="sha256") as (source, ctx):
            os.mkfifo(fifo)  # no close-write ever: only its creation can be noticed
            await eventually(lambda: source.stats["not_regular"] == 1)
            write(tmp_path / "a.parquet", b"after the fifo")  # the source is not blocked
            await ctx.wait_until(lambda: bool(ctx.named("a.parquet")))
            with open(os.open(fifo, os.O_RDWR | os.O_NONBLOCK), "wb") as f:  # written to:
                f.write(b"poke")  # a close-write on the FIFO, looked at again
            await sentinel(ctx, tmp_path)
            assert source.stats["not_regular"] == 1  # counted once, not at every look
    assert [e.payload["name"] for e in ctx.events] == ["a.parquet", "zz-sentinel.dat"]
    [reject] = rejects.rejects
    assert (reject.source, reject.ref, reject.kind) == (NAME, str(fifo), "not_regular")
    assert "FIFO" in reject.error
    assert caplog.text.count("not a regular file") == 1


async def test_special_files_found_by_the_scans_are_counted_once_and_stored(
        tmp_path: Path, store: Store) -> None:
    """A FIFO and a socket present at start (the start-up scan) and found again by every
    rescan: counted once each, in the store's rejects, where `triggerd status` reads them."""
    root = tmp_path / "root"  # not tmp_path itself: the SQLite store may live there
    root.mkdir()
    os.mkfifo(root / "a.csv")
    os.mkfifo(root / "ignored.csv.tmp")  # an ignored name: not even looked at
    with socket.socket(socket.AF_UNIX) as sock:
        with contextlib.chdir(root):
            sock.bind("b.csv")  # relative: AF_UNIX paths are short
        async with running(root, rejects=StoreRejectLog(store), rescan="1s") as (source, ctx):
            await eventually(lambda: source.stats["not_regular"] == 2)
            first = source.stats["last_scan_at"]
            await eventually(lambda: source.stats["last_scan_at"] not in (None, first))
            await sentinel(ctx, root)
            assert source.stats["not_regular"] == 2
    assert [e.payload["name"] for e in ctx.events] == ["zz-sentinel.dat"]
    assert count_rejects(store) == {NAME: {"not_regular": 2}}
    assert sorted(r.ref for r in list_rejects(store, NAME)) == [str(root / "a.csv"),
                                                                str(root / "b.csv")]


async def test_a_known_file_replaced_by_a_fifo_is_gone_and_counted(tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    async with running(tmp_path, events=["created", "deleted"]) as (source, ctx):
        write(target, b"regular")
        await ctx.wait_until(lambda: bool(ctx.named("x.csv")))
        staged = tmp_path / "x.csv.tmp"
        os.mkfifo(staged)
        os.rename(staged, target)  # a rename puts a FIFO where the file was
        await ctx.wait_until(lambda: len(ctx.named("x.csv")) == 2)
        assert source.stats["not_regular"] == 1
    assert [e.kind for e in ctx.named("x.csv")] == ["created", "deleted"]


async def test_a_special_file_is_reported_again_once_it_was_regular_in_between(
        tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    rejects = MemoryRejects()
    async with running(tmp_path, rejects=rejects) as (source, ctx):
        os.mkfifo(target)
        await eventually(lambda: source.stats["not_regular"] == 1)
        target.unlink()
        write(target, b"regular now")
        await ctx.wait_until(lambda: bool(ctx.named("x.csv")))
        staged = tmp_path / "x.csv.tmp"
        os.mkfifo(staged)
        os.rename(staged, target)  # a FIFO again at the same name: a new fact, reported
        await eventually(lambda: source.stats["not_regular"] == 2)
    assert [r.ref for r in rejects.rejects] == [str(target)] * 2


async def test_a_special_file_whose_reject_was_not_stored_is_reported_again(
        tmp_path: Path) -> None:
    """The store refused the reject (an outage): the source fails and restarts, and the FIFO
    is recorded then, not forgotten as already reported."""

    class FlakyRejects(MemoryRejects):
        failures = 1

        async def add(self, rejects: Sequence[Reject]) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("store unreachable (simulated)")
            await super().add(rejects)

    rejects = FlakyRejects()
    os.mkfifo(tmp_path / "x.csv")
    source = fs.FilesystemSource(NAME, fs.FilesystemOptions(
        type="filesystem", paths=[str(tmp_path)], patterns=["**"]), rejects=rejects,
        root_check=0.05)
    from test_filesystem import FakeContext

    with pytest.raises(OSError, match="simulated"):
        await asyncio.wait_for(source.run(FakeContext()), 10)
    ctx = FakeContext()
    task = asyncio.create_task(source.run(ctx))  # the supervisor's restart
    try:
        await eventually(lambda: len(rejects.rejects) == 1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert rejects.rejects[0].ref == str(tmp_path / "x.csv")


# --- the rename race, at the look ----------------------------------------------------------


def look_in_thread(fn: Callable[[], Look], release: Callable[[], None]) -> Look:
    """Run a blocking look in a thread; fail (after unblocking it with `release`) when it
    does not return within 5 s: a look that waits on a FIFO hangs the source."""
    out: list[Look | BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # re-raised below
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        release()
        thread.join(5)
        pytest.fail("the look blocked (it opened a FIFO waiting for a writer)")
    [result] = out
    if isinstance(result, BaseException):
        raise result
    return result


def release_fifo(path: Path) -> Callable[[], None]:
    """Unblock a reader stuck in a blocking open of the FIFO at `path` (opening the other
    end lets its open return)."""
    def release() -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    return release


@contextlib.contextmanager
def swapped_after_lstat(monkeypatch: pytest.MonkeyPatch, path: Path,
                        swap: Callable[[], None]) -> Iterator[None]:
    """`os.lstat(path)` sees the regular file there; right after it, `swap` replaces it: the
    window between a look's lstat and its open, made certain."""
    real_lstat = os.lstat

    def lstat(p: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        st = real_lstat(p, *args, **kwargs)
        if os.fspath(p) == str(path) and stat.S_ISREG(st.st_mode):
            swap()
        return st

    monkeypatch.setattr(_fsscan.os, "lstat", lstat)
    try:
        yield
    finally:
        monkeypatch.setattr(_fsscan.os, "lstat", real_lstat)


def first_look(root: Path, path: Path) -> Callable[[], Look]:
    """A first look by content (fingerprint sha256: the path that opens the file)."""
    r = Root(str(root), real=os.path.realpath(root), present=True)

    def denied(p: str, exc: OSError) -> None:
        raise AssertionError(f"no file here is unreadable: {p}: {exc}")

    return lambda: _fsscan.look(str(path), r, None, None, time.time_ns(), 0.0, True, denied)


def test_a_fifo_swapped_in_between_lstat_and_open_is_special_without_blocking(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.parquet"
    write(path, b"regular")

    def to_fifo() -> None:
        staged = tmp_path / "fifo.tmp"
        os.mkfifo(staged)
        os.rename(staged, path)

    with swapped_after_lstat(monkeypatch, path, to_fifo):
        seen = look_in_thread(first_look(tmp_path, path), release_fifo(path))
    assert seen.verdict == "special"
    assert stat.S_ISFIFO(seen.mode)


def test_a_socket_swapped_in_is_special(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    path = tmp_path / "x.parquet"
    write(path, b"regular")
    sock = socket.socket(socket.AF_UNIX)

    def to_socket() -> None:
        path.unlink()
        with contextlib.chdir(tmp_path):
            sock.bind(path.name)  # opening it: ENXIO

    try:
        with swapped_after_lstat(monkeypatch, path, to_socket):
            seen = look_in_thread(first_look(tmp_path, path), lambda: None)
    finally:
        sock.close()
    assert seen.verdict == "special"
    assert stat.S_ISSOCK(seen.mode)


def test_a_symlink_swapped_in_is_not_followed(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlink put in place (here to a FIFO outside the root) is not opened through: the
    name is looked at again, by the rules for symlinks."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    os.mkfifo(outside / "trap")
    path = root / "x.parquet"
    write(path, b"regular")

    def to_symlink() -> None:
        staged = root / "link.tmp"
        staged.symlink_to(outside / "trap")
        os.rename(staged, path)

    with swapped_after_lstat(monkeypatch, path, to_symlink):
        seen = look_in_thread(first_look(root, path), release_fifo(outside / "trap"))
    assert seen.verdict == "changing"
    again = look_in_thread(first_look(root, path), release_fifo(outside / "trap"))
    assert again.verdict == "skip"  # a symlink leading outside the root


def test_a_device_where_the_look_saw_a_file_is_special(tmp_path: Path) -> None:
    """What is opened must be what the lstat described: /dev/null opened where a regular file
    was seen (a device node cannot be made here without root) is special, not hashed."""
    write(tmp_path / "x.parquet", b"regular")
    st = os.lstat(tmp_path / "x.parquet")
    seen = look_in_thread(lambda: _fsscan._hash(os.devnull, st, lambda: False), lambda: None)
    assert seen.verdict == "special"
    assert stat.S_ISCHR(seen.mode)


def test_a_descriptor_is_opened_without_blocking_or_following(tmp_path: Path) -> None:
    flags = _fsscan.OPEN_FLAGS
    assert flags & os.O_NONBLOCK and flags & os.O_NOFOLLOW and flags & os.O_NOCTTY
    (tmp_path / "link").symlink_to(tmp_path / "missing")
    with pytest.raises(OSError) as caught:
        os.open(tmp_path / "link", flags)
    assert caught.value.errno == errno.ELOOP


# --- a stop never waits for a filesystem thread ----------------------------------------------


def test_a_stop_never_waits_for_a_stuck_filesystem_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A look stuck in the kernel (a hung mount, a huge file) must not hold up the daemon's
    exit: `asyncio.run` joins the threads of the loop's default executor without a timeout,
    so a SIGTERM would wait for the filesystem. The whole run, stop included, must end."""
    entered, release = threading.Event(), threading.Event()
    real_look = fs.look

    def stuck_look(*args: Any, **kwargs: Any) -> Look:
        entered.set()
        release.wait(30)
        return real_look(*args, **kwargs)

    monkeypatch.setattr(fs, "look", stuck_look)

    async def scenario() -> None:
        async with running(tmp_path):
            write(tmp_path / "a.csv", b"x")
            async with asyncio.timeout(5):
                while not entered.is_set():
                    await asyncio.sleep(0.01)

    outcome: list[BaseException | None] = []

    def main() -> None:
        try:
            asyncio.run(scenario())
            outcome.append(None)
        except BaseException as exc:  # re-raised below
            outcome.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    thread.join(10)
    release.set()
    assert outcome, "the run did not end within 10 s while a look was stuck"
    if outcome[0] is not None:
        raise outcome[0]


# --- publishing by rename ----------------------------------------------------------------------


async def test_a_file_moved_in_from_a_staging_directory_is_an_event_at_once(
        tmp_path: Path) -> None:
    """Written in a staging directory outside the root, then renamed in: one `moved` event,
    well before the default `settle` would pass, with `rescan: 1h` (not what found it)."""
    root, staging = tmp_path / "root", tmp_path / "staging"
    root.mkdir()
    write(staging / "x.parquet", b"published")
    aged(staging / "x.parquet")
    async with running(root, settle="5s", rescan="1h") as (_, ctx):
        t0 = time.monotonic()
        os.rename(staging / "x.parquet", root / "x.parquet")
        await ctx.wait_until(lambda: bool(ctx.named("x.parquet")), timeout=PROMPT)
        assert time.monotonic() - t0 < PROMPT
    [event] = ctx.named("x.parquet")
    assert (event.kind, event.subject) == ("moved", str(root / "x.parquet"))
    assert event.payload["size"] == len(b"published")


async def test_a_fresh_file_moved_in_settles_like_one_written_in_place(tmp_path: Path) -> None:
    """Just written, then moved in: an event once `settle` passed, as for a file written in
    place, not at the next rescan."""
    root, staging = tmp_path / "root", tmp_path / "staging"
    root.mkdir()
    async with running(root, settle="300ms", rescan="1h") as (_, ctx):
        write(staging / "moved.parquet", b"new")
        os.rename(staging / "moved.parquet", root / "moved.parquet")
        write(root / "inplace.parquet", b"new")
        await ctx.wait_until(lambda: len(ctx.events) == 2, timeout=PROMPT)
    assert sorted((e.payload["name"], e.kind) for e in ctx.events) == [
        ("inplace.parquet", "created"), ("moved.parquet", "moved")]


async def test_a_directory_moved_in_from_outside_gives_its_files_at_once(
        tmp_path: Path) -> None:
    root, staging = tmp_path / "root", tmp_path / "staging"
    root.mkdir()
    for rel in ("a.parquet", "deep/b.parquet", "c.parquet.tmp"):
        write(staging / "batch" / rel, rel.encode())
        aged(staging / "batch" / rel)
    async with running(root, settle="5s", rescan="1h") as (_, ctx):
        os.rename(staging / "batch", root / "batch")
        await ctx.wait_until(lambda: len(ctx.events) == 2, timeout=PROMPT)
    assert sorted(e.payload["relpath"] for e in ctx.events) == ["batch/a.parquet",
                                                                "batch/deep/b.parquet"]


async def test_a_rename_from_an_ignored_name_inside_the_root_is_prompt(tmp_path: Path) -> None:
    async with running(tmp_path, settle="5s", rescan="1h") as (_, ctx):
        write(tmp_path / "x.parquet.tmp", b"partial, then complete")
        aged(tmp_path / "x.parquet.tmp")
        os.rename(tmp_path / "x.parquet.tmp", tmp_path / "x.parquet")
        await ctx.wait_until(lambda: bool(ctx.named("x.parquet")), timeout=PROMPT)
    assert [(e.payload["name"], e.kind) for e in ctx.events] == [("x.parquet", "moved")]


async def test_a_fifo_moved_in_is_special_not_an_event(tmp_path: Path) -> None:
    root, staging = tmp_path / "root", tmp_path / "staging"
    root.mkdir()
    staging.mkdir()
    os.mkfifo(staging / "x.parquet")
    async with running(root, rescan="1h") as (source, ctx):
        os.rename(staging / "x.parquet", root / "x.parquet")
        await eventually(lambda: source.stats["not_regular"] == 1, timeout=PROMPT)
        await sentinel(ctx, root)
    assert [e.payload["name"] for e in ctx.events] == ["zz-sentinel.dat"]
