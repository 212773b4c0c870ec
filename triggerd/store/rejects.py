"""The `rejects` table: input a source could not turn into an event, kept for inspection.

A Kafka message that is not valid JSON or UTF-8, a tombstone, a value over `max_bytes`, or an
event a rule's `where` failed on is never allowed to stop its source: it is recorded here
(source, a reference such as `topic/partition/offset`, the kind of failure, the error and the
first bytes), counted in `triggerd status` and listed by `triggerd events --rejected`. A
source records its rejects *before* it acknowledges them (commits the offset), so a crash
records them again rather than losing them; (source, ref, kind) is unique, so that costs
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import desc, func, not_, or_, select

from triggerd.model import HEAD_CHARS, Reject
from triggerd.store import tables as t
from triggerd.store.runner import Runner, to_thread
from triggerd.store.sql import Store

__all__ = ["HEAD_CHARS", "Reject", "StoreRejectLog", "count_rejects",
           "list_rejects", "reject_row", "save_rejects"]

def reject_row(r: Reject) -> dict[str, Any]:
    return {"source": r.source, "ref": r.ref, "kind": r.kind, "error": r.error, "head": r.head,
            "at": r.at}


def save_rejects(store: Store, rejects: Sequence[Reject]) -> None:
    with store.write() as c:
        store.write_rejects(c, [reject_row(r) for r in rejects])


def count_rejects(store: Store) -> dict[str, dict[str, int]]:
    """{source: {kind: count}} over what retention kept."""
    r = t.rejects.c
    out: dict[str, dict[str, int]] = {}
    with store.read() as c:
        for source, kind, n in c.execute(select(r.source, r.kind, func.count())
                                         .group_by(r.source, r.kind)):
            out.setdefault(source, {})[kind] = int(n)
    return out


def list_rejects(store: Store, source: str | None = None, since: datetime | None = None,
                 limit: int = 50, rule: tuple[str, Sequence[str]] | None = None
                 ) -> list[Reject]:
    """Rejects, newest first. `rule` = (name, its sources): what the rule's sources could not
    turn into events, and what the rule itself failed on (`where`, `group_by`), not what
    other rules failed on."""
    r = t.rejects.c
    q = select(r.source, r.ref, r.kind, r.error, r.head, r.at)
    if source is not None:
        q = q.where(r.source == source)
    if rule is not None:
        name, sources = rule
        q = q.where(r.source.in_(list(sources)), or_(
            not_(r.error.startswith("rule ")), r.error.startswith(f"rule {name}: ",
                                                                   autoescape=True)))
    if since is not None:
        q = q.where(r.at >= since)
    with store.read() as c:
        return [Reject(*row) for row in c.execute(q.order_by(desc(r.at), desc(r.id))
                                                  .limit(limit))]


class StoreRejectLog:
    """`RejectLog` on a store, through the daemon's store thread (or `asyncio.to_thread`)."""

    def __init__(self, store: Store, runner: Runner | None = None) -> None:
        self.store = store
        self._run: Runner = runner if runner is not None else to_thread

    async def add(self, rejects: Sequence[Reject]) -> None:
        if not rejects:
            return
        rows = list(rejects)
        await self._run(lambda: save_rejects(self.store, rows))
