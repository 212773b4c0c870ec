"""rule_groups: a running summary of each group's pending events

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_PENDING = ("FROM rule_events r WHERE r.rule = rule_groups.rule AND r.grp = rule_groups.grp "
            "AND r.trigger_id IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("rule_groups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pending_count", sa.BigInteger(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("pending_bytes", sa.BigInteger(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("pending_first_at", sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column("pending_last_at", sa.DateTime(timezone=True),
                                      nullable=True))
    # the summary of what is pending now (every pending row has its group's row: ingest
    # writes the group before its rule_events)
    op.execute(f"UPDATE rule_groups SET "  # noqa: S608 - constant SQL, no input
               f"pending_count = (SELECT count(*) {_PENDING}), "
               f"pending_bytes = (SELECT coalesce(sum(r.size), 0) {_PENDING}), "
               f"pending_first_at = (SELECT min(r.observed_at) {_PENDING}), "
               f"pending_last_at = (SELECT max(r.observed_at) {_PENDING})")


def downgrade() -> None:
    with op.batch_alter_table("rule_groups", schema=None) as batch_op:
        batch_op.drop_column("pending_last_at")
        batch_op.drop_column("pending_first_at")
        batch_op.drop_column("pending_bytes")
        batch_op.drop_column("pending_count")
