"""The ingest hot path on PostgreSQL: a batch's rows as array parameters, one statement each.

A batch of events becomes a few statements whatever its size: the duplicate check (an index
probe per id), the events' insert with their pending memberships, the groups' pending
summaries (rows locked in key order, then updated) and, for duplicates, where they are still
pending. Each is fed whole columns as arrays (`unnest`), sent in psycopg's binary format
(`%b`: dumping arrays as text escapes every element in Python, ~15 times slower). Per-row
statements cost more than the database's own work (bench/RESULTS.md, "PostgreSQL ingest").
The SQL runs through `Connection.exec_driver_sql`, so errors and connection invalidation are
SQLAlchemy's as everywhere else. Values are converted as the tables' types would: payloads
as JSON text, timestamps as aware datetimes.

Rows go in sorted by their keys (the caller sorts them, `ORDER BY` keeps it): replicas
inserting overlapping batches lock the same keys in the same order and cannot deadlock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

if TYPE_CHECKING:
    from triggerd.store.ingest import Ingest

# one index probe per id whatever the table's statistics say: `id = ANY(ids)` is planned as a
# sequential scan while the table is small next to the batch (3x slower at 30,000 events)
_KNOWN = """
SELECT u.id FROM unnest(%b::varchar[]) AS u(id)
CROSS JOIN LATERAL (SELECT 1 FROM events e WHERE e.id = u.id LIMIT 1) AS stored
"""

# the events and their pending memberships in one statement: a membership goes in only with
# its event (one a replica stored first is a duplicate here, and so are its memberships), and
# takes the event's size and observed_at from the inserted row
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
)
SELECT id FROM new
"""

_PENDING_KEYS = """
SELECT DISTINCT rule, grp FROM rule_events
WHERE rule = ANY(%b::varchar[]) AND event_id = ANY(%b::varchar[]) AND trigger_id IS NULL
"""

# the groups' rows locked in key order (`locked`, see the module docstring), then updated by
# the same statement: the update only meets rows `locked` holds already, so every lock it
# waits for is taken in key order whatever the plan
_ADD_PENDING = """
WITH u AS (
    SELECT * FROM unnest(%b::varchar[], %b::text[], %b::bigint[], %b::bigint[],
                         %b::timestamptz[], %b::timestamptz[])
         AS u(rule, grp, n, bytes, first, last)
), locked AS MATERIALIZED (
    SELECT g.rule, g.grp FROM rule_groups g JOIN u ON g.rule = u.rule AND g.grp = u.grp
    ORDER BY g.rule, g.grp
    FOR UPDATE OF g
)
UPDATE rule_groups g SET
    pending_count = g.pending_count + u.n,
    pending_bytes = g.pending_bytes + u.bytes,
    pending_first_at = CASE WHEN g.pending_first_at IS NULL OR g.pending_first_at > u.first
                            THEN u.first ELSE g.pending_first_at END,
    pending_last_at = CASE WHEN g.pending_last_at IS NULL OR g.pending_last_at < u.last
                           THEN u.last ELSE g.pending_last_at END
FROM u JOIN locked l ON l.rule = u.rule AND l.grp = u.grp
WHERE g.rule = u.rule AND g.grp = u.grp
"""


def known_ids(c: Connection, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are stored events already."""
    return {row[0] for row in c.exec_driver_sql(_KNOWN, (list(ids),))}


def insert_events(c: Connection, items: Mapping[str, Ingest]) -> set[str]:
    """Insert the events of `items` (by event id) and their pending memberships (no trigger
    yet); the ids that were new (a replica may have inserted some of them first: their
    memberships are not inserted either)."""
    order = sorted(items)  # key order, see the module docstring
    events = [items[eid].event for eid in order]
    dumps = json.dumps
    members = sorted((rule, eid, grp) for eid in order for rule, grp in items[eid].pending)
    rules, event_ids, groups = (list(col) for col in zip(*members, strict=True)) \
        if members else ([], [], [])
    return {row[0] for row in c.exec_driver_sql(_EVENTS, (
        order, [e.source for e in events], [e.fingerprint for e in events],
        [e.kind for e in events], [e.subject for e in events],
        [dumps(e.payload) for e in events], [e.size for e in events],
        [e.observed_at for e in events], rules, event_ids, groups))}


def pending_keys(c: Connection, rules: Sequence[str], ids: Sequence[str]) -> set[tuple[str, str]]:
    """The (rule, group) pairs of `rules` in which any of the events `ids` is still pending."""
    return {(r, g) for r, g in c.exec_driver_sql(_PENDING_KEYS, (list(rules), list(ids)))}


def add_pending(c: Connection, sums: Sequence[tuple[tuple[str, str], list[Any]]]) -> None:
    """Add to the groups' pending summaries: `sums` are ((rule, group), [count, bytes,
    first, last]) sorted by key. One statement locks the rows in that order, then updates
    them computed by the database (an addition racing another is never lost)."""
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
    for (rule, grp), (n, size, first, last) in sums:
        for column, value in zip(columns, (rule, grp, n, size, first, last), strict=True):
            column.append(value)
    c.exec_driver_sql(_ADD_PENDING, columns)
