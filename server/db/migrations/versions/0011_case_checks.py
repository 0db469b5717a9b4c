"""When a case's subject is next looked up at the provider, so the case carries the provider's own answer.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("cases", sa.Column("provider_check_due_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        op.f("ix_cases_provider_check_due_at"),
        "cases",
        ["provider_check_due_at"],
        postgresql_where=sa.text("status = 'OPEN' AND provider_check_due_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_cases_provider_check_due_at"), table_name="cases")
    op.drop_column("cases", "provider_check_due_at")
