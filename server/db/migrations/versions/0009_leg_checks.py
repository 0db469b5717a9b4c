"""When the resolver next asks the venue about a leg, and how often it has asked.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("legs", sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("legs", sa.Column("check_attempts", sa.Integer, nullable=False, server_default="0"))
    op.create_check_constraint(op.f("ck_legs_check_attempts_nonnegative"), "legs", "check_attempts >= 0")
    # The resolver's question: which legs still at the venue's mercy are due a check.
    op.create_index(
        op.f("ix_legs_working_updated_at"),
        "legs",
        ["updated_at"],
        postgresql_where=sa.text("state IN ('SUBMITTED', 'PENDING', 'PARTIALLY_FILLED')"),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_legs_working_updated_at"), table_name="legs")
    op.drop_constraint(op.f("ck_legs_check_attempts_nonnegative"), "legs")
    op.drop_column("legs", "check_attempts")
    op.drop_column("legs", "next_check_at")
