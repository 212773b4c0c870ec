"""The filesystem source through the real daemon, in the situations a user notices: a burst of
files landing while the daemon cannot read its inotify queue, and hostile file names reaching a
`command` backend.

Every wait is on a condition with a timeout (`harness.wait_for`), never a sleep.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

from harness import Triggerd, wait_for
from sqlalchemy import func, select

from triggerd.store import tables as t

FILES = 10_000


def _stored(td: Triggerd, source: str) -> tuple[int, int]:
    """(events stored for `source`, distinct subjects among them), straight from the store."""
    store = td.store()
    try:
        with store.read() as c:
            e = t.events.c
            total = c.execute(select(func.count()).select_from(t.events)
                              .where(e.source == source)).scalar_one()
            distinct = c.execute(select(func.count(func.distinct(e.subject)))
                                 .where(e.source == source)).scalar_one()
    finally:
        store.close()
    return int(total), int(distinct)


def _max_queued() -> int:
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


def _source_status(td: Triggerd, name: str) -> dict[str, Any]:
    for s in td.json("status")["sources"]:
        if s["name"] == name:
            return dict(s)
    raise AssertionError(f"no source {name} in status")


def test_files_created_while_the_daemon_is_stopped_all_become_events_once(
        td: Triggerd) -> None:
    """SIGSTOP the daemon, create 10,000 files, SIGCONT: every file is one stored event.

    The kernel queues at most fs.inotify.max_queued_events (16,384 here) notifications while the
    daemon cannot read them, and the bridge holds 10,000 paths: either may overflow; the
    reconcile that follows must then find every file, and the file table must keep any file
    from being emitted twice."""
    landing = td.root / "landing"
    landing.mkdir()
    td.write(f"""
        state_dir: state
        sources:
          landing:
            type: filesystem
            paths: [{landing}]
            settle: 100ms
            fingerprint: stat
        backends:
          train: {{type: command, argv: [python3, "-c", "pass"]}}
        rules:
          never:
            on: [landing]
            when: {{min_events: {10**9}}}
            dispatch: {{backend: train}}
    """)
    proc = td.start()
    td.wait_running(proc)
    # the source is watching once a first file becomes an event
    (landing / "first.csv").write_bytes(b"first")
    wait_for(lambda: _stored(td, "landing")[0] == 1, 20, "the first file's event")

    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        # in the watched root itself: files in a directory created meanwhile would cause no
        # notification at all (nothing watches that directory yet), only a subtree scan
        for i in range(FILES):
            with open(landing / f"f{i:05d}.csv", "wb") as f:
                f.write(b"%d" % i)
        # A second close-after-write per file (opened for appending, nothing written, so the
        # content and mtime stay): 20,000+ queued notifications, more than the kernel's
        # max_queued_events (16,384 here), so the queue overflows for real. Done as a second
        # pass because the kernel merges identical consecutive events.
        for i in range(FILES):
            with open(landing / f"f{i:05d}.csv", "ab"):
                pass
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    wait_for(lambda: _stored(td, "landing")[0] >= FILES + 1, 60, f"{FILES} events",
             interval=0.25)
    elapsed = time.monotonic() - t0
    # nothing more arrives: a late duplicate would show up as a second event for one path, or
    # in the duplicates counter, after a sentinel written now has been stored
    (landing / "zz-sentinel.csv").write_bytes(b"last")
    wait_for(lambda: _stored(td, "landing")[0] >= FILES + 2, 20, "the sentinel")
    total, distinct = _stored(td, "landing")
    if _max_queued() < 2 * FILES:  # the kernel queue overflowed: the source must have seen it
        assert "Inotify queue overflowed" in td.log()
        status = wait_for(lambda: (s := _source_status(td, "landing"))["details"].get(
            "overflows", 0) >= 1 and s, 10, "the overflow in status")
    else:
        status = _source_status(td, "landing")
    assert td.stop(proc) == 0
    assert (total, distinct) == (FILES + 2, FILES + 2), (total, distinct)
    assert status["events"] == FILES + 2
    assert status["duplicates"] == 0
    assert status["healthy"] is True
    assert td.calls_made() == []
    print(f"{FILES} files: all stored {elapsed:.1f}s after SIGSTOP; status {status}")


def test_hostile_names_reach_the_command_backend_intact(td: Triggerd) -> None:
    landing = td.root / "landing"
    landing.mkdir()
    out = td.root / "seen.jsonl"
    script = td.root / "dump.py"
    script.write_text(textwrap.dedent(f"""
        import json, os
        ctx = json.load(open(os.environ["TRIGGERD_TRIGGER_FILE"], encoding="utf-8"))
        with open({str(out)!r}, "a", encoding="utf-8") as fh:
            for e in ctx["events"]:
                fh.write(json.dumps({{"subject": e["subject"], "name": e["payload"]["name"],
                                     "relpath": e["payload"]["relpath"],
                                     "path": e["payload"]["path"],
                                     "path_b64": e["payload"].get("path_b64")}}) + "\\n")
    """))
    td.write(f"""
        state_dir: state
        sources:
          landing:
            type: filesystem
            paths: [{landing}]
            settle: 100ms
        backends:
          dump: {{type: command, argv: [python3, {script}]}}
        rules:
          hostile:
            on: [landing]
            when: {{min_events: {len(HOSTILE) + 1}, debounce: 1s}}
            dispatch: {{backend: dump}}
    """)
    proc = td.start()
    td.wait_running(proc)
    expected = set()
    for rel in HOSTILE:
        path = landing / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode())
        expected.add(rel)
    not_utf8 = os.path.join(os.fsencode(landing), b"latin1-caf\xe9.csv")  # invalid UTF-8
    with open(not_utf8, "wb") as fh:
        fh.write(b"bytes")

    def seen() -> list[dict[str, str]]:
        if not out.exists():
            return []
        return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    wait_for(lambda: len(seen()) > len(HOSTILE), 30, "the backend to receive every name")
    assert td.stop(proc) == 0
    got = seen()
    # the name that is not UTF-8: readable in the fields, exact in path_b64
    odd = [e for e in got if e["path_b64"]]
    assert [e["name"] for e in odd] == ["latin1-caf\\xe9.csv"]
    assert Path(os.fsdecode(base64.b64decode(odd[0]["path_b64"]))).read_bytes() == b"bytes"
    got = [e for e in got if not e["path_b64"]]
    assert sorted(e["relpath"] for e in got) == sorted(expected)
    for e in got:
        assert e["subject"] == e["path"] == str(landing / e["relpath"])
        assert e["name"] == e["relpath"].rpartition("/")[2]
        assert Path(e["path"]).read_bytes() == e["relpath"].encode()  # it names the real file
    assert not (td.root / "HOSTILE-MARKER").exists()  # no name was run by a shell


HOSTILE = [
    "new\nline.csv",
    "with spaces and  double  spaces.csv",
    "$(touch HOSTILE-MARKER) `touch HOSTILE-MARKER`.csv",
    "semi;touch HOSTILE-MARKER; && pipe | amp &.csv",
    "quotes 'single' \"double\" `back`.csv",
    "caf\u00e9.csv",
    "\u65e5\u672c/\u30c7\u30fc\u30bf.csv",
    "glob *?[x].csv",
]
