"""When the resolver next asks a provider about an undecided payment, and how often it has asked.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("payments", sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("payments", sa.Column("check_attempts", sa.Integer, nullable=False, server_default="0"))
    op.create_check_constraint(op.f("ck_payments_check_attempts_nonnegative"), "payments", "check_attempts >= 0")
    # The resolver's question: which undecided payments are due a check. Few rows: undecided ones only.
    op.create_index(
        op.f("ix_payments_undecided_updated_at"),
        "payments",
        ["updated_at"],
        postgresql_where=sa.text("state IN ('UNKNOWN', 'PENDING')"),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_payments_undecided_updated_at"), table_name="payments")
    op.drop_constraint(op.f("ck_payments_check_attempts_nonnegative"), "payments")
    op.drop_column("payments", "check_attempts")
    op.drop_column("payments", "next_check_at")
