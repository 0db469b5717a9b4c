"""Raw webhook deliveries kept as evidence, investigation cases, and a provider id set only once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_GUARD_PROVIDER_ID = """
CREATE FUNCTION payments_guard_provider_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.provider_payment_id IS NOT NULL AND NEW.provider_payment_id IS DISTINCT FROM OLD.provider_payment_id THEN
        RAISE EXCEPTION 'payment %: provider payment id % is set once, not changed to %',
            OLD.id, OLD.provider_payment_id, NEW.provider_payment_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_provider_id_once';
    END IF;
    RETURN NEW;
END $$
"""


def upgrade() -> None:
    op.execute(_GUARD_PROVIDER_ID)
    op.execute(
        "CREATE TRIGGER payments_guard_provider_id BEFORE UPDATE OF provider_payment_id ON payments"
        " FOR EACH ROW EXECUTE FUNCTION payments_guard_provider_id()"
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", UUID(as_uuid=True), nullable=False, server_default=sa.text("gen_random_uuid()")),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("headers", JSONB, nullable=False),
        sa.Column("body", BYTEA, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.CheckConstraint(
            "char_length(provider) BETWEEN 1 AND 64", name=op.f("ck_webhook_deliveries_provider_length")
        ),
        sa.CheckConstraint("char_length(event_id) <= 256", name=op.f("ck_webhook_deliveries_event_id_length")),
        sa.CheckConstraint("octet_length(body) <= 1048576", name=op.f("ck_webhook_deliveries_body_size")),
        comment=(
            "Every signed webhook delivery as received (headers and raw body), duplicates included:"
            " the evidence a provider event was applied on. Append-only."
        ),
    )
    op.create_index(op.f("ix_webhook_deliveries_provider_event_id"), "webhook_deliveries", ["provider", "event_id"])
    op.execute(
        "CREATE TRIGGER webhook_deliveries_append_only BEFORE UPDATE OR DELETE ON webhook_deliveries"
        " FOR EACH ROW EXECUTE FUNCTION refuse_change()"
    )
    op.create_table(
        "cases",
        sa.Column("id", UUID(as_uuid=True), nullable=False, server_default=sa.text("gen_random_uuid()")),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("payment_id", UUID(as_uuid=True), nullable=True),
        sa.Column("status", sa.Text, nullable=False, server_default="OPEN"),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("evidence", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cases")),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_cases_payment_id_payments")),
        sa.CheckConstraint("status IN ('OPEN', 'RESOLVED')", name=op.f("ck_cases_status_known")),
        sa.CheckConstraint("char_length(kind) BETWEEN 1 AND 64", name=op.f("ck_cases_kind_length")),
        sa.CheckConstraint("char_length(summary) BETWEEN 1 AND 2000", name=op.f("ck_cases_summary_length")),
        sa.CheckConstraint("jsonb_typeof(evidence) = 'array'", name=op.f("ck_cases_evidence_array")),
        comment=(
            "Investigation cases: what Ballast could not decide alone (contradictory provider evidence,"
            " an outcome that stayed unknown), with the evidence, for operations staff to resolve."
        ),
    )
    # One open case of a kind per payment: a second contradiction adds evidence to it.
    op.create_index(
        op.f("uq_cases_kind_payment_id"),
        "cases",
        ["kind", "payment_id"],
        unique=True,
        postgresql_where=sa.text("status = 'OPEN'"),
    )


def downgrade() -> None:
    op.drop_index(op.f("uq_cases_kind_payment_id"), table_name="cases")
    op.drop_table("cases")
    op.execute("DROP TRIGGER webhook_deliveries_append_only ON webhook_deliveries")
    op.drop_index(op.f("ix_webhook_deliveries_provider_event_id"), table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.execute("DROP TRIGGER payments_guard_provider_id ON payments")
    op.execute("DROP FUNCTION payments_guard_provider_id()")
