"""The dispatcher: owns the job lifecycle, from `queued` to `succeeded` or `failed`.

    queued ──claim──▶ running ──ok──────────────▶ succeeded
                        │  ├──permanent error──▶ failed
                        │  └──transient error──▶ retrying ──(backoff)──▶ running ...
                        └──attempts exhausted──▶ failed

Claiming is a compare-and-set on the job's status in the store, so with several replicas each
attempt is started by exactly one of them; `concurrency` is checked at the same time. Retries
use capped, jittered exponential backoff (`retry.backoff`, doubling, at most
`retry.max_backoff`, each delay drawn from its upper quarter so replicas and jobs spread out);
a backend's own hint (`TransientDispatchError.retry_after`, e.g. HTTP `Retry-After`) is a floor
on that delay, still within `max_backoff`. The attempt budget is the job's own (`max_attempts`,
the rule's `retry.attempts` when the trigger was written, plus the attempts a daemon stop or
crash interrupted and gave back: see `Store.recover_jobs`).
A backend error is logged with the job and trigger ids and never stops the daemon.

Safety net: an exception that is not a `DispatchError`, raised by a backend (a bug, a plugin)
or by the dispatcher's own bookkeeping around an attempt, is logged once with its traceback
and the job is recorded as `failed` (never retried: the backend may have acted before it
broke, and a retry could act twice; once the bug is understood, `triggerd fire` starts a new
trigger), with a detail naming the error. The job never stays `running`, and the
dispatcher goes on with the next trigger. Only when even that record fails (the store
refuses it for a reason that is not an outage), or the daemon stops while the record waits out
a store outage, does the job stay `running`, to be given back by `Store.recover_jobs` at the
next start (which may then retry it: the one case the rule above cannot hold); the first is
logged.

Fencing: every write about a running job carries the claim it was made under (this daemon's
id and the attempt number, compared in the same statement: `Store.finish_attempt`,
`Store.set_external_id`). A daemon paused or cut off from the store past the takeover cutoff,
whose job another replica gave back (and perhaps claimed again) meanwhile, finds its writes
refused and abandons the attempt (logged; `triggerd_job_attempts_abandoned_total`): it neither
records nor retries it. An attempt whose task starts more than `FENCE_AFTER` after its claim
(the loop stalled, or the process was stopped) checks the claim before calling the backend.

A job is claimed on the store thread, in the engine's trip that wrote its trigger when it can
start at once (`claim_fired`, which the runtime runs right after the engine's unit; else by
`run`), and its attempt is followed on the loop (`follow`). A `Launcher` backend (the command
backend) begins the attempt right there, after the claim's commit (`launch`: its files and
the spawn), and the attempt's task on the loop follows it (`job.launched`): the way from an
event to a running command does not pass through the loop and a worker thread first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from triggerd.aio import wait_event
from triggerd.config.loader import Config
from triggerd.config.schema import RetrySpec
from triggerd.errors import (
    DispatchError,
    PermanentDispatchError,
    StoreError,
    TransientDispatchError,
    store_retry_delay,
)
from triggerd.interfaces import Backend, Clock, Launcher
from triggerd.model import DispatchResult, Job, JobStatus, Trigger, TriggerContext
from triggerd.ops import failpoints
from triggerd.ops.logging import job_fields
from triggerd.store.runner import Runner
from triggerd.store.sql import Claim, JobContext, Store

if TYPE_CHECKING:
    from triggerd.ops.metrics import Metrics

log = logging.getLogger("triggerd.dispatch")
SLOT_POLL = 5.0  # seconds: how often parked jobs look for a slot freed elsewhere
# seconds from a claim to its attempt's start after which the claim is checked first (the loop
# was stalled or the process paused meanwhile: the job may have been taken over)
FENCE_AFTER = 1.0


class _Handle:
    def __init__(self, dispatcher: Dispatcher, job: Job,
                 launched: Future[Any] | None = None) -> None:
        self._d = dispatcher
        self.job_id = job.id
        self.attempt = job.attempts
        self.launched = launched

    async def set_external_id(self, external_id: str) -> None:
        d = self._d
        try:
            held = await d.call(lambda: d.store.set_external_id(
                self.job_id, d.owner, self.attempt, external_id))
        except StoreError as exc:  # the side effect happened: never fail the attempt for this
            log.warning("job %s: could not record external id %s yet (%s); the outcome "
                        "records it", self.job_id, external_id, exc)
            return
        if not held:
            log.warning("job %s: attempt %d was taken over by another daemon; its external "
                        "id %s is not recorded", self.job_id, self.attempt, external_id)


class Dispatcher:
    def __init__(self, config: Config, store: Store, backends: Mapping[str, Backend],
                 clock: Clock, call: Runner, owner: str,
                 on_finished: Callable[[Job], None] | None = None,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.store = store
        self.backends = dict(backends)
        self.clock = clock
        self.call = call
        self.owner = owner
        self.on_finished = on_finished
        self.wanted: dict[str, datetime | None] = {}  # job id -> not before
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopped = False  # stopping (or run() has ended): start nothing more
        self.metrics = metrics  # triggerd.ops.metrics

    def submit(self, job_id: str, not_before: datetime | None = None) -> None:
        """Queue a job for `run` to claim and start (not before `not_before`)."""
        if job_id in self.running:  # started already (claimed with its trigger)
            return
        self.wanted[job_id] = not_before
        self._wake.set()

    def stop_starting(self) -> None:
        """The daemon is stopping: claim and start no attempt from now on (a store trip under
        way when its caller is cancelled still ends; what it would claim stays queued for the
        next start instead of being launched with nobody left to follow it)."""
        self._stopped = True
        self._wake.set()

    # -- jobs claimed in the trip that wrote their triggers -------------------------------------
    def claim_fired(self, fired: Sequence[Trigger]) -> dict[str, Claim]:
        """On the store thread, right after the engine wrote `fired`: claim each trigger's job
        where its rule has a free slot (and begin a `Launcher`'s attempt). A job not claimed
        here (no free slot, a store error, the daemon stopping) stays queued for `run`."""
        claims: dict[str, Claim] = {}
        if self._stopped:  # shutting down: the jobs stay queued for the next start
            return claims
        for trig in fired:
            with contextlib.suppress(StoreError):  # queued: `run` claims it later
                claims[trig.id] = self._claim(trig.id, self.clock.now())
        return claims

    def follow(self, fired: Sequence[Trigger], claims: Mapping[str, Claim]) -> None:
        """On the loop, with what `claim_fired` claimed: start those attempts, queue the rest."""
        for trig in fired:
            claim = claims.get(trig.id)
            # (claimed as the stop began: a launched attempt is followed while the loop runs)
            if claim is not None and claim.job is not None and (
                    not self._stopped or claim.launched is not None):
                self._start(claim.job, claim)
            else:
                self.submit(trig.id)

    def _claim(self, job_id: str, now: datetime) -> Claim:
        """On the store thread: claim the job and, for a `Launcher` backend, begin the attempt
        right here (the latency from an event to a running command: no hop to the loop and
        on to a worker thread first)."""
        claim = replace(self.store.claim(job_id, self.owner, self._concurrency, now),
                        claimed_at=time.monotonic())
        job, found = claim.job, claim.context
        if job is None:
            return claim
        failpoints.hit("after-claim")  # crash tests: claimed, the backend not yet called
        backend = self.backends.get(job.backend)
        if found is None or not isinstance(backend, Launcher):
            return claim
        launched: Future[Any] = Future()
        try:
            launched.set_result(backend.launch(_context(job, found), job.attempts))
        except Exception as exc:  # the attempt's outcome: dispatch raises it
            launched.set_exception(exc)
        return replace(claim, launched=launched)

    def reconfigure(self, config: Config, backends: Mapping[str, Backend]) -> None:
        """A reload: the new config, and its new and changed backends (jobs already running
        finish on the backend object they started with)."""
        self.config = config
        self.backends.update(backends)

    def forget_backends(self, names: Iterable[str]) -> None:
        """Backends a reload removed: dropped only once the engine decided with the new rules
        (a decision round on the old ones may have queued a job for one of them)."""
        for name in names:
            self.backends.pop(name, None)

    async def run(self) -> None:
        store_down = 0.0  # seconds to wait before retrying after a store error
        try:
            while True:
                self._wake.clear()
                now = self.clock.now()
                try:
                    for job_id, not_before in list(self.wanted.items()):
                        if self._stopped:  # stopping: what is wanted waits for the next start
                            break
                        if job_id in self.running or (not_before and not_before > now):
                            continue
                        await self._try_start(job_id, now)
                    store_down = 0.0
                except StoreError as exc:  # a lost connection: keep the jobs, try again
                    store_down = store_retry_delay(store_down)
                    log.warning("dispatcher: store unavailable (%s); retrying in %.1fs",
                                exc, store_down)
                waits = [nb for j, nb in self.wanted.items() if nb and j not in self.running]
                # parked jobs (waiting for a free slot) wake when a job ends; the slow poll
                # covers a slot freed by another replica
                delay = store_down or (SLOT_POLL if self.wanted else None)
                if self._stopped:
                    delay = None
                elif waits:
                    delay = max(0.001, (min(waits) - self.clock.now()).total_seconds() + 0.001)
                    delay = max(delay, store_down)
                await wait_event(self._wake, delay)
        finally:
            self._stopped = True  # a claim that raced the stop is given back at the next start
            for task in self.running.values():
                task.cancel()
            if self.running:
                await asyncio.gather(*self.running.values(), return_exceptions=True)

    def _concurrency(self, rule_name: str) -> int:
        rule = self.config.rules.get(rule_name)
        return rule.dispatch.concurrency if rule else 1

    async def _try_start(self, job_id: str, now: datetime) -> None:
        # one store round trip: claim + the trigger context (+ a launch)
        claim = await self.call(lambda: self._claim(job_id, now))
        job = claim.job
        if job is None:
            current = claim.found
            if current is None or current.status not in (JobStatus.QUEUED, JobStatus.RETRYING):
                self.wanted.pop(job_id, None)  # finished, cancelled, or another replica has it
                return
            # not yet due: sleep until it is; at the rule's concurrency: park it until a job
            # ends (never poll a due job in a tight loop)
            due = current.next_attempt_at
            self.wanted[job_id] = due if due is not None and due > now else None
            return
        self._start(job, claim)

    def _start(self, job: Job, claim: Claim) -> None:
        self.wanted.pop(job.id, None)
        rule = self.config.rules.get(job.rule)
        log.info("job %s: attempt %d/%s started on backend %s", job.id, job.attempts,
                 _budget(job, rule.dispatch.retry if rule else None), job.backend,
                 extra=job_fields(job))
        if self.metrics is not None:
            claimed_at = job.started_at or self.clock.now()  # the first claim's time
            self.metrics.attempt_started(job.backend, job.attempts,
                                         (claimed_at - job.created_at).total_seconds())
        self.running[job.id] = asyncio.create_task(self._attempt(job, claim),
                                                   name=f"job:{job.id}")

    async def _attempt(self, job: Job, claim: Claim) -> None:
        retry_at: datetime | None = None
        try:
            try:
                retry_at = await self._run_attempt(job, claim)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the safety net: see the module docstring
                await self._record_internal_error(job, exc)
        finally:
            self.running.pop(job.id, None)
            self._wake.set()
        if retry_at is not None:  # after leaving `running`, which submit skips
            self.submit(job.id, retry_at)
        if self.on_finished is not None:
            try:
                self.on_finished(job)
            except Exception:  # a listener's bug must not end the attempt's task noisily
                log.exception("job %s: on_finished listener failed", job.id,
                              extra=job_fields(job))

    async def _record_internal_error(self, job: Job, exc: Exception) -> None:
        """Record an attempt that broke outside the backend contract as failed (once)."""
        detail = f"internal error: {type(exc).__name__}: {exc}"[:2000]
        log.error("job %s: attempt %d broke unexpectedly; recording it as failed: %s", job.id,
                  job.attempts, detail, exc_info=exc, extra=job_fields(job))
        try:
            # a no-op when the outcome was already recorded (compare-and-set on `running`)
            await self._until_stored(lambda: self.store.finish_attempt(
                job.id, self.owner, JobStatus.FAILED, self.clock.now(), attempt=job.attempts,
                detail=detail), f"job {job.id}: recording the internal error")
        except asyncio.CancelledError:
            raise
        except Exception as again:
            log.error("job %s: could not record the internal error (%s: %s); the job stays "
                      "running until the next start gives it back", job.id,
                      type(again).__name__, again, extra=job_fields(job))

    async def _run_attempt(self, job: Job, claim: Claim) -> datetime | None:
        """Run one attempt and record its outcome; the time of the retry, if one is due."""
        started = time.monotonic()
        retry_at: datetime | None = None
        if claim.launched is None and started - claim.claimed_at > FENCE_AFTER and not \
                await self.call(lambda: self.store.holds(job.id, self.owner, job.attempts)):
            self._taken_over(job, "before it began")
            return None
        status, result, error = await self._dispatch(job, claim.context, claim.launched)
        now = self.clock.now()
        rule = self.config.rules.get(job.rule)
        next_at = None
        if status == JobStatus.FAILED and not isinstance(error, PermanentDispatchError) \
                and rule is not None and job.attempts < _budget(job, rule.dispatch.retry):
            hint = error.retry_after if isinstance(error, TransientDispatchError) else None
            next_at = now + retry_delay(rule.dispatch.retry, job.attempts, hint)
            status = JobStatus.RETRYING
        if self.metrics is not None:
            self.metrics.attempt_finished(job.backend, status.value,
                                          time.monotonic() - started)
        detail = result.detail if result else (error.detail if error else None)
        exit_code = result.exit_code if result else (error.exit_code if error else None)
        ext = result.external_id if result else (error.external_id if error else None)
        if not await self._until_stored(lambda: self.store.finish_attempt(
                job.id, self.owner, status, now, attempt=job.attempts, exit_code=exit_code,
                detail=detail, external_id=ext, next_attempt_at=next_at),
                f"job {job.id}: recording outcome"):
            self._taken_over(job, f"as it ended ({status.value}: {detail})")
            return None
        if status == JobStatus.RETRYING:
            log.warning("job %s: attempt %d failed, retrying at %s: %s", job.id,
                        job.attempts, next_at.isoformat() if next_at else "?", detail,
                        extra=job_fields(job))
            retry_at = next_at
        elif status == JobStatus.SUCCEEDED:
            log.info("job %s: succeeded (trigger %s)", job.id, job.trigger_id,
                     extra=job_fields(job))
        else:
            log.error("job %s: failed after %d attempt(s): %s", job.id, job.attempts, detail,
                      extra=job_fields(job))
        return retry_at

    def _taken_over(self, job: Job, when: str) -> None:
        """Fencing: this daemon's claim on the job is gone (it was paused or cut off from the
        store past the takeover cutoff, and another daemon gave the job back or claimed it).
        The attempt is abandoned: its outcome is not recorded, it is not retried from here."""
        log.warning("job %s: attempt %d was taken over by another daemon %s; abandoning it "
                    "here (its outcome is not recorded, nor retried by this daemon)", job.id,
                    job.attempts, when, extra=job_fields(job))
        if self.metrics is not None:
            self.metrics.attempt_abandoned(job.backend)

    async def _until_stored(self, fn: Callable[[], Any], what: str) -> Any:
        """An outcome must not be lost to a passing store outage: retry it with backoff."""
        delay = 0.0
        while True:
            try:
                return await self.call(fn)
            except StoreError as exc:
                delay = store_retry_delay(delay)
                log.warning("%s: store unavailable (%s); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)

    async def _dispatch(self, job: Job, found: JobContext | None, launched: Future[Any] | None
                        ) -> tuple[JobStatus, DispatchResult | None, DispatchError | None]:
        backend = self.backends.get(job.backend)
        if found is None or backend is None:
            why = "its trigger is gone" if found is None else \
                f"backend {job.backend!r} is not configured any more"
            return JobStatus.FAILED, None, PermanentDispatchError(f"cannot dispatch: {why}")
        try:
            result = await backend.dispatch(_context(job, found), _Handle(self, job, launched))
        except DispatchError as exc:
            return JobStatus.FAILED, None, exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a backend bug: failed, not retried (module docstring)
            log.exception("job %s: backend %s raised unexpectedly", job.id, job.backend,
                          extra=job_fields(job))
            return JobStatus.FAILED, None, PermanentDispatchError(
                f"internal error in backend {job.backend}: {type(exc).__name__}: {exc}"[:2000])
        return JobStatus.SUCCEEDED, result, None


def _context(job: Job, found: JobContext) -> TriggerContext:
    trig = found.trigger
    return TriggerContext(trigger_id=trig.id, rule=trig.rule, group=trig.group,
                          fired_at=trig.fired_at, reason=trig.reason, manual=trig.manual,
                          params=found.params, events=found.events, attempt=job.attempts)


_jitter = random.Random()  # noqa: S311 - spreading retries, not security


def retry_delay(policy: RetrySpec, attempt: int, retry_after: float | None = None,
                rng: random.Random | None = None) -> timedelta:
    """The wait before attempt `attempt + 1`: the policy's doubling backoff, capped at
    `max_backoff`, drawn from its upper quarter (jitter); at least `retry_after` seconds (the
    outside system's hint), but never beyond `max_backoff`."""
    base = backoff_delay(policy.backoff, policy.max_backoff, attempt)
    delay = base * (0.75 + 0.25 * (rng or _jitter).random())
    if retry_after is not None and retry_after > 0:  # clamped first: it may be any number
        delay = max(delay, timedelta(seconds=min(retry_after,
                                                 policy.max_backoff.total_seconds())))
    return min(delay, policy.max_backoff)


def _budget(job: Job, policy: RetrySpec | None) -> int:
    if job.max_attempts is not None:
        return job.max_attempts
    return policy.attempts if policy is not None else 1


def backoff_delay(base: timedelta, cap: timedelta, attempt: int) -> timedelta:
    """Delay before attempt `attempt + 1`: base, 2×base, 4×base ... capped."""
    delay: timedelta = min(cap, base * (2 ** max(0, attempt - 1)))
    return delay
