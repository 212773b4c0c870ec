"""The ingest hot path on PostgreSQL: a batch's rows as array parameters, one statement each.

A batch of events becomes a few statements whatever its size: the duplicate check
(`id = ANY(ids)`), the events' insert, the pending memberships' insert, the groups' pending
summaries (lock, then one UPDATE) and, for duplicates, where they are still pending. Each is
fed whole columns as arrays (`unnest`), sent in psycopg's binary format (`%b`: dumping arrays
as text escapes every element in Python, ~15 times slower). Per-row statements cost more
than the database's own work (bench/RESULTS.md, "PostgreSQL ingest"). The SQL runs through
`Connection.exec_driver_sql`, so errors and connection invalidation are SQLAlchemy's as
everywhere else. Values are converted as the tables' types would: payloads as JSON text,
timestamps as aware datetimes.

Rows go in sorted by their keys (the caller sorts them, `ORDER BY` keeps it): replicas
inserting overlapping batches lock the same keys in the same order and cannot deadlock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

_KNOWN = "SELECT id FROM events WHERE id = ANY(%b::varchar[])"

_EVENTS = """
INSERT INTO events (id, source, fingerprint, kind, subject, payload, size, observed_at)
SELECT u.id, u.source, u.fingerprint, u.kind, u.subject, u.payload::json, u.size, u.observed_at
FROM unnest(%b::varchar[], %b::varchar[], %b::text[], %b::varchar[], %b::text[], %b::text[],
            %b::bigint[], %b::timestamptz[])
     AS u(id, source, fingerprint, kind, subject, payload, size, observed_at)
ORDER BY u.id
ON CONFLICT DO NOTHING
RETURNING id
"""

_RULE_EVENTS = """
INSERT INTO rule_events (rule, event_id, grp, size, observed_at)
SELECT u.rule, u.event_id, u.grp, u.size, u.observed_at
FROM unnest(%b::varchar[], %b::varchar[], %b::text[], %b::bigint[], %b::timestamptz[])
     AS u(rule, event_id, grp, size, observed_at)
ORDER BY u.rule, u.event_id
ON CONFLICT DO NOTHING
"""


_PENDING_KEYS = """
SELECT DISTINCT rule, grp FROM rule_events
WHERE rule = ANY(%b::varchar[]) AND event_id = ANY(%b::varchar[]) AND trigger_id IS NULL
"""

# the groups' rows locked in key order before they are updated (see the module docstring)
_LOCK_GROUPS = """
SELECT 1 FROM rule_groups g
JOIN unnest(%b::varchar[], %b::text[]) AS u(rule, grp) ON g.rule = u.rule AND g.grp = u.grp
ORDER BY g.rule, g.grp
FOR UPDATE OF g
"""

_ADD_PENDING = """
UPDATE rule_groups g SET
    pending_count = g.pending_count + u.n,
    pending_bytes = g.pending_bytes + u.bytes,
    pending_first_at = CASE WHEN g.pending_first_at IS NULL OR g.pending_first_at > u.first
                            THEN u.first ELSE g.pending_first_at END,
    pending_last_at = CASE WHEN g.pending_last_at IS NULL OR g.pending_last_at < u.last
                           THEN u.last ELSE g.pending_last_at END
FROM unnest(%b::varchar[], %b::text[], %b::bigint[], %b::bigint[], %b::timestamptz[],
            %b::timestamptz[]) AS u(rule, grp, n, bytes, first, last)
WHERE g.rule = u.rule AND g.grp = u.grp
"""


def known_ids(c: Connection, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are stored events already."""
    return {row[0] for row in c.exec_driver_sql(_KNOWN, (list(ids),))}


def insert_events(c: Connection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert event rows (the columns of `tables.events`); the ids that were new (a replica
    may have inserted some of them first)."""
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [])
    for r in rows:
        for column, value in zip(columns, (
                r["id"], r["source"], r["fingerprint"], r["kind"], r["subject"],
                json.dumps(r["payload"]), r["size"], r["observed_at"]), strict=True):
            column.append(value)
    return {row[0] for row in c.exec_driver_sql(_EVENTS, columns)}


def insert_rule_events(c: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert pending memberships (the columns of `tables.rule_events`, no trigger yet)."""
    columns: tuple[list[Any], ...] = ([], [], [], [], [])
    for r in rows:
        for column, value in zip(columns, (r["rule"], r["event_id"], r["grp"], r["size"],
                                           r["observed_at"]), strict=True):
            column.append(value)
    c.exec_driver_sql(_RULE_EVENTS, columns)


def pending_keys(c: Connection, rules: Sequence[str], ids: Sequence[str]) -> set[tuple[str, str]]:
    """The (rule, group) pairs of `rules` in which any of the events `ids` is still pending."""
    return {(r, g) for r, g in c.exec_driver_sql(_PENDING_KEYS, (list(rules), list(ids)))}


def add_pending(c: Connection, sums: Sequence[tuple[tuple[str, str], list[Any]]]) -> None:
    """Add to the groups' pending summaries: `sums` are ((rule, group), [count, bytes,
    first, last]) sorted by key. The rows are locked in that order first, then updated by
    one statement computed by the database (an addition racing another is never lost)."""
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
    for (rule, grp), (n, size, first, last) in sums:
        for column, value in zip(columns, (rule, grp, n, size, first, last), strict=True):
            column.append(value)
    c.exec_driver_sql(_LOCK_GROUPS, columns[:2])
    c.exec_driver_sql(_ADD_PENDING, columns)
