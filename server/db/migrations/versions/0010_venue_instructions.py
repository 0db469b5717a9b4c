"""Instructions to the venue (modify, cancel), queued in the transaction that decided them, and the
venue's own id for each leg.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("legs", sa.Column("venue_order_id", sa.Text, nullable=True))
    op.create_check_constraint(op.f("ck_legs_venue_order_id_length"), "legs", "char_length(venue_order_id) <= 255")
    op.create_table(
        "venue_instructions",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("leg_id", UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("body", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_venue_instructions")),
        sa.ForeignKeyConstraint(["leg_id"], ["legs.id"], name=op.f("fk_venue_instructions_leg_id_legs")),
        sa.CheckConstraint("kind IN ('modify', 'cancel')", name=op.f("ck_venue_instructions_kind_known")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_venue_instructions_attempts_nonnegative")),
        sa.CheckConstraint("char_length(outcome) <= 500", name=op.f("ck_venue_instructions_outcome_length")),
        comment=(
            "What Ballast decided to ask of the venue (modify or cancel a leg), written in the transaction that"
            " decided it and sent until the venue answers, under the instruction's id as the venue's idempotency key."
        ),
    )
    op.create_index(
        op.f("ix_venue_instructions_next_attempt_at"),
        "venue_instructions",
        ["next_attempt_at"],
        postgresql_where=sa.text("done_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_venue_instructions_next_attempt_at"), table_name="venue_instructions")
    op.drop_table("venue_instructions")
    op.drop_constraint(op.f("ck_legs_venue_order_id_length"), "legs")
    op.drop_column("legs", "venue_order_id")
