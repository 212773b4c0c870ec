"""The nouns of triggerd: frozen dataclasses with no I/O.

An `Event` is one observation from a source; a `Trigger` is one decision of a rule to retrain;
a `Job` is the dispatch of a trigger to a backend. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

EVENT_KINDS = ("created", "modified", "moved", "deleted", "message", "tick", "manual")


def utcnow() -> datetime:
    return datetime.now(UTC)


def event_id(source: str, fingerprint: str) -> str:
    """The id of an event is its dedup key: a 128-bit hash of (source, fingerprint), so a
    duplicate has the same id and the store's primary key rejects it."""
    digest = hashlib.blake2b(f"{source}\0{fingerprint}".encode("utf-8", "surrogateescape"),
                             digest_size=16).hexdigest()
    return f"e{digest}"


def event_ref(event: Event) -> str:
    """Where an event came from, for logs and rejects: `topic/partition/offset` for a Kafka
    message, else the event id."""
    p = event.payload
    if "topic" in p and "partition" in p and "offset" in p:
        return f"{p['topic']}/{p['partition']}/{p['offset']}"
    return event.id


@dataclass(frozen=True, slots=True)
class Event:
    """One observation from a source.

    `fingerprint` is the dedup key within the source: an event whose (source, fingerprint) is
    already stored is a duplicate. `payload` is JSON-serialisable.
    """

    source: str
    kind: str
    subject: str
    fingerprint: str
    payload: dict[str, Any] = field(default_factory=dict)
    observed_at: datetime = field(default_factory=utcnow)
    id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", event_id(self.source, self.fingerprint))

    @property
    def size(self) -> int:
        size = self.payload.get("size", 0)
        return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "kind": self.kind,
            "subject": self.subject,
            "fingerprint": self.fingerprint,
            "observed_at": self.observed_at.isoformat(),
            "payload": self.payload,
        }


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING)


def trigger_id(rule: str, group: str, seq: int) -> str:
    """Deterministic trigger id: the n-th trigger of a rule (group) always has the same id.

    Replicas that decide the same trigger compute the same id, so the store's primary key lets
    exactly one of them write it. The id is also the backends' idempotency key, so it only uses
    characters every backend accepts (`[A-Za-z0-9._-]`).
    """
    if group:
        g = hashlib.blake2b(group.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()
        return f"{rule}.{g}.{seq}"
    return f"{rule}.{seq}"


@dataclass(frozen=True, slots=True)
class Trigger:
    id: str
    rule: str
    group: str
    seq: int
    fired_at: datetime
    reason: str
    manual: bool
    events: int
    kind: str = ""  # events | floor | schedule | manual ("" where not read)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "group": self.group,
            "fired_at": self.fired_at.isoformat(),
            "reason": self.reason,
            "events": self.events,
            "manual": self.manual,
            "kind": self.kind,
        }


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    trigger_id: str
    rule: str
    group: str
    backend: str
    status: JobStatus
    attempts: int
    external_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    detail: str | None
    next_attempt_at: datetime | None = None
    max_attempts: int | None = None  # the job's attempt budget (None: the rule's retry policy)

    def to_dict(self) -> dict[str, Any]:
        def iso(d: datetime | None) -> str | None:
            return d.isoformat() if d else None

        return {
            "id": self.id,
            "trigger_id": self.trigger_id,
            "rule": self.rule,
            "group": self.group,
            "backend": self.backend,
            "status": str(self.status),
            "attempts": self.attempts,
            "external_id": self.external_id,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "exit_code": self.exit_code,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class TriggerContext:
    """What every backend receives (docs/backends.md: the trigger context)."""

    trigger_id: str
    rule: str
    group: str
    fired_at: datetime
    reason: str
    manual: bool
    params: dict[str, Any]
    events: list[dict[str, Any]]
    attempt: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "trigger_id": self.trigger_id,
            "rule": self.rule,
            "group": self.group,
            "fired_at": self.fired_at.isoformat(),
            "reason": self.reason,
            "manual": self.manual,
            "params": self.params,
            "events": self.events,
        }


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """A successful attempt. `detail` is a short human text (e.g. the output tail)."""

    external_id: str | None = None
    exit_code: int | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """The pending (matched, new, not yet consumed) events of one rule group, summarised."""

    count: int = 0
    bytes: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class GroupState:
    """What the store remembers of one rule group between decisions."""

    rule: str
    group: str
    seq: int
    created_at: datetime
    last_trigger_at: datetime | None = None
    last_success_at: datetime | None = None
    last_floor_at: datetime | None = None
    sustained_count: int = 0
    sustained_since: datetime | None = None
    last_check_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RuleFlags:
    """Operator switches on a rule: `triggerd pause RULE [--for 2h]`."""

    paused: bool = False
    paused_until: datetime | None = None
    paused_reason: str | None = None

    def is_paused(self, now: datetime) -> bool:
        return self.paused and (self.paused_until is None or now < self.paused_until)


@dataclass(frozen=True, slots=True)
class FileRow:
    """One seen file. `path` is absolute; `fingerprint` is the event fingerprint emitted for it."""

    path: str
    inode: int
    size: int
    mtime_ns: int
    fingerprint: str
    seen_at: datetime | None = None  # stored; not loaded back (nothing in memory needs it)

    @property
    def sig(self) -> tuple[int, int, int]:
        """What a rescan compares: (size, mtime_ns, inode)."""
        return (self.size, self.mtime_ns, self.inode)


HEAD_CHARS = 200
"""How much of a rejected input is kept (escaped text), enough to recognise it."""


@dataclass(frozen=True, slots=True)
class Reject:
    source: str
    ref: str
    kind: str
    error: str
    head: str | None
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "ref": self.ref, "kind": self.kind, "error": self.error,
                "head": self.head, "at": self.at.isoformat()}


HEARTBEAT = timedelta(seconds=5)
"""How often a running daemon writes its heartbeat to the store."""
DEAD_AFTER = 3 * HEARTBEAT
"""A daemon silent this long is dead: the one definition the daemon (taking over a dead
replica's jobs and CLI requests) and the CLI (`status`: running or not) share."""


def dead_before(now: datetime) -> datetime:
    """A daemon whose last heartbeat is older than this is dead (if it did not stop first)."""
    return now - DEAD_AFTER


def daemon_alive(stopped_at: datetime | None, heartbeat_at: datetime | None,
                 now: datetime) -> bool:
    """Is the daemon with these store fields alive at `now`?"""
    return stopped_at is None and heartbeat_at is not None and heartbeat_at > dead_before(now)
