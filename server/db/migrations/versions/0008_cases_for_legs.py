"""Investigation cases about order legs too: a venue contradicting itself.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("cases", sa.Column("leg_id", UUID(as_uuid=True), nullable=True))
    op.create_foreign_key(op.f("fk_cases_leg_id_legs"), "cases", "legs", ["leg_id"], ["id"])
    op.create_check_constraint(op.f("ck_cases_about_one_thing"), "cases", "(payment_id IS NULL) <> (leg_id IS NULL)")
    # One open case of a kind per leg, as per payment.
    op.create_index(
        op.f("uq_cases_kind_leg_id"),
        "cases",
        ["kind", "leg_id"],
        unique=True,
        postgresql_where=sa.text("status = 'OPEN'"),
    )


def downgrade() -> None:
    op.drop_index(op.f("uq_cases_kind_leg_id"), table_name="cases")
    op.drop_constraint(op.f("ck_cases_about_one_thing"), "cases")
    op.drop_constraint(op.f("fk_cases_leg_id_legs"), "cases")
    op.drop_column("cases", "leg_id")
