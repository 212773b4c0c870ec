"""Jobs in a simulation: claimed as the dispatcher claims them, ended as the test says.

A fired trigger's job is claimed in the engine's own trip (`claim_fired`, as the runtime's
`Flow.claim_fired` has the dispatcher do), with the store's compare-and-set and the rule's
`concurrency`; a job without a free slot waits, and is claimed when one of its rule's jobs
ends. Each attempt ends after the duration and with the outcome of the next `job` input for
its rule (else the test's `jobs` default). A failed attempt with attempts left is retried
after the rule's `retry.backoff`, doubled per attempt and capped at `max_backoff`, as the
dispatcher computes it, without its jitter (the dispatcher waits 75-100% of that).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from triggerd.clock import ManualClock
from triggerd.config.loader import Config
from triggerd.dispatcher import backoff_delay
from triggerd.model import Job, JobStatus, Trigger
from triggerd.simulate.simstore import SimStore
from triggerd.simulate.spec import Jobs, Outcome

OWNER = "triggerd-test"


@dataclass(frozen=True)
class Plan:
    outcome: Outcome
    duration: timedelta


@dataclass(frozen=True)
class Attempt:
    job: Job
    ends_at: datetime
    outcome: Outcome


class JobRunner:
    """The attempts running, the jobs waiting for a slot or a retry, and the test's plans."""

    def __init__(self, config: Config, store: SimStore, clock: ManualClock, default: Jobs,
                 planner: Callable[[str], Plan] | None = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        default_plan = Plan(default.outcome, default.duration)
        self.planner = planner or (lambda _rule: default_plan)  # when no `job` input says
        self.plans: dict[str, deque[Plan]] = defaultdict(deque)
        self.running: dict[str, Attempt] = {}
        self.waiting: list[str] = []  # job ids, oldest first: no free slot, or a retry
        self.retry_at: dict[str, datetime] = {}
        self.started: dict[str, datetime] = {}  # job id: its first attempt's start
        self.ended: dict[str, tuple[datetime, JobStatus]] = {}  # job id: its final state

    def plan(self, rule: str, outcome: Outcome, duration: timedelta) -> None:
        """How the next attempt of `rule` to start ends (a `job` input)."""
        self.plans[rule].append(Plan(outcome, duration))

    def claim_fired(self, fired: Sequence[Trigger]) -> None:
        """In the engine's trip: claim the jobs of the triggers just written."""
        for trig in fired:
            if self._left_waiting(trig.id):
                self.waiting.append(trig.id)

    def _left_waiting(self, job_id: str) -> bool:
        """Claim a job and start its attempt; True if it was not claimed and waits on (queued
        or retrying: no free slot, or its retry not due yet)."""
        now = self.clock.now()
        claim = self.store.claim(job_id, OWNER, self._concurrency, now,
                                 context=False)  # no backend runs
        if claim.job is None:
            found = claim.found
            return found is not None and found.status in (JobStatus.QUEUED,
                                                           JobStatus.RETRYING)
        plans = self.plans[claim.job.rule]
        plan = plans.popleft() if plans else self.planner(claim.job.rule)
        self.running[job_id] = Attempt(claim.job, now + plan.duration, plan.outcome)
        self.started.setdefault(job_id, now)
        return False

    def _concurrency(self, rule: str) -> int:
        spec = self.config.rules.get(rule)
        return spec.dispatch.concurrency if spec else 1

    def next_time(self) -> datetime | None:
        """When the next attempt ends or the next retry is due."""
        times = [a.ends_at for a in self.running.values()] + list(self.retry_at.values())
        return min(times, default=None)

    def finish_due(self) -> list[str]:
        """End the attempts due now (oldest first); the rules whose job ended."""
        now = self.clock.now()
        ended = []
        for job_id, attempt in sorted(self.running.items(), key=lambda kv: kv[1].ends_at):
            if attempt.ends_at <= now:
                del self.running[job_id]
                self._finish(attempt, now)
                ended.append(attempt.job.rule)
        return ended

    def _finish(self, attempt: Attempt, now: datetime) -> None:
        job = attempt.job
        status = JobStatus.SUCCEEDED if attempt.outcome == "succeeded" else JobStatus.FAILED
        next_at = None
        spec = self.config.rules.get(job.rule)
        budget = job.max_attempts or (spec.dispatch.retry.attempts if spec else 1)
        if attempt.outcome == "failed" and spec is not None and job.attempts < budget:
            retry = spec.dispatch.retry
            next_at = now + backoff_delay(retry.backoff, retry.max_backoff, job.attempts)
            status = JobStatus.RETRYING
            self.retry_at[job.id] = next_at
        else:
            self.ended[job.id] = (now, status)
        self.store.finish_attempt(job.id, OWNER, status, now, attempt=job.attempts,
                                  detail=f"{attempt.outcome} (triggerd test)",
                                  next_attempt_at=next_at)

    def claim_waiting(self, freed: bool) -> None:
        """Claim what waits and may start now: retries due, and (when an attempt ended just
        now, `freed`: the only way a slot frees) jobs of rules with a free slot."""
        now = self.clock.now()
        due = [j for j, at in self.retry_at.items() if at <= now]
        for job_id in due:
            del self.retry_at[job_id]
            self.waiting.append(job_id)
        if freed or due:
            self.waiting = [j for j in self.waiting if self._left_waiting(j)]
