"""The daemon's background duties: the heartbeat, and housekeeping (CLI requests, recovery of
orphaned jobs, the sources' reported figures, retention).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from triggerd import model
from triggerd.aio import wait_event
from triggerd.errors import StoreError
from triggerd.model import dead_before

if TYPE_CHECKING:
    from triggerd.runtime.daemon import Daemon

log = logging.getLogger("triggerd.daemon")

HEARTBEAT = model.HEARTBEAT  # (a module global, so a test can beat faster)
REQUEST_POLL = 0.25  # seconds: `triggerd fire` is picked up well within a second
PRUNE_EVERY = timedelta(hours=1)
# how often to look for work orphaned by a dead replica: a killed daemon is dead DEAD_AFTER
# after its last heartbeat (0-5 s before the kill), so its jobs resume elsewhere within
# DEAD_AFTER + RECOVER_EVERY of the kill (the chaos suite's target: DEAD_AFTER + 5 s). One
# short transaction per look.
RECOVER_EVERY = timedelta(seconds=2)
CHECKPOINT_EVERY = timedelta(seconds=10)  # SQLite: the write-ahead log holds ~10 s of writes
DETAILS_EVERY = timedelta(seconds=1)  # how often sources' reported figures are written


async def heartbeat(daemon: Daemon) -> None:
    """Say "alive" every HEARTBEAT. On PostgreSQL, replicas take over the running jobs of
    a daemon silent for 3 heartbeats, so the beat has its own thread and connection: a
    long store-thread call (a prune, a big batch, a /metrics scrape) must not make this
    daemon look dead while its jobs run. (SQLite: one daemon per file, nobody takes over;
    the beat shares the store thread, which holds the one write lock anyway.)"""
    own = daemon.store.dialect == "postgresql"
    beats = ThreadPoolExecutor(1, thread_name_prefix="triggerd-heartbeat") if own else None
    loop = asyncio.get_running_loop()
    try:
        while not daemon.stopping.is_set():
            beat = functools.partial(daemon.store.heartbeat, daemon.id, daemon.clock.now())
            try:
                await (loop.run_in_executor(beats, beat) if beats else daemon.call(beat))
                daemon.metrics.heartbeat.set(time.time())
            except StoreError as exc:
                log.warning("heartbeat: store unavailable (%s)", exc)
            await wait_event(daemon.stopping, HEARTBEAT.total_seconds())
    finally:
        if beats is not None:
            beats.shutdown(wait=False)


async def housekeeping(daemon: Daemon) -> None:
    """CLI requests (fire, pause, resume), job recovery, source details and retention
    pruning (the heartbeat is its own task: `heartbeat`)."""
    next_prune = next_details = next_checkpoint = daemon.clock.now()
    next_recover = next_prune + RECOVER_EVERY
    while not daemon.stopping.is_set():
        now = daemon.clock.now()
        try:
            if now >= next_recover:
                await recover(daemon)
                next_recover = now + RECOVER_EVERY
            if now >= next_checkpoint:  # SQLite: keep its write-ahead log small
                await daemon.call(daemon.store.checkpoint)
                next_checkpoint = now + CHECKPOINT_EVERY
            if now >= next_details:
                for ctx in list(daemon.supervisor.contexts.values()):
                    await ctx.flush()
                next_details = now + DETAILS_EVERY
            if now >= next_prune:
                cutoff = now - daemon.config.retention
                removed = await daemon.call(functools.partial(daemon.store.prune, cutoff))
                if removed:
                    log.info("retention: pruned %d row(s) older than %s", removed,
                             cutoff.isoformat())
                next_prune = now + PRUNE_EVERY
            for req_id, kind, rule, args in await daemon.call(
                    lambda: daemon.store.take_requests(daemon.id, daemon.clock.now())):
                result = await _handle_request(daemon, req_id, kind, rule, args)
                await _finish_request(daemon, req_id, result)
        except StoreError as exc:  # a lost connection: log, and try again shortly
            log.warning("housekeeping: store unavailable (%s)", exc)
            await wait_event(daemon.stopping, 2.0)
        await wait_event(daemon.stopping, REQUEST_POLL)



async def recover(daemon: Daemon, starting: bool = False) -> None:
    """Re-queue jobs left by a previous run or a dead replica (see Store.recover_jobs)."""
    now = daemon.clock.now()
    exclusive = daemon.store.exclusive
    found = await daemon.call(lambda: daemon.store.recover_jobs(
        daemon.id, dead_before(now), now, exclusive=exclusive))
    requeued = await daemon.call(lambda: daemon.store.requeue_requests(
        daemon.id, dead_before(now), exclusive=exclusive))
    if requeued:
        log.info("%d CLI request(s) left unanswered by a stopped daemon taken back", requeued)
    for job_id, not_before, taken_over in found:
        if job_id in daemon.dispatcher.wanted or job_id in daemon.dispatcher.running:
            continue
        if starting:
            log.info("job %s: resuming dispatch after restart", job_id,
                     extra={"job_id": job_id})
        elif taken_over:
            log.info("job %s: taking over (its daemon is gone)", job_id,
                     extra={"job_id": job_id})
        else:  # queued or retrying: the replicas share these, the first claim runs it
            log.debug("job %s: queued, dispatching if no other replica does first", job_id,
                      extra={"job_id": job_id})
        daemon.dispatcher.submit(job_id, not_before)



async def _finish_request(daemon: Daemon, req_id: int, result: str) -> None:
    await daemon.call(lambda: daemon.store.finish_request(req_id, result))

async def _handle_request(daemon: Daemon, request_id: int, kind: str, rule: str,
                          args: dict[str, Any]) -> str:
    if rule not in daemon.config.rules:
        return f"error: unknown rule {rule!r}"
    if kind == "fire":
        reason = str(args.get("reason") or "manual trigger")
        fired = [t.id for t in await daemon.engine.fire(rule, reason, request_id)]
        if not fired:  # a retried request: report what it fired the first time
            fired = await daemon.call(lambda: daemon.store.triggers_of_request(request_id))
        return "fired " + ", ".join(fired) if fired else "error: not fired"
    if kind in ("pause", "resume"):
        await daemon.engine.evaluate_rule(rule)
        return f"{kind}d"
    return f"error: unknown request {kind!r}"
