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
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

# one index probe per id whatever the table's statistics say: `id = ANY(ids)` is planned as a
# sequential scan while the table is small next to the batch (3x slower at 30,000 events)
_KNOWN = """
SELECT u.id FROM unnest(%b::varchar[]) AS u(id)
CROSS JOIN LATERAL (SELECT 1 FROM events e WHERE e.id = u.id LIMIT 1) AS stored
"""

# the events and their pending memberships in one statement: a membership goes in only with
# its event (one a replica stored first is a duplicate here, and so are its memberships)
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
    RETURNING id
), pending AS (
    INSERT INTO rule_events (rule, event_id, grp, size, observed_at)
    SELECT p.rule, p.event_id, p.grp, p.size, p.observed_at
    FROM unnest(%b::varchar[], %b::varchar[], %b::text[], %b::bigint[], %b::timestamptz[])
         AS p(rule, event_id, grp, size, observed_at)
    WHERE p.event_id IN (SELECT id FROM new)
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


def insert_events(c: Connection, rows: Sequence[dict[str, Any]],
                  pending: Sequence[dict[str, Any]]) -> set[str]:
    """Insert event rows (the columns of `tables.events`) and the pending memberships of
    those events (the columns of `tables.rule_events`, no trigger yet, sorted by key); the ids
    that were new (a replica may have inserted some of them first: their memberships are not
    inserted either)."""
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [], [], [], [], [], [])
    events, memberships = columns[:8], columns[8:]
    dumps = json.dumps
    for r in rows:
        for column, value in zip(events, (
                r["id"], r["source"], r["fingerprint"], r["kind"], r["subject"],
                dumps(r["payload"]), r["size"], r["observed_at"]), strict=True):
            column.append(value)
    for r in pending:
        for column, value in zip(memberships, (r["rule"], r["event_id"], r["grp"], r["size"],
                                               r["observed_at"]), strict=True):
            column.append(value)
    return {row[0] for row in c.exec_driver_sql(_EVENTS, columns)}


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
