"""What the outbox relay needs: commit order, retry schedule, dead letters, and a wake-up call.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

`position` orders events: the events of one aggregate are written under that aggregate's row lock,
so their positions follow their commit order, and the relay publishes an aggregate's events in
position order. A NOTIFY on commit wakes idle relays, so latency is not the poll interval.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("position", sa.BigInteger, sa.Identity(always=True), nullable=False))
    op.add_column(
        "outbox",
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.add_column("outbox", sa.Column("dead_lettered_at", sa.DateTime(timezone=True), nullable=True))
    op.create_unique_constraint(op.f("uq_outbox_position"), "outbox", ["position"])
    op.drop_index(op.f("ix_outbox_unpublished"), table_name="outbox")
    # The relay's two questions: which pending events are due, and is an event the head of its aggregate.
    op.create_index(
        op.f("ix_outbox_pending_position"),
        "outbox",
        ["position"],
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_index(
        op.f("ix_outbox_pending_message_key_position"),
        "outbox",
        ["message_key", "position"],
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_check_constraint(
        op.f("ck_outbox_published_or_dead"), "outbox", "published_at IS NULL OR dead_lettered_at IS NULL"
    )
    op.execute(
        """
        CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('ballast_outbox', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER outbox_notify ON outbox")
    op.execute("DROP FUNCTION outbox_notify()")
    op.drop_constraint(op.f("ck_outbox_published_or_dead"), "outbox")
    op.drop_index(op.f("ix_outbox_pending_message_key_position"), table_name="outbox")
    op.drop_index(op.f("ix_outbox_pending_position"), table_name="outbox")
    op.create_index(
        op.f("ix_outbox_unpublished"), "outbox", ["created_at"], postgresql_where=sa.text("published_at IS NULL")
    )
    op.drop_constraint(op.f("uq_outbox_position"), "outbox")
    for column in ("dead_lettered_at", "next_attempt_at", "position"):
        op.drop_column("outbox", column)
