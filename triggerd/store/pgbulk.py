"""The ingest hot path on PostgreSQL: a batch's rows as array parameters, one statement each.

A batch of events becomes a few statements whatever its size: the duplicate check (an index
probe per id); the events' insert with their pending memberships and their groups' pending
summaries (rows locked in key order, then updated), one statement; and, for duplicates,
where they are still pending. Each is fed whole columns as arrays (`unnest`), sent in
psycopg's binary format (`%b`: dumping arrays as text escapes every element in Python, ~15
times slower). Per-row statements cost more than the database's own work (bench/RESULTS.md,
"PostgreSQL ingest"). The SQL runs through `Connection.exec_driver_sql`, so errors and
connection invalidation are SQLAlchemy's as everywhere else. Values are converted as the
tables' types would: payloads as JSON text, timestamps as aware datetimes.

Rows go in sorted by their keys (the caller sorts them, `ORDER BY` keeps it): replicas
inserting overlapping batches lock the same keys in the same order and cannot deadlock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Connection

if TYPE_CHECKING:
    from triggerd.store.ingest import Ingest

# one index probe per id whatever the table's statistics say: `id = ANY(ids)` is planned as a
# sequential scan while the table is small next to the batch (3x slower at 30,000 events)
_KNOWN = """
SELECT u.id FROM unnest(%b::varchar[]) AS u(id)
CROSS JOIN LATERAL (SELECT 1 FROM events e WHERE e.id = u.id LIMIT 1) AS stored
"""

# A batch in one statement: the events, their pending memberships (only with their event:
# one a replica stored first is a duplicate here, and so are its memberships; they take the
# event's size and observed_at from its inserted row) and the groups' pending summaries,
# added from the memberships inserted. Lock order: the events and memberships are all
# inserted before any group row is locked (the aggregate and the sort consume all their
# input first), then the groups' rows are locked in key order (`locked`); the update meets
# only rows `locked` holds already. The groups' rows exist (`_ensure_groups`, earlier).
_EVENTS = """
WITH new AS (
    INSERT INTO events (id, source, fingerprint, kind, subject, payload, size, observed_at)
    SELECT u.id, u.source, u.fingerprint, u.kind, u.subject, u.payload::json, u.size,
           u.observed_at
    FROM unnest(%b::varchar[], %b::varchar[], %b::text[], %b::varchar[], %b::text[],
                %b::text[], %b::bigint[], %b::timestamptz[])
         AS u(id, source, fingerprint, kind, subject, payload, size, observed_at)
    ORDER BY u.id
    ON CONFLICT DO NOTHING
    RETURNING id, size, observed_at
), pending AS (
    INSERT INTO rule_events (rule, event_id, grp, size, observed_at)
    SELECT p.rule, p.event_id, p.grp, n.size, n.observed_at
    FROM unnest(%b::varchar[], %b::varchar[], %b::text[]) AS p(rule, event_id, grp)
    JOIN new n ON n.id = p.event_id
    ORDER BY p.rule, p.event_id
    ON CONFLICT DO NOTHING
    RETURNING rule, grp, size, observed_at
), sums AS (
    SELECT rule, grp, count(*) AS n, sum(size)::bigint AS bytes, min(observed_at) AS first,
           max(observed_at) AS last
    FROM pending GROUP BY rule, grp
), locked AS MATERIALIZED (
    SELECT g.rule, g.grp FROM rule_groups g JOIN sums s ON g.rule = s.rule AND g.grp = s.grp
    ORDER BY g.rule, g.grp
    FOR UPDATE OF g
), added AS (
    UPDATE rule_groups g SET
        pending_count = g.pending_count + s.n,
        pending_bytes = g.pending_bytes + s.bytes,
        pending_first_at = CASE WHEN g.pending_first_at IS NULL OR g.pending_first_at > s.first
                                THEN s.first ELSE g.pending_first_at END,
        pending_last_at = CASE WHEN g.pending_last_at IS NULL OR g.pending_last_at < s.last
                               THEN s.last ELSE g.pending_last_at END
    FROM sums s JOIN locked l ON l.rule = s.rule AND l.grp = s.grp
    WHERE g.rule = s.rule AND g.grp = s.grp
)
SELECT id FROM new
"""

_PENDING_KEYS = """
SELECT DISTINCT rule, grp FROM rule_events
WHERE rule = ANY(%b::varchar[]) AND event_id = ANY(%b::varchar[]) AND trigger_id IS NULL
"""

def known_ids(c: Connection, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are stored events already."""
    return set(c.exec_driver_sql(_KNOWN, (list(ids),)).scalars().all())


def insert_events(c: Connection, items: Mapping[str, Ingest]) -> set[str]:
    """Insert the events of `items` (by event id) and their pending memberships (no trigger
    yet), and add those to their groups' pending summaries (the groups' rows must exist);
    the ids that were new (a replica may have inserted some of them first: their
    memberships are not inserted, nor counted, either)."""
    order = sorted(items)  # key order, see the module docstring
    events = [items[eid].event for eid in order]
    dumps = json.dumps
    members = sorted((rule, eid, grp) for eid in order for rule, grp in items[eid].pending)
    rules, event_ids, groups = (list(col) for col in zip(*members, strict=True)) \
        if members else ([], [], [])
    return set(c.exec_driver_sql(_EVENTS, (
        order, [e.source for e in events], [e.fingerprint for e in events],
        [e.kind for e in events], [e.subject for e in events],
        [dumps(e.payload) for e in events], [e.size for e in events],
        [e.observed_at for e in events], rules, event_ids, groups)).scalars().all())


def pending_keys(c: Connection, rules: Sequence[str], ids: Sequence[str]) -> set[tuple[str, str]]:
    """The (rule, group) pairs of `rules` in which any of the events `ids` is still pending."""
    return {(r, g) for r, g in c.exec_driver_sql(_PENDING_KEYS, (list(rules), list(ids)))}
