"""Table definitions (SQLAlchemy Core). Migrations in `migrations/` must match these.

Correctness rests on keys, never on locks:
- `events.id` is the unique (source, fingerprint) key: a 128-bit hash of the pair
  (`triggerd.model.event_id`), so a duplicate event is a no-op insert. One hashed key instead
  of a second unique index on the raw pair makes SQLite's ingest much faster (bench/RESULTS.md,
  "Design figures") and keeps arbitrarily long fingerprints (Kafka templates)
  within PostgreSQL's B-tree row limit.
- `rule_events` (rule, event_id) makes an event pending at most once per rule; its `trigger_id`
  says which trigger consumed it, so an event is never in two triggers of a rule.
- `triggers.id` is deterministic (rule, group, sequence number): two replicas deciding the
  same trigger collide on the primary key and only one wins.
- `slots` (key, slot_at) records scheduled checks done, so replicas run each one once.
- `rule_groups.pending_*` summarise the group's pending `rule_events` rows; this one rests on
  the group row's lock. Only two writes change those rows, and each keeps the summary in its
  own transaction: ingest adds with one `UPDATE ... SET pending_count = pending_count + n` per
  group, after inserting its rows, so concurrent additions are not lost; create_trigger clears
  it in the UPDATE that moves the group's `seq` (that lock first), then consumes every
  pending row it can see. An addition it cannot see yet (PostgreSQL, another replica) waits
  on that lock and lands after the clear. Tested with two stores racing on both databases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite stores them naive, as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


NAME = 100
TRIGGER_ID = 200

metadata = MetaData()

events = Table(
    "events", metadata,
    Column("id", String(40), primary_key=True),  # event_id(source, fingerprint)
    Column("source", String(NAME), nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("subject", Text, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("size", BigInteger, nullable=False, default=0),
    Column("observed_at", UTCDateTime, nullable=False),
)
Index("ix_events_observed_at", events.c.observed_at)

rule_events = Table(
    "rule_events", metadata,
    Column("rule", String(NAME), primary_key=True),
    Column("event_id", String(40), primary_key=True),
    Column("grp", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("observed_at", UTCDateTime, nullable=False),
    Column("trigger_id", String(TRIGGER_ID), nullable=True),
)
Index("ix_rule_events_pending", rule_events.c.rule, rule_events.c.grp, rule_events.c.trigger_id)
# a trigger's events (pending rows, trigger_id NULL, are not in it: one index entry less per
# row ingested; lookups are always by a trigger id)
Index("ix_rule_events_trigger", rule_events.c.trigger_id,
      postgresql_where=rule_events.c.trigger_id.is_not(None),
      sqlite_where=rule_events.c.trigger_id.is_not(None))

triggers = Table(
    "triggers", metadata,
    Column("id", String(TRIGGER_ID), primary_key=True),
    Column("rule", String(NAME), nullable=False),
    Column("grp", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("fired_at", UTCDateTime, nullable=False),
    Column("reason", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("manual", Boolean, nullable=False),
    Column("events", Integer, nullable=False),
    Column("params", JSON, nullable=False),
    # the CLI request of a manual fire: a retried request cannot fire twice
    Column("request_id", Integer, nullable=True),
    UniqueConstraint("request_id", "grp", name="uq_triggers_request"),
)
Index("ix_triggers_rule_fired", triggers.c.rule, triggers.c.fired_at)
Index("ix_triggers_fired", triggers.c.fired_at)

jobs = Table(
    "jobs", metadata,
    Column("id", String(TRIGGER_ID), primary_key=True),
    Column("trigger_id", String(TRIGGER_ID), nullable=False, unique=True),
    Column("rule", String(NAME), nullable=False),
    Column("grp", Text, nullable=False),
    Column("backend", String(NAME), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False, default=1),
    Column("external_id", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("next_attempt_at", UTCDateTime, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("detail", Text, nullable=True),
    Column("owner", String(64), nullable=True),
)
Index("ix_jobs_status", jobs.c.status)
Index("ix_jobs_rule_status", jobs.c.rule, jobs.c.status)

job_attempts = Table(
    "job_attempts", metadata,
    Column("job_id", String(TRIGGER_ID), primary_key=True),
    Column("n", Integer, primary_key=True),
    Column("owner", String(64), nullable=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("outcome", String(16), nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("detail", Text, nullable=True),
)

rule_groups = Table(
    "rule_groups", metadata,
    Column("rule", String(NAME), primary_key=True),
    Column("grp", Text, primary_key=True),
    Column("seq", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_trigger_at", UTCDateTime, nullable=True),
    Column("last_success_at", UTCDateTime, nullable=True),
    Column("last_floor_at", UTCDateTime, nullable=True),
    Column("sustained_count", Integer, nullable=False, default=0),
    Column("sustained_since", UTCDateTime, nullable=True),
    Column("last_check_at", UTCDateTime, nullable=True),
    Column("last_verdict", Text, nullable=True),
    # The group's pending events, summarised: kept by ingest (added) and by create_trigger
    # (cleared: a trigger consumes all of them) in the transactions that change rule_events,
    # so a decision or a /metrics scrape reads one row instead of aggregating every pending row.
    Column("pending_count", BigInteger, nullable=False, default=0, server_default="0"),
    Column("pending_bytes", BigInteger, nullable=False, default=0, server_default="0"),
    Column("pending_first_at", UTCDateTime, nullable=True),
    Column("pending_last_at", UTCDateTime, nullable=True),
)

rules = Table(
    "rules", metadata,
    Column("name", String(NAME), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("paused", Boolean, nullable=False, default=False),
    Column("paused_until", UTCDateTime, nullable=True),
    Column("paused_reason", Text, nullable=True),
)

sources = Table(
    "sources", metadata,
    Column("name", String(NAME), primary_key=True),
    Column("type", String(32), nullable=False),
    Column("checkpoint", JSON, nullable=True),
    Column("healthy", Boolean, nullable=False, default=True),
    Column("error", Text, nullable=True),
    Column("events", BigInteger, nullable=False, default=0),
    Column("duplicates", BigInteger, nullable=False, default=0),
    Column("errors", BigInteger, nullable=False, default=0),
    Column("last_event_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=True),
    Column("details", JSON, nullable=True),  # what the source reports (roots, files, scans)
)

slots = Table(
    "slots", metadata,
    Column("key", String(TRIGGER_ID), primary_key=True),
    Column("slot_at", UTCDateTime, primary_key=True),
    Column("claimed_at", UTCDateTime, nullable=False),
    Column("done_at", UTCDateTime, nullable=True),  # the check ran (claimed but not done: redo)
)

daemons = Table(
    "daemons", metadata,
    Column("id", String(64), primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("host", String(255), nullable=False),
    Column("version", String(32), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime, nullable=True),
)

requests = Table(
    "requests", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("rule", String(NAME), nullable=False),
    Column("args", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("handled_at", UTCDateTime, nullable=True),
    Column("handled_by", String(64), nullable=True),
    Column("result", Text, nullable=True),
)
Index("ix_requests_open", requests.c.handled_at)

# The filesystem source's record of the files it has seen (its "never lost" basis): a file
# whose (size, mtime_ns, inode) differs from its row, or that has no row, is new or changed.
# Rows are written with the events they cover (same transaction) or after them, never before.
files = Table(
    "files", metadata,
    Column("source", String(NAME), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("inode", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
)

# Input a source could not turn into an event (a Kafka message that is not JSON, a tombstone,
# an oversized value) or that a rule's `where` failed on: kept for inspection (`triggerd
# events --rejected`) and counted in `status`. (source, ref, kind) is unique, so a redelivered
# bad message is recorded once.
rejects = Table(
    "rejects", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("source", String(NAME), nullable=False),
    Column("ref", String(400), nullable=False),  # topic/partition/offset, or the event id
    Column("kind", String(32), nullable=False),  # json | utf8 | tombstone | too_large | where...
    Column("error", Text, nullable=False),
    Column("head", Text, nullable=True),  # the first bytes, escaped
    Column("at", UTCDateTime, nullable=False),
    UniqueConstraint("source", "ref", "kind", name="uq_rejects_source_ref_kind"),
)
Index("ix_rejects_at", rejects.c.at)
