"""A store kept in Python dicts, for `triggerd replay`: the SQL store's writes and reads as
the engine and the simulator make them (`simstore.SimStore`), without SQL.

Why: a replay hands a month of arrivals to the daemon's own engine, and on SQLite each of its
store trips (a batch stored, a decision's read, a trigger written, a job claimed or ended)
costs 0.5-1.5 ms through SQLAlchemy: most of a replay's time (bench/RESULTS.md, "Replay").
Here a trip costs microseconds. The engine and its decisions are the daemon's, unchanged; only
what stands under them is another implementation, of a small interface (`EngineStore`).

What it keeps is what the SQL store's tables keep, as far as anything in a simulation reads it:
which events are stored (duplicates), each pending membership (`rule_events`) and the trigger
that consumed it, the groups' states and pending summaries, the rules' pause flags, the
triggers, the jobs, the scheduled slots, the rejects. Each method does what the SQL store's
statements do, in the same order: a trigger is a compare-and-set on its group's sequence that
consumes every pending event of the group; a group is created at the time of the batch that
first touches it; times are stored in UTC, as the SQL store reads them back; a read whose rows
the engine uses in order returns them in the order of the SQL store's key. Left out, as
nothing in a simulation reads them: the events' payloads, the sources' counters and
checkpoints, the rows of job attempts, daemons, CLI requests and files.

tests/simulate/test_dictstore.py runs random timelines of every policy through both stores and
compares what they fire, with which events; a method here must change with its SQL twin.
There are no transactions: a method either refuses before it changes anything or completes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from triggerd.model import (
    ACTIVE_JOB_STATUSES,
    Event,
    GroupState,
    Job,
    JobStatus,
    Pending,
    RuleFlags,
    Trigger,
    event_ref,
    trigger_id,
)
from triggerd.simulate.classified import Classified
from triggerd.store.sql import (
    Claim,
    Ingest,
    IngestResult,
    Key,
    NewTrigger,
    Snapshot,
    tally_pending,
)


def _utc(at: datetime) -> datetime:
    """A time as the SQL store reads it back: aware, in UTC."""
    if at.tzinfo is UTC:
        return at
    if at.tzinfo is None:
        raise ValueError("naive datetime given to the store")
    return at.astimezone(UTC)


def _by_key(item: tuple[Key, Any]) -> Key:
    return item[0]


_rule_and_event = itemgetter(0, 1)  # of a pending row (rule, event id, group, size, at)


def _utc_or_none(at: datetime | None) -> datetime | None:
    return None if at is None else _utc(at)


@dataclass(slots=True)
class _Member:
    """An event pending in a rule (a `rule_events` row): its group, when it was observed,
    and the trigger that consumed it (None while pending)."""

    group: str
    observed_at: datetime
    trigger: str | None = None


@dataclass(slots=True)
class _Job:
    """A `jobs` row."""

    id: str
    rule: str
    group: str
    backend: str
    status: JobStatus
    max_attempts: int
    created_at: datetime
    attempts: int = 0
    detail: str | None = None
    finished_at: datetime | None = None
    started_at: datetime | None = None
    next_attempt_at: datetime | None = None
    exit_code: int | None = None
    external_id: str | None = None
    owner: str | None = None

    def view(self) -> Job:
        return Job(id=self.id, trigger_id=self.id, rule=self.rule, group=self.group,
                   backend=self.backend, status=self.status, attempts=self.attempts,
                   external_id=self.external_id, created_at=self.created_at,
                   started_at=self.started_at, finished_at=self.finished_at,
                   exit_code=self.exit_code, detail=self.detail,
                   next_attempt_at=self.next_attempt_at, max_attempts=self.max_attempts)


class DictStore:
    """The state of one simulation (see the module docstring)."""

    def __init__(self) -> None:
        self._events: set[str] = set()  # ids of the events stored
        self._members: dict[tuple[str, str], _Member] = {}  # (rule, event id), in insert order
        self._waiting: dict[Key, list[str]] = {}  # per group: its pending events' ids
        self._consumed: dict[str, list[str]] = {}  # per trigger: its events' ids
        self._groups: dict[str, dict[str, GroupState]] = {}  # rule: group: state
        self._sums: dict[str, dict[str, Pending]] = {}  # rule: group: its pending events
        self._flags: dict[str, RuleFlags] = {}  # the `rules` rows
        self._requests: dict[tuple[int, str], str] = {}  # (CLI request, group): trigger id
        self._jobs: dict[str, _Job] = {}  # by id (a trigger's id)
        self._open: dict[Key, dict[str, None]] = {}  # per group: its jobs not yet final
        self._active: Counter[str] = Counter()  # per rule: queued, running, retrying jobs
        self._running: Counter[str] = Counter()
        self._slots: dict[tuple[str, datetime], datetime | None] = {}  # (key, slot): done at
        self._rejects: dict[tuple[str, str, str], str] = {}  # (source, ref, kind): error
        # what the replay's fast lane classified already, taken instead of classifying again
        self.classified: Classified | None = None

    def close(self) -> None:
        """Nothing to release (the store is garbage once its simulation is)."""

    # -- rules and groups -----------------------------------------------------------------------
    def ensure_rules(self, names: Iterable[str], ungrouped: Iterable[str],
                     now: datetime) -> None:
        for name in names:
            self._flags.setdefault(name, RuleFlags())
        self._ensure_groups([(r, "") for r in ungrouped], now)

    def _ensure_groups(self, keys: Iterable[Key], now: datetime) -> list[Key]:
        """Create the groups of `keys` that do not exist yet, at `now`; those created."""
        made = []
        for rule, grp in keys:
            groups = self._groups.setdefault(rule, {})
            if grp not in groups:
                groups[grp] = GroupState(rule=rule, group=grp, seq=0, created_at=_utc(now))
                made.append((rule, grp))
        return made

    def set_paused(self, rule: str, paused: bool, until: datetime | None, reason: str | None,
                   now: datetime) -> None:
        self._flags[rule] = RuleFlags(paused, _utc_or_none(until) if paused else None,
                                      reason if paused else None)

    def snapshot(self, rules: Iterable[str]) -> Snapshot:
        states: dict[Key, GroupState] = {}
        pending: dict[Key, Pending] = {}
        flags: dict[str, RuleFlags] = {}
        active: dict[str, int] = {}
        for rule in rules:
            for grp, state in self._groups.get(rule, {}).items():
                states[(rule, grp)] = state
            for grp, sums in self._sums.get(rule, {}).items():
                pending[(rule, grp)] = sums
            if rule in self._flags:
                flags[rule] = self._flags[rule]
            if self._active[rule]:
                active[rule] = self._active[rule]
        return Snapshot(states, pending, flags, active)

    def group_states(self, rules: Iterable[str] | None = None) -> dict[Key, GroupState]:
        """In key order (as the SQL store reads a few rules' groups: along its key)."""
        names = self._groups if rules is None else rules
        return dict(sorted((((r, g), s) for r in names for g, s in self._groups.get(r, {}).items()),
                           key=_by_key))

    def pending(self, rules: Iterable[str] | None = None) -> dict[Key, Pending]:
        """In key order (as the SQL store reads a few rules' groups: along its key; a manual
        fire takes a rule's groups in this order)."""
        names = self._sums if rules is None else rules
        return dict(sorted((((r, g), p) for r in names for g, p in self._sums.get(r, {}).items()),
                           key=_by_key))

    def rule_keys(self, rule: str) -> set[Key]:
        return {(rule, grp) for grp in self._groups.get(rule, {})}

    # -- events ---------------------------------------------------------------------------------
    def ingest(self, source: str, source_type: str, events: Sequence[Event], now: datetime,
               classify: Callable[[Sequence[Event]], list[Ingest]] | None = None,
               also: Callable[[Any], None] | None = None,
               rules: Collection[str] = ()) -> IngestResult:
        """`IngestStore.ingest`, step by step. `also` (work in the SQL transaction) cannot be
        done here: a simulation has none."""
        if also is not None:
            raise ValueError("the dict store runs no SQL: `also` is not supported")
        result = IngestResult()
        if not events:
            return result
        unique: dict[str, Event] = {}
        for ev in events:
            unique.setdefault(ev.id, ev)
        known = self._events
        fresh = [ev for eid, ev in unique.items() if eid not in known]
        items = ([Ingest(ev) for ev in fresh] if classify is None else
                 self.classified.take(classify, fresh) if self.classified is not None else
                 classify(fresh))
        rows: list[tuple[str, str, str, int, datetime]] = []  # rule, event id, group, size, at
        streaks: list[tuple[str, str, bool, datetime]] = []
        for item in items:
            ev = item.event
            eid = ev.id
            known.add(eid)
            result.new.append(eid)
            at, size = _utc(ev.observed_at), ev.size
            for rule, grp in item.pending:
                rows.append((rule, eid, grp, size, at))
                result.touched.add((rule, grp))
            for rule, grp, matched in item.streak:
                streaks.append((rule, grp, matched, at))
                result.touched.add((rule, grp))
        result.duplicates = len(events) - len(items)
        if result.duplicates and rules:
            # a batch retried after an ambiguous commit: its groups are decided again
            new = set(result.new)
            for eid in unique:
                if eid in new:
                    continue
                for rule in rules:
                    member = self._members.get((rule, eid))
                    if member is not None and member.trigger is None:
                        result.touched.add((rule, member.group))
        self._ensure_groups(result.touched, now)
        if rows:
            rows.sort(key=_rule_and_event)
            self._add_pending(rows)
        if streaks:
            self._update_streaks(streaks)
        for item in items:
            for rule, message in item.errors:
                kind = message.partition(":")[0]
                self._rejects.setdefault((item.event.source, event_ref(item.event)[:400], kind),
                                         f"rule {rule}: {message}"[:2000])
        return result

    def _add_pending(self, rows: list[tuple[str, str, str, int, datetime]]) -> None:
        """New pending memberships, and their groups' summaries (`IngestStore._add_pending`:
        a membership already there is kept, and counted all the same)."""
        sums: dict[Key, list[Any]] = {}  # count, bytes, first, last
        members, waiting = self._members, self._waiting
        for rule, eid, grp, size, at in rows:
            key, member = (rule, grp), (rule, eid)
            if member not in members:
                members[member] = _Member(grp, at)
                waiting.setdefault(key, []).append(eid)
            tally_pending(sums, key, size, at)
        for (rule, grp), (n, size, first, last) in sums.items():
            by_group = self._sums.setdefault(rule, {})
            p = by_group.get(grp) or Pending()
            by_group[grp] = Pending(
                p.count + n, p.bytes + size,
                first if p.first_at is None or p.first_at > first else p.first_at,
                last if p.last_at is None or p.last_at < last else p.last_at)

    def _update_streaks(self, streaks: list[tuple[str, str, bool, datetime]]) -> None:
        """`IngestStore._update_streaks`: per group, the streak set to the batch's last run of
        matches (after a non-match) or extended by it (matches only)."""
        runs: dict[Key, tuple[bool, int, datetime | None]] = {}  # reset?, run, run start
        for rule, grp, matched, at in streaks:
            reset, n, since = runs.get((rule, grp), (False, 0, None))
            runs[(rule, grp)] = (reset, n + 1, since or at) if matched else (True, 0, None)
        for (rule, grp), (reset, n, since) in runs.items():
            state = self._groups[rule][grp]
            self._groups[rule][grp] = replace(
                state, sustained_count=n, sustained_since=since) if reset else replace(
                state, sustained_count=state.sustained_count + n,
                sustained_since=state.sustained_since or since)

    # -- triggers and jobs ----------------------------------------------------------------------
    def create_trigger(self, nt: NewTrigger) -> Trigger | None:
        """`JobStore.create_trigger`: None if the group's sequence moved on, or if the trigger
        breaks a unique key (its id, or its CLI request's) and nothing is written."""
        made = self._ensure_groups([(nt.rule, nt.group)], nt.fired_at)
        state = self._groups[nt.rule][nt.group]
        if state.seq != nt.expected_seq:
            return None
        seq = nt.expected_seq + 1
        tid = trigger_id(nt.rule, nt.group, seq)
        if tid in self._jobs or (nt.request_id, nt.group) in self._requests:
            for rule, grp in made:  # the SQL transaction is rolled back: its group too
                del self._groups[rule][grp]
            return None
        fired = _utc(nt.fired_at)
        self._groups[nt.rule][nt.group] = replace(
            state, seq=seq, last_trigger_at=fired, sustained_count=0, sustained_since=None,
            last_floor_at=fired if nt.kind == "floor" else state.last_floor_at)
        self._sums.get(nt.rule, {}).pop(nt.group, None)
        consumed = self._waiting.pop((nt.rule, nt.group), [])
        for eid in consumed:
            self._members[(nt.rule, eid)].trigger = tid
        self._consumed[tid] = consumed
        if nt.request_id is not None:
            self._requests[(nt.request_id, nt.group)] = tid
        if nt.supersede is not None:
            for job_id in list(self._open.get((nt.rule, nt.group), {})):
                job = self._jobs[job_id]
                if job.status == JobStatus.QUEUED:
                    self._set_status(job, JobStatus.CANCELLED)
                    job.finished_at = fired
                    job.detail = f"superseded by trigger {tid} ({nt.supersede})"
        status = JobStatus.CANCELLED if nt.skipped else JobStatus.QUEUED
        job = _Job(tid, nt.rule, nt.group, nt.backend, status, nt.max_attempts, fired,
                   detail=nt.skipped, finished_at=fired if status == JobStatus.CANCELLED
                   else None)
        self._jobs[tid] = job
        self._count(job, 1)
        return Trigger(id=tid, rule=nt.rule, group=nt.group, seq=seq, fired_at=nt.fired_at,
                       reason=nt.reason, manual=nt.kind == "manual", events=len(consumed),
                       kind=nt.kind)

    def triggers_of_request(self, request_id: int) -> list[str]:
        return sorted(tid for (rid, _g), tid in self._requests.items() if rid == request_id)

    def _set_status(self, job: _Job, status: JobStatus) -> None:
        self._count(job, -1)
        job.status = status
        self._count(job, 1)

    def _count(self, job: _Job, step: int) -> None:
        """Keep the per-rule counts of active and running jobs, and each group's open jobs."""
        if job.status in ACTIVE_JOB_STATUSES:
            self._active[job.rule] += step
            group = self._open.setdefault((job.rule, job.group), {})
            if step > 0:
                group[job.id] = None
            else:
                group.pop(job.id, None)
        if job.status == JobStatus.RUNNING:
            self._running[job.rule] += step

    def claim(self, job_id: str, owner: str, concurrency: Callable[[str], int],
              now: datetime, *, context: bool = True) -> Claim:
        """`JobStore.claim`, without the context a backend needs (no backend runs)."""
        if context:
            raise ValueError("the dict store keeps no payloads: claim with context=False")
        job = self._jobs.get(job_id)
        if job is None:
            return Claim(None, None, None)
        found = job.view()
        if job.status not in (JobStatus.QUEUED, JobStatus.RETRYING):
            return Claim(None, found, None)
        if job.next_attempt_at is not None and job.next_attempt_at > now:
            return Claim(None, found, None)
        if self._running[job.rule] >= concurrency(job.rule):
            return Claim(None, found, None)
        self._set_status(job, JobStatus.RUNNING)
        job.owner = owner
        job.attempts += 1
        job.next_attempt_at = None
        job.started_at = job.started_at or _utc(now)
        return Claim(job.view(), None, None)

    def finish_attempt(self, job_id: str, owner: str, status: JobStatus, now: datetime, *,
                       attempt: int, exit_code: int | None = None, detail: str | None = None,
                       external_id: str | None = None,
                       next_attempt_at: datetime | None = None) -> bool:
        """`JobStore.finish_attempt`: False, with nothing written, unless the claim holds."""
        job = self._jobs.get(job_id)
        if job is None or job.status != JobStatus.RUNNING or job.owner != owner or \
                job.attempts != attempt:
            return False
        self._set_status(job, status)
        job.exit_code = exit_code
        job.detail = detail
        job.next_attempt_at = _utc_or_none(next_attempt_at)
        if external_id is not None:
            job.external_id = external_id
        if status.final:
            job.finished_at = _utc(now)
        if status == JobStatus.SUCCEEDED:  # the floor counts from the trigger (created_at)
            groups = self._groups.get(job.rule, {})
            state = groups.get(job.group)
            if state is not None and (state.last_success_at is None or
                                      state.last_success_at < job.created_at):
                groups[job.group] = replace(state, last_success_at=job.created_at)
        return True

    # -- scheduled slots ------------------------------------------------------------------------
    def claim_slot(self, key: str, slot_at: datetime, now: datetime) -> bool:
        slot = (key, _utc(slot_at))
        if slot in self._slots:
            return False
        self._slots[slot] = None
        return True

    def finish_slot(self, key: str, slot_at: datetime, now: datetime) -> None:
        slot = (key, _utc(slot_at))
        if slot in self._slots:
            self._slots[slot] = _utc(now)

    def last_slot(self, key: str) -> datetime | None:
        return max((at for k, at in self._slots if k == key), default=None)

    def unfinished_slot(self, key: str) -> datetime | None:
        last = self.last_slot(key)
        return last if last is not None and self._slots[(key, last)] is None else None

    # -- what a simulation reads at its end -----------------------------------------------------
    def memberships(self) -> dict[str, list[str]]:
        return {tid: list(ids) for tid, ids in self._consumed.items() if ids}

    def job_statuses(self) -> dict[str, str]:
        return {job.id: str(job.status) for job in self._jobs.values()}

    def pending_times(self) -> dict[str, list[datetime]]:
        out: dict[str, list[datetime]] = {}
        for (rule, _eid), member in self._members.items():
            if member.trigger is None:
                out.setdefault(rule, []).append(member.observed_at)
        return out

    def reject_errors(self) -> list[str]:
        return list(self._rejects.values())
