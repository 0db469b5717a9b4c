"""Idempotent consumers' memory, and the exposure projection the first consumer keeps.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "processed_events",
        sa.Column("consumer_group", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("consumer_group", "event_id", name=op.f("pk_processed_events")),
        sa.CheckConstraint(
            "char_length(consumer_group) BETWEEN 1 AND 128", name=op.f("ck_processed_events_consumer_group_length")
        ),
        sa.CheckConstraint("char_length(event_id) BETWEEN 1 AND 256", name=op.f("ck_processed_events_event_id_length")),
        comment=(
            "Events a consumer group has applied, inserted first in the same transaction as the work:"
            " a second delivery finds the row and does nothing."
        ),
    )
    op.create_table(
        "exposures",
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("currency_code", sa.Text, nullable=False),
        sa.Column("in_flight", sa.Numeric, nullable=False, server_default="0"),
        sa.Column("settled", sa.Numeric, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("account", "currency_code", name=op.f("pk_exposures")),
        sa.CheckConstraint("in_flight >= 0", name=op.f("ck_exposures_in_flight_nonnegative")),
        comment=(
            "Risk exposure per account and currency, projected from events: money of payments not yet"
            " decided (in flight) and the account's ledger balance (settled)."
        ),
    )


def downgrade() -> None:
    op.drop_table("exposures")
    op.drop_table("processed_events")
