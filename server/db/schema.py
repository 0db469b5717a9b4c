"""The database schema as SQLAlchemy Core tables: the one description of what PostgreSQL holds.

Alembic migrations (server/db/migrations) create it; the checks and constraints here are the
invariants PostgreSQL enforces whatever the Python code does.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

from server.domain.payments import PaymentState

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

PAYMENT_STATES_SQL = ", ".join(f"'{state.value}'" for state in PaymentState)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("operation", sa.Text, nullable=False),
    sa.Column("request_fingerprint", BYTEA, nullable=False),
    sa.Column("resource_id", UUID(as_uuid=True), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("client_id", "idempotency_key"),
    sa.CheckConstraint("char_length(client_id) BETWEEN 1 AND 128", name="client_id_length"),
    sa.CheckConstraint("char_length(idempotency_key) BETWEEN 1 AND 255", name="idempotency_key_length"),
    sa.CheckConstraint("char_length(operation) BETWEEN 1 AND 64", name="operation_length"),
    sa.CheckConstraint("octet_length(request_fingerprint) = 32", name="request_fingerprint_sha256"),
    comment=(
        "One row per (client, idempotency key): the first request's parameters (as a SHA-256 fingerprint)"
        " and the resource it created, so a retry returns that resource and a reuse with other"
        " parameters is refused."
    ),
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
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
    # One payment per idempotency key, and never a payment without its key record.
    sa.UniqueConstraint("client_id", "idempotency_key"),
    sa.ForeignKeyConstraint(
        ["client_id", "idempotency_key"], ["idempotency_keys.client_id", "idempotency_keys.idempotency_key"]
    ),
    sa.CheckConstraint("amount > 0 AND amount <= 1000000000000000", name="amount_range"),
    sa.CheckConstraint("scale(amount) <= 4", name="amount_scale"),
    sa.CheckConstraint("currency_code ~ '^[A-Z]{3}$'", name="currency_code_iso4217"),
    sa.CheckConstraint(f"state IN ({PAYMENT_STATES_SQL})", name="state_known"),
    sa.CheckConstraint("char_length(client_id) BETWEEN 1 AND 128", name="client_id_length"),
    sa.CheckConstraint("char_length(description) <= 1000", name="description_length"),
    sa.CheckConstraint("char_length(merchant_reference) <= 255", name="merchant_reference_length"),
    sa.CheckConstraint("jsonb_typeof(metadata) = 'object'", name="metadata_object"),
    sa.CheckConstraint("char_length(provider_payment_id) <= 255", name="provider_payment_id_length"),
    sa.CheckConstraint("char_length(provider_status) <= 64", name="provider_status_length"),
    sa.Index("ix_payments_client_id_created_at_id", "client_id", sa.text("created_at DESC"), sa.text("id DESC")),
    comment=(
        "A payment Ballast was asked to take, in its internal state. Provider statuses are evidence"
        " stored beside the state, never a replacement for it."
    ),
)
