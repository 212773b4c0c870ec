"""Triggers and jobs in the store: exactly one trigger per decision, one claim per attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Executable,
    Integer,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from triggerd.model import (
    Job,
    JobStatus,
    Trigger,
    trigger_id,
)
from triggerd.store import tables as t
from triggerd.store.base import TS, StoreBase, other_gone
from triggerd.store.fast import Fast

MAX_INTERRUPTED = 3  # daemon crashes a job's attempt budget absorbs (see recover_jobs)


@dataclass(frozen=True, slots=True)
class NewTrigger:
    rule: str
    group: str
    expected_seq: int
    fired_at: datetime
    reason: str
    kind: str  # events | floor | schedule | manual
    backend: str
    params: dict[str, Any]
    max_attempts: int
    # what the rule's policy (on_busy) asks of the jobs: cancel the group's queued jobs, as
    # superseded by this trigger (the why, for their detail); write this job cancelled
    # (the why, its detail)
    supersede: str | None = None
    skipped: str | None = None
    request_id: int | None = None  # the CLI request behind a manual fire


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a backend is given for a job: its trigger, the consumed events, the rule's params."""

    trigger: Trigger
    events: list[dict[str, Any]]
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Claim:
    job: Job | None  # claimed: now running, attempts incremented
    found: Job | None  # not claimed: the job as it is (None: there is no such job)
    context: JobContext | None  # with a claimed job (None if its trigger is gone)
    # set by the dispatcher, not the store: the backend's launch of the claimed attempt, and
    # when (time.monotonic) the claim was made
    launched: Future[Any] | None = None
    claimed_at: float = 0.0


class JobStore(StoreBase):
    """Triggers and jobs: writing a trigger (with its job), claims, attempts, recovery."""

    # -- triggers and jobs ----------------------------------------------------------------------
    def create_trigger(self, nt: NewTrigger) -> Trigger | None:
        """Write a trigger, consume the group's pending events and queue its job, atomically.

        Returns None when the group's sequence moved on (another replica, or a stale decision):
        the caller re-reads and decides again. The trigger id is deterministic in (rule, group,
        sequence), so the primary key settles any race.
        """
        g, re_, j = t.rule_groups.c, t.rule_events.c, t.jobs.c
        seq = nt.expected_seq + 1
        tid = trigger_id(nt.rule, nt.group, seq)
        key = {"b_rule": nt.rule, "b_grp": nt.group}
        try:
            with self.write() as c:
                self._ensure_groups(c, [(nt.rule, nt.group)], nt.fired_at)
                res = self._q("trigger.seq", lambda: update(t.rule_groups).where(and_(
                    g.rule == bindparam("b_rule"), g.grp == bindparam("b_grp"),
                    g.seq == bindparam("b_expected"))).values(
                        seq=bindparam("b_seq"), last_trigger_at=bindparam("b_at", type_=TS),
                        sustained_count=0, sustained_since=None,
                        # every pending event is consumed just below, in this transaction
                        pending_count=0, pending_bytes=0, pending_first_at=None,
                        pending_last_at=None,
                        # a periodic floor's trigger also restarts the floor
                        last_floor_at=case((bindparam("b_floor", type_=Integer()) == 1,
                                            bindparam("b_at", type_=TS)),
                                           else_=g.last_floor_at))).run(
                    c, {**key, "b_expected": nt.expected_seq, "b_seq": seq, "b_at": nt.fired_at,
                        "b_floor": int(nt.kind == "floor")})
                if res.rowcount != 1:
                    return None
                consumed = self._q("trigger.consume", lambda: update(t.rule_events)
                                   .where(and_(re_.rule == bindparam("b_rule"),
                                               re_.grp == bindparam("b_grp"),
                                               re_.trigger_id.is_(None)))
                                   .values(trigger_id=bindparam("b_tid"))
                                   ).run(c, {**key, "b_tid": tid}).rowcount
                self._q("trigger.insert", lambda: insert(t.triggers)).run(c, dict(
                    id=tid, rule=nt.rule, grp=nt.group, seq=seq, fired_at=nt.fired_at,
                    reason=nt.reason, kind=nt.kind, manual=nt.kind == "manual",
                    events=consumed, params=nt.params, request_id=nt.request_id))
                status = JobStatus.CANCELLED if nt.skipped else JobStatus.QUEUED
                if nt.supersede is not None:
                    self._q("trigger.coalesce", lambda: update(t.jobs).where(and_(
                        j.rule == bindparam("b_rule"), j.grp == bindparam("b_grp"),
                        j.status == JobStatus.QUEUED)).values(
                        status=JobStatus.CANCELLED, finished_at=bindparam("b_at", type_=TS),
                        detail=bindparam("b_detail"))).run(
                        c, {**key, "b_at": nt.fired_at,
                            "b_detail": f"superseded by trigger {tid} ({nt.supersede})"})
                self._q("trigger.job", lambda: insert(t.jobs)).run(c, dict(
                    id=tid, trigger_id=tid, rule=nt.rule, grp=nt.group, backend=nt.backend,
                    status=status, attempts=0, max_attempts=nt.max_attempts,
                    created_at=nt.fired_at, detail=nt.skipped,
                    finished_at=nt.fired_at if status == JobStatus.CANCELLED else None))
        except IntegrityError:
            return None
        self._known_groups.add((nt.rule, nt.group))
        return Trigger(id=tid, rule=nt.rule, group=nt.group, seq=seq, fired_at=nt.fired_at,
                       reason=nt.reason, manual=nt.kind == "manual", events=consumed,
                       kind=nt.kind)

    def claim(self, job_id: str, owner: str, concurrency: Callable[[str], int],
              now: datetime, *, context: bool = True) -> Claim:
        """`claim_job` for the dispatcher, in one transaction: the claimed job with the context
        its backend needs (unless `context` is False: a simulation runs no backend), or (when
        not claimed) the job as found, so the caller can tell "not due yet / no free slot" from
        "gone"."""
        j = t.jobs.c
        by_id = self._q("job.by_id", lambda: select(t.jobs).where(j.id == bindparam("b_id")))
        with self.write() as c:
            row = by_id.run(c, {"b_id": job_id}).first()
            if row is None:
                return Claim(None, None, None)
            found = job_row(row)
            if row.status not in (JobStatus.QUEUED, JobStatus.RETRYING):
                return Claim(None, found, None)
            if row.next_attempt_at is not None and row.next_attempt_at > now:
                return Claim(None, found, None)
            if self.dialect == "postgresql":
                # Serialise the claims of one rule (released at commit): under READ COMMITTED
                # two replicas would otherwise both count no running job and both start one.
                c.execute(select(func.pg_advisory_xact_lock(
                    func.hashtext(f"triggerd.claim:{row.rule}"))))
            busy = self._q("claim.running", lambda: select(func.count())
                           .select_from(t.jobs).where(and_(
                               j.rule == bindparam("b_rule"),
                               j.status == JobStatus.RUNNING))
                           ).run(c, {"b_rule": row.rule}).scalar_one()
            if busy >= concurrency(row.rule):
                return Claim(None, found, None)
            res = self._q("claim.update", lambda: update(t.jobs).where(and_(
                j.id == bindparam("b_id"), j.status == bindparam("b_status"))).values(
                    status=JobStatus.RUNNING, owner=bindparam("b_owner"),
                    attempts=j.attempts + 1, next_attempt_at=None,
                    started_at=func.coalesce(j.started_at, bindparam(
                        "b_now", type_=TS)))).run(
                c, {"b_id": job_id, "b_status": row.status, "b_owner": owner, "b_now": now})
            if res.rowcount != 1:
                return Claim(None, found, None)
            self._q("claim.attempt", lambda: insert(t.job_attempts)).run(
                c, dict(job_id=job_id, n=row.attempts + 1, owner=owner, started_at=now))
            fresh = by_id.run(c, {"b_id": job_id}).one()
            found_context = self._trigger_context(c, job_id) if context else None
        return Claim(job_row(fresh), None, found_context)

    # -- writes under a claim: each is fenced by the claim it was made under --------------------
    def set_external_id(self, job_id: str, owner: str, attempt: int, external_id: str) -> bool:
        """Record the outside system's id for the running attempt; False (nothing written) if
        this claim no longer holds (see `holds`)."""
        with self.write() as c:
            res = c.execute(update(t.jobs).where(_held(job_id, owner, attempt))
                            .values(external_id=_no_nul(external_id)))
        return res.rowcount == 1

    def holds(self, job_id: str, owner: str, attempt: int) -> bool:
        """Whether the claim (`owner`, `attempt`) still holds: the job is running attempt
        `attempt` for `owner`. A daemon that was paused or cut off past the takeover cutoff
        finds it does not (another took the job over, and may have claimed it again)."""
        with self.read() as c:
            return c.execute(select(t.jobs.c.id).where(_held(job_id, owner, attempt))
                             ).first() is not None

    def finish_attempt(self, job_id: str, owner: str, status: JobStatus, now: datetime, *,
                       attempt: int, exit_code: int | None = None, detail: str | None = None,
                       external_id: str | None = None,
                       next_attempt_at: datetime | None = None) -> bool:
        """Record the outcome of attempt `attempt`, claimed by `owner`: a compare-and-set on
        the claim (status running, owner, attempt number) in the same statement, so the
        outcome of an attempt whose job was taken over (and perhaps claimed again, even by the
        same daemon) is never recorded. False, with nothing written, if the claim is gone."""
        j = t.jobs.c
        detail = _no_nul(detail) if detail is not None else None  # output, answers: anything
        values: dict[str, Any] = {"status": status, "exit_code": exit_code, "detail": detail,
                                  "next_attempt_at": next_attempt_at}
        if external_id is not None:
            values["external_id"] = _no_nul(external_id)
        if status.final:
            values["finished_at"] = now
        with self.write() as c:
            row = self._q("job.by_id", lambda: select(t.jobs).where(
                j.id == bindparam("b_id"))).run(c, {"b_id": job_id}).first()
            res = c.execute(update(t.jobs).where(_held(job_id, owner, attempt)).values(**values))
            if res.rowcount != 1 or row is None:
                return False
            a = t.job_attempts.c
            self._q("finish.attempt", lambda: update(t.job_attempts).where(and_(
                a.job_id == bindparam("b_id"), a.n == bindparam("b_n"))).values(
                    finished_at=bindparam("b_now"), outcome=bindparam("b_outcome"),
                    exit_code=bindparam("b_code"), detail=bindparam("b_detail"))).run(
                c, {"b_id": job_id, "b_n": attempt, "b_now": now, "b_outcome": status,
                    "b_code": exit_code, "b_detail": detail})
            if status == JobStatus.SUCCEEDED:
                # the periodic floor counts from the trigger whose job succeeded (its fired_at,
                # which is the job's created_at), never moving backwards
                g = t.rule_groups.c

                def success() -> Executable:
                    fired = bindparam("b_fired", type_=TS)
                    return update(t.rule_groups).where(and_(
                        g.rule == bindparam("b_rule"), g.grp == bindparam("b_grp"))).values(
                        last_success_at=case((or_(g.last_success_at.is_(None),
                                                  g.last_success_at < fired), fired),
                                             else_=g.last_success_at))
                self._q("finish.success", success).run(
                    c, {"b_rule": row.rule, "b_grp": row.grp, "b_fired": row.created_at})
        return True

    def recover_jobs(self, owner: str, stale_before: datetime, now: datetime, *,
                     exclusive: bool = False) -> list[Recovered]:
        """Jobs to (re)dispatch: queued and retrying ones, and running ones whose daemon is
        gone. Called at start-up and periodically, so a replica picks up the work of one that
        died. A daemon is gone when it stopped, when its heartbeat is older than
        `stale_before`, or — with `exclusive` (this daemon holds the SQLite lock, so no other
        can be alive) — whenever it is not `owner`. Running jobs of a gone daemon go back to
        `retrying`: the interrupted attempt is given back (the job's `max_attempts` grows by
        one), so a restart never fails a job the backend can resume or reattach to. A clean
        stop (SIGTERM: a deploy) always gives it back (outcome `stopped`); a crash (outcome
        `interrupted`) up to `MAX_INTERRUPTED` times: a job whose attempt takes its daemon
        down each time keeps its budget and fails when no attempt is left.
        Returns every queued and retrying job (replicas share them: whichever claims one
        first runs it), those this call took back from a gone daemon marked `taken_over`
        (on PostgreSQL exactly one replica's call takes a job back)."""
        j = t.jobs.c
        a = t.job_attempts.c
        d = t.daemons.c
        gone = or_(j.owner.is_(None), other_gone(j.owner, owner, stale_before, exclusive))
        with self.write() as c:
            orphans = c.execute(select(j.id, j.owner, j.attempts, j.max_attempts,
                                       d.stopped_at)
                                .select_from(t.jobs.outerjoin(t.daemons, d.id == j.owner))
                                .where(and_(j.status == JobStatus.RUNNING, gone))).all()
            taken = set()
            for job_id, held_by, attempts, max_attempts, stopped_at in orphans:
                detail = "interrupted: the daemon running it stopped"
                outcome = "stopped" if stopped_at is not None else "interrupted"
                earlier = c.execute(select(func.count()).select_from(t.job_attempts).where(
                    and_(a.job_id == job_id, a.outcome == "interrupted"))).scalar_one()
                if outcome == "stopped" or earlier < MAX_INTERRUPTED:
                    max_attempts += 1
                left = attempts < max_attempts
                # under the claim it was seen with: a replica that took it back and claimed
                # it again since (a new attempt) keeps it
                if not c.execute(update(t.jobs).where(_held(job_id, held_by, attempts)).values(
                        status=JobStatus.RETRYING if left else JobStatus.FAILED, owner=None,
                        max_attempts=max_attempts,
                        detail=detail + ("" if left else "; no attempts left"),
                        finished_at=None if left else now)).rowcount:
                    continue
                taken.add(job_id)
                c.execute(update(t.job_attempts).where(and_(
                    a.job_id == job_id, a.n == attempts, a.finished_at.is_(None)))
                    .values(finished_at=now, outcome=outcome, detail=detail))
            rows = c.execute(select(j.id, j.next_attempt_at).where(
                j.status.in_([JobStatus.QUEUED, JobStatus.RETRYING]))
                .order_by(j.created_at)).all()
        return [Recovered(r[0], r[1], r[0] in taken) for r in rows]

    def _trigger_context(self, c: Connection, job_id: str) -> JobContext | None:
        tr, ev, re_ = t.triggers.c, t.events.c, t.rule_events.c
        return _context(
            c, job_id,
            self._q("context.trigger", lambda: select(t.triggers).join(
                t.jobs, t.jobs.c.trigger_id == tr.id).where(t.jobs.c.id == bindparam("b_id"))),
            self._q("context.events", lambda: select(t.events).join(
                t.rule_events, re_.event_id == ev.id).where(re_.trigger_id == bindparam("b_tid"))
                .order_by(ev.observed_at, ev.id)))



class Recovered(NamedTuple):
    """A job `recover_jobs` found to dispatch: due at `not_before` (None: now);
    `taken_over` if that call gave it back from a gone daemon's running attempt."""

    job_id: str
    not_before: datetime | None
    taken_over: bool


def _context(c: Connection, job_id: str, q_trigger: Fast, q_events: Fast) -> JobContext | None:
    row = q_trigger.run(c, {"b_id": job_id}).first()
    if row is None:
        return None
    evs = q_events.run(c, {"b_tid": row.id}).all()
    trig = Trigger(id=row.id, rule=row.rule, group=row.grp, seq=row.seq,
                   fired_at=row.fired_at, reason=row.reason, manual=row.manual,
                   events=row.events, kind=row.kind)
    return JobContext(trig, [{"id": e.id, "source": e.source, "kind": e.kind,
                              "subject": e.subject, "fingerprint": e.fingerprint,
                              "observed_at": e.observed_at.isoformat(), "payload": e.payload}
                             for e in evs], dict(row.params or {}))


def _held(job_id: str, owner: str | None, attempt: int) -> Any:
    """The claim (`owner`, `attempt`) of a job, as a WHERE clause: running, that owner (None:
    none), that attempt (the fencing token: attempts only grow, a new claim always moves it on)."""
    j = t.jobs.c
    return and_(j.id == job_id, j.status == JobStatus.RUNNING, j.owner == owner,
                j.attempts == attempt)


def _no_nul(text: str) -> str:
    """PostgreSQL text cannot hold NUL: a command's output or a server's answer may."""
    return text.replace("\x00", "\\x00") if "\x00" in text else text


def job_row(r: Any) -> Job:
    return Job(id=r.id, trigger_id=r.trigger_id, rule=r.rule, group=r.grp, backend=r.backend,
               status=JobStatus(r.status), attempts=r.attempts, external_id=r.external_id,
               created_at=r.created_at, started_at=r.started_at, finished_at=r.finished_at,
               exit_code=r.exit_code, detail=r.detail, next_attempt_at=r.next_attempt_at,
               max_attempts=r.max_attempts)
