"""The store a simulation runs on: `SimStore`, what the engine asks of a store
(`EngineStore`) plus what the simulator itself does and reads.

Two stores are one: the daemon's SQL store on an in-memory SQLite database (`memstore`:
`triggerd test`) and a store in Python dicts (`dictstore`: `triggerd replay`, where a month
of store trips through SQLite took most of the time). The simulator writes what the daemon's
other parts would (a pause, a job's claim and end) and, at the end, reads what the run did:
which events each trigger consumed, each job's final status, the events still pending, the
events a rule rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from triggerd.model import JobStatus
from triggerd.store.contract import EngineStore
from triggerd.store.sql import Claim


class SimStore(EngineStore, Protocol):
    """`EngineStore`, and the simulator's writes and reads."""

    def set_paused(self, rule: str, paused: bool, until: datetime | None, reason: str | None,
                   now: datetime) -> None: ...

    def claim(self, job_id: str, owner: str, concurrency: Callable[[str], int],
              now: datetime, *, context: bool = True) -> Claim: ...

    def finish_attempt(self, job_id: str, owner: str, status: JobStatus, now: datetime, *,
                       attempt: int, exit_code: int | None = None, detail: str | None = None,
                       external_id: str | None = None,
                       next_attempt_at: datetime | None = None) -> bool: ...

    def memberships(self) -> dict[str, list[str]]:
        """The ids of the events each trigger consumed (by trigger id), in no set order."""
        ...

    def job_statuses(self) -> dict[str, str]:
        """Each trigger's job status (by trigger id)."""
        ...

    def pending_times(self) -> dict[str, list[datetime]]:
        """Per rule, when each event still pending (consumed by no trigger) was observed."""
        ...

    def reject_errors(self) -> list[str]:
        """The error of each reject recorded (a rule's `where` or `group_by` that failed)."""
        ...

    def close(self) -> None: ...
