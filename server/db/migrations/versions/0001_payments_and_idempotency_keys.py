"""Payments and idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PAYMENT_STATES = ("RECORDED", "PENDING", "UNKNOWN", "SUCCEEDED", "FAILED", "REJECTED", "REFUND_PENDING", "REFUNDED")


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("request_fingerprint", BYTEA, nullable=False),
        sa.Column("resource_id", UUID(as_uuid=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("client_id", "idempotency_key", name=op.f("pk_idempotency_keys")),
        sa.CheckConstraint(
            "char_length(client_id) BETWEEN 1 AND 128", name=op.f("ck_idempotency_keys_client_id_length")
        ),
        sa.CheckConstraint(
            "char_length(idempotency_key) BETWEEN 1 AND 255", name=op.f("ck_idempotency_keys_idempotency_key_length")
        ),
        sa.CheckConstraint(
            "char_length(operation) BETWEEN 1 AND 64", name=op.f("ck_idempotency_keys_operation_length")
        ),
        sa.CheckConstraint(
            "octet_length(request_fingerprint) = 32", name=op.f("ck_idempotency_keys_request_fingerprint_sha256")
        ),
        comment=(
            "One row per (client, idempotency key): the first request's parameters (as a SHA-256 fingerprint)"
            " and the resource it created, so a retry returns that resource and a reuse with other"
            " parameters is refused."
        ),
    )
    states = ", ".join(f"'{state}'" for state in PAYMENT_STATES)
    op.create_table(
        "payments",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric, nullable=False),
        sa.Column("currency_code", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("merchant_reference", sa.Text, nullable=False, server_default=""),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("provider_payment_id", sa.Text, nullable=True),
        sa.Column("provider_status", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("client_id", "idempotency_key", name=op.f("uq_payments_client_id_idempotency_key")),
        sa.ForeignKeyConstraint(
            ["client_id", "idempotency_key"],
            ["idempotency_keys.client_id", "idempotency_keys.idempotency_key"],
            name=op.f("fk_payments_client_id_idempotency_key_idempotency_keys"),
        ),
        sa.CheckConstraint("amount > 0 AND amount <= 1000000000000000", name=op.f("ck_payments_amount_range")),
        sa.CheckConstraint("scale(amount) <= 4", name=op.f("ck_payments_amount_scale")),
        sa.CheckConstraint("currency_code ~ '^[A-Z]{3}$'", name=op.f("ck_payments_currency_code_iso4217")),
        sa.CheckConstraint(f"state IN ({states})", name=op.f("ck_payments_state_known")),
        sa.CheckConstraint("char_length(client_id) BETWEEN 1 AND 128", name=op.f("ck_payments_client_id_length")),
        sa.CheckConstraint("char_length(description) <= 1000", name=op.f("ck_payments_description_length")),
        sa.CheckConstraint(
            "char_length(merchant_reference) <= 255", name=op.f("ck_payments_merchant_reference_length")
        ),
        sa.CheckConstraint("jsonb_typeof(metadata) = 'object'", name=op.f("ck_payments_metadata_object")),
        sa.CheckConstraint(
            "char_length(provider_payment_id) <= 255", name=op.f("ck_payments_provider_payment_id_length")
        ),
        sa.CheckConstraint("char_length(provider_status) <= 64", name=op.f("ck_payments_provider_status_length")),
        comment=(
            "A payment Ballast was asked to take, in its internal state. Provider statuses are evidence"
            " stored beside the state, never a replacement for it."
        ),
    )
    op.create_index(
        op.f("ix_payments_client_id_created_at_id"),
        "payments",
        ["client_id", sa.text("created_at DESC"), sa.text("id DESC")],
    )


def downgrade() -> None:
    op.drop_table("payments")
    op.drop_table("idempotency_keys")
