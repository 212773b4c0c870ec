"""The SQLite disk-full run of bench/chaos.py (`--sqlite-disk-full`): one daemon, no replicas.

The daemon's state directory (its SQLite store) is a small tmpfs (8 MiB, mounted by the
harness: needs root). Files land in a watched directory (outside the tmpfs) and a cron source
ticks every second, both dispatching to the idempotent receiver. Then:
1. once the store has some history (a `files` batch fired and its job succeeded), a filler
   file takes every free byte of the tmpfs (written until ENOSPC);
2. the harness waits until the daemon says its store is unusable: `/readyz` (TRIGGERD_HTTP)
   answers 503 with a problem (a source whose write failed, or the store itself), while
   `/healthz` answers 200 and the process is up; the workload goes on meanwhile, and the
   disk stays full until FULL_FILES more files have landed and the landing source has
   reported a refused write;
3. the filler is deleted; the harness waits until `/readyz` is 200 again, stops the workload,
   and drains as the replicated run does (pause, fire, jobs final);
4. the checker: every file published is an event, consumed by one trigger, whose job is final,
   with one side effect at the receiver.
The verdict is a dict; `ok` is True only if every step held. Unmounted at the end, always.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import chaos
from _chaos_check import Observed, check, table
from _chaos_receiver import Receiver
from kafka_support import free_port
from sqlalchemy import create_engine, select

from triggerd.store import tables as t

RULES = {
    "files": ("""
        on: [landing]
        when: {min_events: 3}
        dispatch: {backend: hook, on_busy: queue, retry: RETRY}
    """, lambda e: e["source"] == "landing"),
    "ticks": ("""
        on: [tick]
        dispatch: {backend: hook, on_busy: coalesce, retry: RETRY}
    """, lambda e: e["source"] == "tick"),
}
SIZE = "8m"
FULL_FILES = 3  # files published while the store is full (each one must be recovered)


def probe(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (OSError, ValueError) as exc:
        return -1, str(exc)


def fill(directory: Path) -> int:
    """Write a filler file until the file system is full; its size in bytes."""
    chunk, written = b"\0" * 65536, 0
    with open(directory / "filler", "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]


def mount(directory: Path) -> str | None:
    """Mount a tmpfs of SIZE on `directory`; None, or why it cannot be done."""
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(directory)],
                       check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        return (exc.stderr or exc.stdout or f"exit {exc.returncode}").strip()
    except OSError as exc:
        return str(exc)
    return None


def unmount(directory: Path) -> None:
    """Unmount (lazily if something still holds it)."""
    done = subprocess.run(["umount", str(directory)], capture_output=True, check=False)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def run_disk_full(seed: int, keep: Path | None = None, timeout: float = 120) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="triggerd-chaos-disk-") as tmp:
        root = Path(tmp)
        state = root / "state"
        state.mkdir()
        why = mount(state)
        if why is not None:
            return {"ok": None, "skipped": f"cannot mount a tmpfs: {why}"}
        try:
            return _run(seed, root, state, timeout)
        finally:
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                for path in root.glob("*.log"):
                    (keep / f"diskfull-{path.name}").write_bytes(path.read_bytes())
            unmount(state)


def _run(seed: int, root: Path, state: Path, timeout: float) -> dict[str, Any]:
    receiver = Receiver().start()
    port = free_port()
    config = root / "triggerd.yaml"
    store = f"sqlite:///{state / 'state.db'}"
    config.write_text(chaos.config_text(root / "landing", None, None, receiver.url,
                                        root / "runs.jsonl", {k: v[0] for k, v in RULES.items()}))
    daemon = chaos.Replica(0, config, chaos.daemon_env(
        store, state, {"TRIGGERD_HTTP": f"127.0.0.1:{port}"}), root / "daemon.log")
    workload = chaos.Workload(seed, root / "landing", root / "staging", None, None)
    verdict: dict[str, Any] = {"ok": False, "tmpfs": SIZE}
    engine = create_engine(store)
    for d in chaos.DIRS:
        (root / "landing" / d).mkdir(parents=True, exist_ok=True)
    try:
        daemon.start()
        chaos.wait_for(daemon.ready, 60, "the daemon to start")
        workload.start()
        chaos.wait_for(lambda: probe(port, "/readyz")[0] == 200, 30, "ready before the fill")
        # a little history before the disk fills: files stored, a batch fired and its job done
        chaos.wait_for(lambda: _history(engine), 60, "a `files` job done before the fill")
        verdict["filler_bytes"] = fill(state)
        t_full = time.time()
        _, body = chaos.wait_for(
            lambda: (r := probe(port, "/readyz"))[0] == 503 and r, 60,
            "/readyz to report the full store")
        verdict["unhealthy_after_s"] = round(time.time() - t_full, 1)
        verdict["readyz_while_full"] = body.get("problems") if isinstance(body, dict) else body
        # stay full while files keep landing: FULL_FILES more published, and the landing
        # source refused (its events could not be written)
        landed = len(workload.files)

        def refused() -> bool:
            code, now = probe(port, "/readyz")
            return len(workload.files) >= landed + FULL_FILES and code == 503 \
                and isinstance(now, dict) and any(p.startswith("source landing unhealthy")
                                                  for p in now.get("problems", []))
        chaos.wait_for(refused, 60, f"{FULL_FILES} files landing on the full store, refused")
        verdict["healthz_while_full"] = probe(port, "/healthz")[0]
        verdict["daemon_up_while_full"] = daemon.alive()
        os.unlink(state / "filler")
        t_free = time.time()
        chaos.wait_for(lambda: probe(port, "/readyz")[0] == 200, timeout, "ready again")
        verdict["ready_again_after_s"] = round(time.time() - t_free, 1)
        workload.stop()
        chaos.wait_for(lambda: chaos.stored_inputs(engine, workload.files, set()) == (0, 0),
                       timeout, "every file stored")
        exempt = _fire_all(config, store, state)
        chaos.wait_for(lambda: chaos.idle_jobs(engine), timeout, "every job final")
        figures = check(_observed(engine, receiver, workload, exempt, daemon),
                        {k: v[1] for k, v in RULES.items()})
        verdict.update({"figures": figures.to_json(), "table": table(figures),
                        "ok": bool(verdict["daemon_up_while_full"]
                                   and verdict["healthz_while_full"] == 200 and figures.ok)})
        return verdict
    except TimeoutError as exc:
        verdict["error"] = str(exc)
        verdict["log_tail"] = daemon.log.read_text(errors="replace")[-3000:] \
            if daemon.log.exists() else ""
        return verdict
    finally:
        workload.stop()
        daemon.stop()
        engine.dispose()
        receiver.close()


def _history(engine: Any) -> bool:
    """True once a `files` trigger's job has succeeded (the store holds events, a trigger
    and a finished job before the disk fills)."""
    with engine.connect() as conn:
        return conn.execute(select(t.jobs.c.id).join(
            t.triggers, t.triggers.c.id == t.jobs.c.trigger_id).where(
            t.triggers.c.rule == "files", t.jobs.c.status == "succeeded").limit(1)
        ).first() is not None


def _fire_all(config: Path, store: str, state: Path) -> dict[str, float]:
    """Pause every rule, then fire every one (each verb's commands run at once; every pause
    is done before the first fire)."""
    env = chaos.daemon_env(store, state)
    exempt: dict[str, float] = {}
    for verb in ("pause", "fire"):
        if verb == "fire":
            exempt["ticks"] = time.time() - 2.0
        extra = ["--wait", "60"] if verb == "fire" else []
        procs = [subprocess.Popen([sys.executable, "-m", "triggerd", verb, rule, "--config",
                                   str(config), *extra], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for rule in RULES]
        try:
            for proc in procs:
                proc.wait(120)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return exempt


def _observed(engine: Any, receiver: Receiver, workload: chaos.Workload,
              exempt: dict[str, float], daemon: chaos.Replica) -> Observed:
    rows = chaos.read_store(engine)
    log = daemon.log.read_text(errors="replace") if daemon.log.exists() else ""
    return Observed(rows["events"], rows["rule_events"], rows["triggers"], rows["jobs"],
                    rows["attempts"], rows["daemons"], receiver.snapshot(), [],
                    set(workload.files), {}, exempt, [], {}, frozenset({"hook"}),
                    frozenset({"rec"}),
                    {"tracebacks": log.count("Traceback (most recent call last)")})
