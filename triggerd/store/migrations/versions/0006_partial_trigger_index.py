"""rule_events: index trigger_id only where it is set (pending rows are not in it)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 00:00:00

Every event is inserted pending (`trigger_id` NULL) in each rule it matches, and the index
on `trigger_id` serves only lookups of a trigger's events (`trigger_id = ...`, `IN (...)`),
which never look for NULL. Keeping NULLs out saves an index entry per pending row: ~15 % of
a batch's `rule_events` insert on PostgreSQL (bench/RESULTS.md, "PostgreSQL at scale").
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_SET = sa.text("trigger_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_rule_events_trigger", table_name="rule_events")
    op.create_index("ix_rule_events_trigger", "rule_events", ["trigger_id"],
                    postgresql_where=_SET, sqlite_where=_SET)


def downgrade() -> None:
    op.drop_index("ix_rule_events_trigger", table_name="rule_events")
    op.create_index("ix_rule_events_trigger", "rule_events", ["trigger_id"])
