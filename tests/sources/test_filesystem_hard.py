"""The filesystem source in the situations a user notices: the basic suite again in polling
mode, hostile file names, a root that disappears and comes back, symlinks leading outside the
root and symlink loops.

Like test_filesystem.py (whose fake context and helpers are reused), tests wait on conditions
with timeouts, never on sleeps; "exactly one event" is checked with a sentinel file written
afterwards (events are emitted in order of settling).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_filesystem import NAME, FakeContext, running, sentinel, write

MODES = [pytest.param(False, id="inotify"), pytest.param("500ms", id="poll-500ms")]


class Context(FakeContext):
    """The fake context of test_filesystem.py, also accepting the source's reported figures."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[dict[str, Any]] = []

    def report(self, details: dict[str, Any]) -> None:
        self.reports.append(dict(details))


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition nothing signals (the source's stats) until it holds, or fail."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def wait_timeout(poll: object) -> float:
    return 10.0 if poll else 5.0


# --- the basic suite, natively and polling -------------------------------------------------


@pytest.mark.parametrize("poll", MODES)
async def test_a_created_file_gives_one_event(tmp_path: Path, poll: object) -> None:
    async with running(tmp_path, ctx=Context(), poll=poll) as (_, ctx):
        write(tmp_path / "sub" / "a.parquet", b"hello")
        await ctx.wait_until(lambda: bool(ctx.named("a.parquet")), wait_timeout(poll))
        await sentinel(ctx, tmp_path)
    [event] = ctx.named("a.parquet")
    digest = hashlib.sha256(b"hello").hexdigest()
    assert (event.source, event.kind, event.subject) == (
        NAME, "created", str(tmp_path / "sub" / "a.parquet"))
    assert event.fingerprint == f"sub/a.parquet:{digest}"
    assert (event.payload["relpath"], event.payload["dir"], event.payload["size"]) == (
        "sub/a.parquet", "sub", 5)
    assert event.payload["sha256"] == digest


@pytest.mark.parametrize("poll", MODES)
async def test_a_chunked_writer_settles_to_one_event(tmp_path: Path, poll: object) -> None:
    target = tmp_path / "big.parquet"
    chunks = [bytes([65 + i]) * 1000 for i in range(5)]
    async with running(tmp_path, ctx=Context(), settle="300ms", poll=poll) as (_, ctx):
        for chunk in chunks:  # the scenario (not synchronisation): an append every 100 ms
            with open(target, "ab") as f:
                f.write(chunk)
            await asyncio.sleep(0.1)
        await ctx.wait_until(lambda: bool(ctx.named("big.parquet")), wait_timeout(poll))
        await sentinel(ctx, tmp_path)
    [event] = ctx.named("big.parquet")
    assert event.payload["size"] == 5000
    assert event.payload["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


@pytest.mark.parametrize("poll", MODES)
async def test_a_same_content_rewrite_has_the_same_fingerprint(tmp_path: Path,
                                                              poll: object) -> None:
    target = tmp_path / "a.csv"
    timeout = wait_timeout(poll)
    async with running(tmp_path, ctx=Context(), poll=poll) as (_, ctx):
        write(target, b"same")
        await ctx.wait_until(lambda: len(ctx.named("a.csv")) == 1, timeout)
        write(target, b"same")
        await ctx.wait_until(lambda: len(ctx.named("a.csv")) == 2, timeout)
        write(target, b"different")
        await ctx.wait_until(lambda: len(ctx.named("a.csv")) == 3, timeout)
        await sentinel(ctx, tmp_path)
    first, again, changed = ctx.named("a.csv")
    assert (first.kind, again.kind, changed.kind) == ("created", "modified", "modified")
    assert first.fingerprint == again.fingerprint
    assert changed.fingerprint != first.fingerprint


@pytest.mark.parametrize("poll", MODES)
async def test_rename_into_place_gives_one_event_for_the_final_name(tmp_path: Path,
                                                                   poll: object) -> None:
    async with running(tmp_path, ctx=Context(), poll=poll) as (_, ctx):
        write(tmp_path / "a.parquet.tmp", b"payload")
        os.rename(tmp_path / "a.parquet.tmp", tmp_path / "a.parquet")
        await ctx.wait_until(lambda: bool(ctx.named("a.parquet")), wait_timeout(poll))
        await sentinel(ctx, tmp_path)
    [event] = ctx.named("a.parquet")
    # A poll that never saw the temp name sees the final name appear: "created" then.
    assert event.kind == "moved" if poll is False else event.kind in ("moved", "created")
    assert event.payload["size"] == 7
    assert {e.payload["name"] for e in ctx.events} == {"a.parquet", "zz-sentinel.dat"}


# --- hostile names ----------------------------------------------------------------------------

HOSTILE = [
    "new\nline.csv",
    "  leading and trailing spaces  .csv",
    "$(rm -rf ~).csv",
    "a;b;c.csv",
    "quotes 'single' \"double\" `back`.csv",
    "caf\u00e9.csv",
    "\u65e5\u672c/\u65e5\u672c \u30c7\u30fc\u30bf.csv",
    "*?[glob]{x}.csv",
    "back\\slash\ttab.csv",
]


@pytest.mark.parametrize("poll", MODES)
async def test_hostile_names_arrive_intact_in_subject_and_payload(tmp_path: Path,
                                                                   poll: object) -> None:
    existing = "before start $(x); \u00e9\n.csv"  # found by the start-up scan
    write(tmp_path / existing, b"old")
    async with running(tmp_path, ctx=Context(), poll=poll) as (_, ctx):
        for rel in HOSTILE:
            write(tmp_path / rel, rel.encode())
        await ctx.wait_until(lambda: len(ctx.events) == len(HOSTILE) + 1, wait_timeout(poll))
        await sentinel(ctx, tmp_path)
    by_rel = {e.payload["relpath"]: e for e in ctx.events}
    assert sorted(by_rel) == sorted([*HOSTILE, existing, "zz-sentinel.dat"])
    assert len(ctx.events) == len(by_rel)
    for rel, event in by_rel.items():
        directory, _, name = rel.rpartition("/")
        assert event.subject == event.payload["path"] == str(tmp_path / rel)
        assert (event.payload["dir"], event.payload["name"]) == (directory, name)
        assert event.fingerprint.startswith(rel + ":")
        assert Path(event.subject).exists()  # the name was not altered on the way


# --- a root that disappears and comes back --------------------------------------------------


def _remove(root: Path, how: str) -> None:
    if how == "deleted":
        shutil.rmtree(root)
    else:
        root.rename(root.with_name("root.away"))


@pytest.mark.parametrize("how", ["deleted", "moved-away"])
@pytest.mark.parametrize("poll", MODES)
async def test_a_root_that_disappears_and_comes_back(tmp_path: Path, poll: object,
                                                     how: str) -> None:
    root = tmp_path / "root"
    write(root / "a.csv", b"first")
    timeout = wait_timeout(poll)
    async with running(root, ctx=Context(), poll=poll) as (source, ctx):
        await ctx.wait_until(lambda: bool(ctx.named("a.csv")), timeout)
        assert ctx.health == [(True, None)]
        _remove(root, how)
        await ctx.wait_until(lambda: ctx.health[-1][0] is False, timeout)
        assert ctx.health[-1] == (False, f"root {root} does not exist yet")
        assert source.stats["roots_watched"] == 0

        # back, with a file that landed meanwhile: found by the scan when the root reappears
        write(root / "sub" / "b.csv", b"while away")
        await ctx.wait_until(lambda: ctx.health[-1] == (True, None), timeout)
        await ctx.wait_until(lambda: bool(ctx.named("b.csv")), timeout)
        # and live notifications resume in the new root (and in its subdirectories)
        write(root / "c.csv", b"live")
        write(root / "sub" / "d.csv", b"live too")
        await ctx.wait_until(lambda: bool(ctx.named("c.csv")) and bool(ctx.named("d.csv")),
                             timeout)
        await sentinel(ctx, root)
    assert ctx.health == [(True, None), (False, f"root {root} does not exist yet"),
                          (True, None)]
    for name in ("a.csv", "b.csv", "c.csv", "d.csv"):
        assert len(ctx.named(name)) == 1, name
    assert source.stats["roots_watched"] == 1


# --- symlinks ------------------------------------------------------------------------------


def _plant_links(root: Path, outside: Path) -> None:
    write(outside / "secret.csv", b"secret")
    write(outside / "deep" / "secret2.csv", b"secret2")
    (root / "abs-out.csv").symlink_to(outside / "secret.csv")
    (root / "rel-out.csv").symlink_to(Path("..") / outside.name / "secret.csv")
    (root / "outdir").symlink_to(outside, target_is_directory=True)
    (root / "loop-a.csv").symlink_to(root / "loop-b.csv")
    (root / "loop-b.csv").symlink_to(root / "loop-a.csv")
    (root / "self.csv").symlink_to("self.csv")
    (root / "dirloop").symlink_to(root, target_is_directory=True)
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "up").symlink_to("..", target_is_directory=True)


@pytest.mark.parametrize("poll", MODES)
async def test_symlinks_outside_the_root_and_loops_at_start(tmp_path: Path,
                                                            poll: object) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write(root / "real.csv", b"real")
    _plant_links(root, outside)
    (root / "inside.csv").symlink_to("real.csv")
    async with running(root, ctx=Context(), poll=poll) as (source, ctx):
        await ctx.wait_until(lambda: len(ctx.events) >= 2, wait_timeout(poll))
        # files written outside, also through the directory link, are not the root's
        write(outside / "later.csv", b"later")
        write(root / "outdir" / "via-link.csv", b"via link")
        write(root / "real2.csv", b"real2")
        await ctx.wait_until(lambda: bool(ctx.named("real2.csv")), wait_timeout(poll))
        await sentinel(ctx, root)
        assert ctx.health[-1] == (True, None)
    assert sorted(e.payload["relpath"] for e in ctx.events) == [
        "inside.csv", "real.csv", "real2.csv", "zz-sentinel.dat"]
    assert source.stats["files_tracked"] == 4


async def test_symlinks_appearing_live_are_checked_and_loops_do_not_hang_the_rescan(
        tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write(root / "real.csv", b"real")
    async with running(root, ctx=Context(), rescan="1s") as (source, ctx):
        await ctx.wait_until(lambda: bool(ctx.named("real.csv")))
        first_scan = source.stats["last_scan_at"]
        _plant_links(root, outside)
        (root / "inside.csv").symlink_to("real.csv")  # a link: no close-write, the rescan
        await ctx.wait_until(lambda: bool(ctx.named("inside.csv")), timeout=5)
        await eventually(lambda: source.stats["last_scan_at"] != first_scan)
        write(root / "outdir" / "via-link.csv", b"via link")
        # a directory moved in, holding links back to the root and out of it: watchdog walks it
        # (and reports the directory links as directories); nothing is aliased or leaks in
        pack = tmp_path / "staging" / "pack"
        write(pack / "packed.csv", b"packed")
        (pack / "up").symlink_to("..", target_is_directory=True)
        (pack / "out").symlink_to(outside, target_is_directory=True)
        (pack / "loop").symlink_to("loop")
        pack.rename(root / "pack")
        await ctx.wait_until(lambda: bool(ctx.named("packed.csv")))
        await sentinel(ctx, root)
        # a later rescan over the loops completes too
        second_scan = source.stats["last_scan_at"]
        write(root / "zz-after.csv", b"after")
        await eventually(lambda: source.stats["last_scan_at"] != second_scan
                         and bool(ctx.named("zz-after.csv")))
        assert ctx.health[-1] == (True, None)
    assert sorted(e.payload["relpath"] for e in ctx.events) == [
        "inside.csv", "pack/packed.csv", "real.csv", "zz-after.csv", "zz-sentinel.dat"]
