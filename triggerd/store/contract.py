"""What the engine asks of a store: `EngineStore`, the part of `Store` it calls.

The daemon's engine (`triggerd.engine`) runs on the SQL store (`triggerd.store.sql.Store`). A
replay runs the same engine on a store kept in Python dicts (`triggerd.simulate.dictstore`),
because a month of arrivals through SQLite takes tens of seconds. This protocol is the whole
interface between the two sides, so that the engine is typed against what it uses and
nothing else: a method the engine starts to call must be added here, and then to the dict
store, whose equivalence with this one tests/simulate checks on random timelines.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from triggerd.model import Event, GroupState, Pending, Trigger
from triggerd.store.base import Key
from triggerd.store.groups import Snapshot
from triggerd.store.ingest import Ingest, IngestResult
from triggerd.store.jobs import NewTrigger


class EngineStore(Protocol):
    """The store's methods the engine calls (see `Store` for what each one does)."""

    def ensure_rules(self, names: Iterable[str], ungrouped: Iterable[str],
                     now: datetime) -> None: ...

    def ingest(self, source: str, source_type: str, events: Sequence[Event], now: datetime,
               classify: Callable[[Sequence[Event]], list[Ingest]] | None = None,
               also: Callable[[Any], None] | None = None,
               rules: Collection[str] = ()) -> IngestResult: ...

    def snapshot(self, rules: Iterable[str]) -> Snapshot: ...

    def rule_keys(self, rule: str) -> set[Key]: ...

    def group_states(self, rules: Iterable[str] | None = None) -> dict[Key, GroupState]: ...

    def pending(self, rules: Iterable[str] | None = None) -> dict[Key, Pending]: ...

    def create_trigger(self, nt: NewTrigger) -> Trigger | None: ...

    def triggers_of_request(self, request_id: int) -> list[str]: ...

    def claim_slot(self, key: str, slot_at: datetime, now: datetime) -> bool: ...

    def finish_slot(self, key: str, slot_at: datetime, now: datetime) -> None: ...

    def last_slot(self, key: str) -> datetime | None: ...

    def unfinished_slot(self, key: str) -> datetime | None: ...
