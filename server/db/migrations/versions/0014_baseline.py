"""Baseline: the whole schema in one revision; its functions and triggers are server/db/invariants.sql.

Revisions 0001 to 0014, written before any release, are folded into this one, which builds the
schema they built, object for object. It keeps the id of the last of them, 0014, so a database
already there is at this revision and needs nothing; env.py refuses a database at an earlier one,
saying what to do.

The tables are written out as this revision creates them, their state lists, limits and rule rows
frozen: a revision builds the same schema forever. server/db/schema.py declares the tables of the
head revision from server/domain, and tests/integration/test_migrations.py compares the two.

Revision ID: 0014
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

from server.db.migrate import frozen_sql

revision = "0014"
down_revision = None
branch_labels = None
depends_on = None

#: invariants.sql as this revision loaded it: its own copy, frozen (server/db/invariants.sql describes
#: the head revision and changes with later ones). It refuses a changed copy rather than build another schema.
INVARIANTS_SQL = "0014_invariants.sql"
INVARIANTS_SHA256 = "d12ccb5d876515472ca71a6e85c400b4ec9f6cc3678d99b76da4cb5dcd6246a6"

PAYMENT_STATES = (
    "'RECORDED', 'PENDING', 'UNKNOWN', 'SUCCEEDED', 'FAILED', 'REJECTED', 'REFUND_PENDING', 'REFUNDED', 'EXPIRED'"
)
LEG_STATES = "'SUBMITTED', 'PENDING', 'PARTIALLY_FILLED', 'FILLED', 'MODIFYING', 'REJECTED', 'CLOSED'"
#: A quantity or a price: positive, at most 12 fraction digits, below 10^18.
DECIMAL_CHECK = "{column} > 0 AND scale({column}) <= 12 AND {column} < 1000000000000000000"

# The rule tables' rows: snapshots of server/domain (payment_states.py, corrections.py, order_legs.py).
PAYMENT_TRANSITIONS = [
    ("RECORDED", "PENDING"), ("RECORDED", "UNKNOWN"), ("RECORDED", "SUCCEEDED"), ("RECORDED", "FAILED"),
    ("RECORDED", "REJECTED"), ("RECORDED", "EXPIRED"),
    ("PENDING", "SUCCEEDED"), ("PENDING", "FAILED"), ("PENDING", "REJECTED"),
    ("UNKNOWN", "PENDING"), ("UNKNOWN", "SUCCEEDED"), ("UNKNOWN", "FAILED"), ("UNKNOWN", "REJECTED"),
    ("SUCCEEDED", "REFUND_PENDING"),
    ("REFUND_PENDING", "REFUNDED"), ("REFUND_PENDING", "SUCCEEDED"),
]  # fmt: skip
PAYMENT_CORRECTIONS = [
    ("FAILED", "SUCCEEDED", "AUTOMATIC"), ("REJECTED", "SUCCEEDED", "AUTOMATIC"),
    ("SUCCEEDED", "FAILED", "PERSON"), ("SUCCEEDED", "REJECTED", "PERSON"),
    ("REFUND_PENDING", "FAILED", "PERSON"), ("REFUND_PENDING", "REJECTED", "PERSON"),
    ("EXPIRED", "PENDING", "PERSON"), ("EXPIRED", "SUCCEEDED", "PERSON"),
    ("SUCCEEDED", "REFUNDED", "PERSON"), ("RECORDED", "REFUNDED", "PERSON"), ("PENDING", "REFUNDED", "PERSON"),
    ("UNKNOWN", "REFUNDED", "PERSON"),
    ("FAILED", "REFUNDED", "PERSON"), ("REJECTED", "REFUNDED", "PERSON"), ("EXPIRED", "REFUNDED", "PERSON"),
    ("RECORDED", "REFUND_PENDING", "PERSON"), ("PENDING", "REFUND_PENDING", "PERSON"),
    ("UNKNOWN", "REFUND_PENDING", "PERSON"), ("FAILED", "REFUND_PENDING", "PERSON"),
    ("REJECTED", "REFUND_PENDING", "PERSON"), ("EXPIRED", "REFUND_PENDING", "PERSON"),
]  # fmt: skip
LEG_TRANSITIONS = [
    ("SUBMITTED", "PENDING"), ("SUBMITTED", "REJECTED"), ("SUBMITTED", "CLOSED"),
    ("PENDING", "FILLED"), ("PENDING", "REJECTED"), ("PENDING", "PARTIALLY_FILLED"), ("PENDING", "MODIFYING"),
    ("PENDING", "CLOSED"),
    ("PARTIALLY_FILLED", "PARTIALLY_FILLED"), ("PARTIALLY_FILLED", "FILLED"), ("PARTIALLY_FILLED", "MODIFYING"),
    ("PARTIALLY_FILLED", "CLOSED"),
    ("FILLED", "MODIFYING"), ("FILLED", "CLOSED"),
    ("MODIFYING", "MODIFYING"), ("MODIFYING", "PENDING"), ("MODIFYING", "PARTIALLY_FILLED"), ("MODIFYING", "FILLED"),
    ("MODIFYING", "REJECTED"), ("MODIFYING", "CLOSED"),
    ("REJECTED", "CLOSED"),
]  # fmt: skip

#: Every table, each before the tables that refer to it (downgrade drops them in reverse).
TABLES = [
    "idempotency_keys", "payments", "payment_state_transitions", "payment_corrections", "payment_transitions",
    "provider_statuses", "ledger_entries", "ledger_lines", "outbox", "audit_log", "orders", "legs", "leg_fills",
    "leg_state_transitions", "leg_transitions", "processed_events", "exposures", "webhook_deliveries", "cases",
    "venue_instructions",
]  # fmt: skip
#: Every function invariants.sql creates (the triggers go with their tables).
FUNCTIONS = [
    "refuse_change()", "payments_guard_state()", "payment_transitions_apply()", "payment_transitions_move()",
    "payments_guard_provider_id()", "legs_guard()", "leg_transitions_apply()", "leg_fills_apply()",
    "ledger_entry_check_balanced()", "audit_log_chain()", "outbox_notify()",
    "audit_entry_hash(bytea, text, text, bigint, text, text, jsonb, timestamptz)",
]  # fmt: skip


def _timestamp_now(name: str) -> sa.Column:  # type: ignore[type-arg]
    """A timestamp that defaults to the inserting transaction's time."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def _check(table: str, name: str, condition: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(condition, name=op.f(f"ck_{table}_{name}"))


def _foreign_key(table: str, column: str, referred: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{referred}.id"], name=op.f(f"fk_{table}_{column}_{referred}"))


def _keyed_by_idempotency_key(table: str) -> list[sa.Constraint]:
    """One row per (client, idempotency key), and never a row without its key record."""
    return [
        sa.UniqueConstraint("client_id", "idempotency_key", name=op.f(f"uq_{table}_client_id_idempotency_key")),
        sa.ForeignKeyConstraint(
            ["client_id", "idempotency_key"],
            ["idempotency_keys.client_id", "idempotency_keys.idempotency_key"],
            name=op.f(f"fk_{table}_client_id_idempotency_key_idempotency_keys"),
        ),
    ]


def _state_machine(table: str, subject: str) -> None:
    op.create_table(
        table,
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("from_state", "to_state", name=op.f(f"pk_{table}")),
        comment=f"The allowed (from, to) pairs of the {subject} state machine; a snapshot of server/domain.",
    )


def _payments() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("request_fingerprint", BYTEA, nullable=False),
        sa.Column("resource_id", UUID(as_uuid=True), nullable=False),
        _timestamp_now("created_at"),
        sa.PrimaryKeyConstraint("client_id", "idempotency_key", name=op.f("pk_idempotency_keys")),
        _check("idempotency_keys", "client_id_length", "char_length(client_id) BETWEEN 1 AND 128"),
        _check("idempotency_keys", "idempotency_key_length", "char_length(idempotency_key) BETWEEN 1 AND 255"),
        _check("idempotency_keys", "operation_length", "char_length(operation) BETWEEN 1 AND 64"),
        _check("idempotency_keys", "request_fingerprint_sha256", "octet_length(request_fingerprint) = 32"),
        comment=(
            "One row per (client, idempotency key): the first request's parameters (as a SHA-256 fingerprint)"
            " and the resource it created, so a retry returns that resource and a reuse with other"
            " parameters is refused."
        ),
    )
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
        _timestamp_now("created_at"),
        _timestamp_now("updated_at"),
        sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("check_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        *_keyed_by_idempotency_key("payments"),
        _check("payments", "amount_range", "amount > 0 AND amount <= 1000000000000000"),
        _check("payments", "amount_scale", "scale(amount) <= 4"),
        _check("payments", "currency_code_iso4217", "currency_code ~ '^[A-Z]{3}$'"),
        _check("payments", "state_known", f"state IN ({PAYMENT_STATES})"),
        _check("payments", "client_id_length", "char_length(client_id) BETWEEN 1 AND 128"),
        _check("payments", "description_length", "char_length(description) <= 1000"),
        _check("payments", "merchant_reference_length", "char_length(merchant_reference) <= 255"),
        _check("payments", "metadata_object", "jsonb_typeof(metadata) = 'object'"),
        _check("payments", "provider_payment_id_length", "char_length(provider_payment_id) <= 255"),
        _check("payments", "provider_status_length", "char_length(provider_status) <= 64"),
        _check("payments", "check_attempts_nonnegative", "check_attempts >= 0"),
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
    # The resolver's questions: which payments are due a check, by their schedule or by default.
    op.create_index(
        op.f("ix_payments_undecided_updated_at"),
        "payments",
        ["updated_at"],
        postgresql_where=sa.text("state IN ('RECORDED', 'UNKNOWN', 'PENDING')"),
    )
    op.create_index(
        op.f("ix_payments_next_check_at"),
        "payments",
        ["next_check_at"],
        postgresql_where=sa.text("next_check_at IS NOT NULL"),
    )

    _state_machine("payment_state_transitions", "payment")
    op.create_table(
        "payment_corrections",
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.Column("approval", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("from_state", "to_state", name=op.f("pk_payment_corrections")),
        _check("payment_corrections", "approval_known", "approval IN ('AUTOMATIC', 'PERSON')"),
        comment=(
            "The corrections of a decided payment the provider's API contradicts, and whether a person must"
            " approve each; a snapshot of server/domain/corrections.py."
        ),
    )
    op.create_table(
        "payment_transitions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("payment_id", UUID(as_uuid=True), nullable=False),
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        sa.Column("evidence_ref", sa.Text, nullable=False),
        _timestamp_now("occurred_at"),
        sa.Column("approved_by", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_transitions")),
        _foreign_key("payment_transitions", "payment_id", "payments"),
        _check("payment_transitions", "cause_length", "char_length(cause) BETWEEN 1 AND 64"),
        _check("payment_transitions", "evidence_ref_length", "char_length(evidence_ref) BETWEEN 1 AND 500"),
        _check("payment_transitions", "event_length", "char_length(event) BETWEEN 1 AND 64"),
        _check("payment_transitions", "approved_by_length", "char_length(btrim(approved_by)) BETWEEN 1 AND 128"),
        comment="Every state change of every payment, with its cause and the evidence behind it. Append-only.",
    )
    op.create_index(op.f("ix_payment_transitions_payment_id"), "payment_transitions", ["payment_id", "id"])
    op.create_table(
        "provider_statuses",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("payment_id", UUID(as_uuid=True), nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("evidence_ref", sa.Text, nullable=False),
        _timestamp_now("observed_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_statuses")),
        _foreign_key("provider_statuses", "payment_id", "payments"),
        _check("provider_statuses", "provider_length", "char_length(provider) BETWEEN 1 AND 64"),
        _check("provider_statuses", "status_length", "char_length(status) BETWEEN 1 AND 64"),
        _check("provider_statuses", "evidence_ref_length", "char_length(evidence_ref) BETWEEN 1 AND 500"),
        comment="What providers said about payments, verbatim: evidence, kept apart from the internal state.",
    )
    op.create_index(op.f("ix_provider_statuses_payment_id"), "provider_statuses", ["payment_id", "id"])


def _ledger_outbox_and_audit() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("event_key", sa.Text, nullable=False),
        sa.Column("payment_id", UUID(as_uuid=True), nullable=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        _timestamp_now("posted_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        sa.UniqueConstraint("event_key", name=op.f("uq_ledger_entries_event_key")),
        _foreign_key("ledger_entries", "payment_id", "payments"),
        _check("ledger_entries", "event_key_length", "char_length(event_key) BETWEEN 1 AND 200"),
        _check("ledger_entries", "description_length", "char_length(description) <= 500"),
        comment="One business event's posting; event_key is unique, so an event posts once. Append-only.",
    )
    op.create_index(op.f("ix_ledger_entries_payment_id"), "ledger_entries", ["payment_id"])
    op.create_index(op.f("ix_ledger_entries_posted_at_id"), "ledger_entries", ["posted_at", "id"])
    op.create_table(
        "ledger_lines",
        sa.Column("entry_id", UUID(as_uuid=True), nullable=False),
        sa.Column("line_number", sa.SmallInteger, nullable=False),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("currency_code", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric, nullable=False),
        sa.PrimaryKeyConstraint("entry_id", "line_number", name=op.f("pk_ledger_lines")),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["ledger_entries.id"], name=op.f("fk_ledger_lines_entry_id_ledger_entries")
        ),
        _check("ledger_lines", "amount_nonzero", "amount <> 0"),
        _check("ledger_lines", "amount_scale", "scale(amount) <= 4"),
        _check("ledger_lines", "currency_code_iso4217", "currency_code ~ '^[A-Z]{3}$'"),
        _check("ledger_lines", "account_length", "char_length(account) BETWEEN 1 AND 200"),
        _check("ledger_lines", "line_number_positive", "line_number >= 1"),
        comment="Signed amounts (debit positive, credit negative); each entry's lines sum to zero per currency.",
    )
    op.create_index(op.f("ix_ledger_lines_account"), "ledger_lines", ["account", "currency_code"])

    op.create_table(
        "outbox",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("message_key", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        _timestamp_now("created_at"),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        # the order the relay publishes an aggregate's events in: their commit order, as they are
        # written under the aggregate's row lock
        sa.Column("position", sa.BigInteger, sa.Identity(always=True), nullable=False),
        _timestamp_now("next_attempt_at"),
        sa.Column("dead_lettered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("position", name=op.f("uq_outbox_position")),
        _check("outbox", "topic_length", "char_length(topic) BETWEEN 1 AND 128"),
        _check("outbox", "message_key_length", "char_length(message_key) BETWEEN 1 AND 256"),
        _check("outbox", "attempts_nonnegative", "attempts >= 0"),
        _check("outbox", "published_or_dead", "published_at IS NULL OR dead_lettered_at IS NULL"),
        comment="Events written in the same transaction as the change they announce; a relay publishes them.",
    )
    # The relay's two questions: which pending events are due, and is an event the head of its aggregate.
    op.create_index(
        op.f("ix_outbox_pending_position"), "outbox", ["position"], postgresql_where=sa.text("published_at IS NULL")
    )
    op.create_index(
        op.f("ix_outbox_pending_message_key_position"),
        "outbox",
        ["message_key", "position"],
        postgresql_where=sa.text("published_at IS NULL"),
    )

    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("aggregate_type", sa.Text, nullable=False),
        sa.Column("aggregate_id", sa.Text, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prev_hash", BYTEA, nullable=False),
        sa.Column("hash", BYTEA, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("aggregate_type", "aggregate_id", "sequence", name=op.f("uq_audit_log_aggregate_sequence")),
        _check("audit_log", "hash_sha256", "octet_length(hash) = 32"),
        _check("audit_log", "action_length", "char_length(action) BETWEEN 1 AND 64"),
        _check("audit_log", "actor_length", "char_length(actor) BETWEEN 1 AND 128"),
        comment="Every change, hash-chained per aggregate so that tampering shows. Append-only.",
    )


def _orders() -> None:
    op.create_table(
        "orders",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("client_order_reference", sa.Text, nullable=False, server_default=""),
        _timestamp_now("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        *_keyed_by_idempotency_key("orders"),
        _check("orders", "client_order_reference_length", "char_length(client_order_reference) <= 255"),
        comment="An order a client submitted: one or more legs worked independently at a venue.",
    )
    op.create_index(
        op.f("ix_orders_client_id_created_at_id"),
        "orders",
        ["client_id", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.create_table(
        "legs",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("order_id", UUID(as_uuid=True), nullable=False),
        sa.Column("position", sa.SmallInteger, nullable=False),
        sa.Column("instrument_symbol", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("order_type", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("limit_price", sa.Numeric, nullable=True),
        sa.Column("currency_code", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("state_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("filled_quantity", sa.Numeric, nullable=False, server_default="0"),
        sa.Column("fill_notional", sa.Numeric, nullable=False, server_default="0"),
        sa.Column("requested_quantity", sa.Numeric, nullable=True),
        sa.Column("requested_limit_price", sa.Numeric, nullable=True),
        _timestamp_now("created_at"),
        _timestamp_now("updated_at"),
        sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("check_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("venue_order_id", sa.Text, nullable=True),
        sa.Column("modification_id", UUID(as_uuid=True), nullable=True),
        sa.Column("modification_idempotency_key", sa.Text, nullable=True),
        sa.Column("modification_status", sa.Text, nullable=True),
        sa.Column("modification_reason", sa.Text, nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legs")),
        sa.UniqueConstraint("order_id", "position", name=op.f("uq_legs_order_id_position")),
        _foreign_key("legs", "order_id", "orders"),
        _check("legs", "position_positive", "position >= 1"),
        _check("legs", "instrument_symbol", "instrument_symbol ~ '^[A-Za-z0-9._/-]{1,32}$'"),
        _check("legs", "side_known", "side IN ('BUY', 'SELL')"),
        _check("legs", "order_type_known", "order_type IN ('MARKET', 'LIMIT')"),
        _check("legs", "quantity_valid", DECIMAL_CHECK.format(column="quantity")),
        _check("legs", "limit_price_valid", f"limit_price IS NULL OR ({DECIMAL_CHECK.format(column='limit_price')})"),
        _check("legs", "limit_price_iff_limit", "(order_type = 'LIMIT') = (limit_price IS NOT NULL)"),
        _check("legs", "currency_code_iso4217", "currency_code ~ '^[A-Z]{3}$'"),
        _check("legs", "state_known", f"state IN ({LEG_STATES})"),
        _check("legs", "state_reason_length", "char_length(state_reason) <= 1000"),
        _check("legs", "filled_within_quantity", "filled_quantity >= 0 AND filled_quantity <= quantity"),
        _check("legs", "fill_notional_nonnegative", "fill_notional >= 0"),
        _check(
            "legs",
            "requested_quantity_valid",
            f"requested_quantity IS NULL OR ({DECIMAL_CHECK.format(column='requested_quantity')})",
        ),
        _check(
            "legs",
            "requested_limit_price_valid",
            f"requested_limit_price IS NULL OR ({DECIMAL_CHECK.format(column='requested_limit_price')})",
        ),
        _check("legs", "check_attempts_nonnegative", "check_attempts >= 0"),
        _check("legs", "venue_order_id_length", "char_length(venue_order_id) <= 255"),
        _check(
            "legs",
            "modification_status_known",
            "modification_status IN ('PENDING', 'CONFIRMED', 'REFUSED', 'CANCELED')",
        ),
        _check(
            "legs",
            "modification_whole",
            "(modification_id IS NULL) = (modification_status IS NULL)"
            " AND (modification_id IS NULL) = (modification_idempotency_key IS NULL)",
        ),
        _check("legs", "modification_idempotency_key_length", "char_length(modification_idempotency_key) <= 255"),
        _check("legs", "modification_reason_length", "char_length(modification_reason) <= 1000"),
        comment="One leg of an order, in its state; filled_quantity is the sum of its fills, kept by trigger.",
    )
    # The resolver's question: which legs still at the venue's mercy are due a check.
    op.create_index(
        op.f("ix_legs_working_updated_at"),
        "legs",
        ["updated_at"],
        postgresql_where=sa.text("state IN ('SUBMITTED', 'PENDING', 'PARTIALLY_FILLED', 'MODIFYING')"),
    )
    op.create_table(
        "leg_fills",
        sa.Column("leg_id", UUID(as_uuid=True), nullable=False),
        sa.Column("execution_id", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("price", sa.Numeric, nullable=False),
        sa.Column("fill_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("evidence_ref", sa.Text, nullable=False),
        _timestamp_now("recorded_at"),
        sa.PrimaryKeyConstraint("leg_id", "execution_id", name=op.f("pk_leg_fills")),
        _foreign_key("leg_fills", "leg_id", "legs"),
        _check("leg_fills", "execution_id_length", "char_length(execution_id) BETWEEN 1 AND 128"),
        _check("leg_fills", "quantity_valid", DECIMAL_CHECK.format(column="quantity")),
        _check("leg_fills", "price_valid", DECIMAL_CHECK.format(column="price")),
        _check("leg_fills", "evidence_ref_length", "char_length(evidence_ref) BETWEEN 1 AND 500"),
        comment="Executions reported by the venue; (leg, execution id) is unique, so a fill applies once.",
    )
    _state_machine("leg_state_transitions", "order-leg")
    op.create_table(
        "leg_transitions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("leg_id", UUID(as_uuid=True), nullable=False),
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        sa.Column("evidence_ref", sa.Text, nullable=False),
        _timestamp_now("occurred_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leg_transitions")),
        _foreign_key("leg_transitions", "leg_id", "legs"),
        _check("leg_transitions", "cause_length", "char_length(cause) BETWEEN 1 AND 64"),
        _check("leg_transitions", "evidence_ref_length", "char_length(evidence_ref) BETWEEN 1 AND 500"),
        comment="Every state change of every leg, with its cause and evidence. Append-only.",
    )
    op.create_index(op.f("ix_leg_transitions_leg_id"), "leg_transitions", ["leg_id", "id"])
    op.create_table(
        "venue_instructions",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("leg_id", UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("body", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        _timestamp_now("created_at"),
        _timestamp_now("next_attempt_at"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_venue_instructions")),
        _foreign_key("venue_instructions", "leg_id", "legs"),
        _check("venue_instructions", "kind_known", "kind IN ('modify', 'cancel')"),
        _check("venue_instructions", "attempts_nonnegative", "attempts >= 0"),
        _check("venue_instructions", "outcome_length", "char_length(outcome) <= 500"),
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


def _consumers_webhooks_and_cases() -> None:
    op.create_table(
        "processed_events",
        sa.Column("consumer_group", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        _timestamp_now("processed_at"),
        sa.PrimaryKeyConstraint("consumer_group", "event_id", name=op.f("pk_processed_events")),
        _check("processed_events", "consumer_group_length", "char_length(consumer_group) BETWEEN 1 AND 128"),
        _check("processed_events", "event_id_length", "char_length(event_id) BETWEEN 1 AND 256"),
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
        _timestamp_now("updated_at"),
        sa.PrimaryKeyConstraint("account", "currency_code", name=op.f("pk_exposures")),
        _check("exposures", "in_flight_nonnegative", "in_flight >= 0"),
        comment=(
            "Risk exposure per account and currency, projected from events: money of payments not yet"
            " decided (in flight) and the account's ledger balance (settled)."
        ),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", UUID(as_uuid=True), nullable=False, server_default=sa.text("gen_random_uuid()")),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=True),
        _timestamp_now("received_at"),
        sa.Column("headers", JSONB, nullable=False),
        sa.Column("body", BYTEA, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        _check("webhook_deliveries", "provider_length", "char_length(provider) BETWEEN 1 AND 64"),
        _check("webhook_deliveries", "event_id_length", "char_length(event_id) <= 256"),
        _check("webhook_deliveries", "body_size", "octet_length(body) <= 1048576"),
        comment=(
            "Every signed webhook delivery as received (headers and raw body), duplicates included:"
            " the evidence a provider event was applied on. Append-only."
        ),
    )
    op.create_index(op.f("ix_webhook_deliveries_provider_event_id"), "webhook_deliveries", ["provider", "event_id"])
    op.create_table(
        "cases",
        sa.Column("id", UUID(as_uuid=True), nullable=False, server_default=sa.text("gen_random_uuid()")),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("payment_id", UUID(as_uuid=True), nullable=True),
        sa.Column("status", sa.Text, nullable=False, server_default="OPEN"),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("evidence", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        _timestamp_now("opened_at"),
        _timestamp_now("updated_at"),
        sa.Column("leg_id", UUID(as_uuid=True), nullable=True),
        sa.Column("provider_check_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cases")),
        _foreign_key("cases", "payment_id", "payments"),
        _foreign_key("cases", "leg_id", "legs"),
        _check("cases", "status_known", "status IN ('OPEN', 'RESOLVED')"),
        _check("cases", "about_one_thing", "(payment_id IS NULL) <> (leg_id IS NULL)"),
        _check("cases", "kind_length", "char_length(kind) BETWEEN 1 AND 64"),
        _check("cases", "summary_length", "char_length(summary) BETWEEN 1 AND 2000"),
        _check("cases", "evidence_array", "jsonb_typeof(evidence) = 'array'"),
        comment=(
            "Investigation cases: what Ballast could not decide alone (contradictory provider evidence,"
            " an outcome that stayed unknown), with the evidence, for operations staff to resolve."
        ),
    )
    # One open case of a kind per payment or leg: a second contradiction adds evidence to it.
    for subject in ("payment_id", "leg_id"):
        op.create_index(
            op.f(f"uq_cases_kind_{subject}"),
            "cases",
            ["kind", subject],
            unique=True,
            postgresql_where=sa.text("status = 'OPEN'"),
        )
    op.create_index(
        op.f("ix_cases_provider_check_due_at"),
        "cases",
        ["provider_check_due_at"],
        postgresql_where=sa.text("status = 'OPEN' AND provider_check_due_at IS NOT NULL"),
    )


def _rules() -> None:
    """The rule tables' rows, written before invariants.sql makes those tables refuse any change."""
    op.bulk_insert(
        sa.table("payment_state_transitions", sa.column("from_state"), sa.column("to_state")),
        [{"from_state": a, "to_state": b} for a, b in PAYMENT_TRANSITIONS],
    )
    op.bulk_insert(
        sa.table("payment_corrections", sa.column("from_state"), sa.column("to_state"), sa.column("approval")),
        [{"from_state": a, "to_state": b, "approval": c} for a, b, c in PAYMENT_CORRECTIONS],
    )
    op.bulk_insert(
        sa.table("leg_state_transitions", sa.column("from_state"), sa.column("to_state")),
        [{"from_state": a, "to_state": b} for a, b in LEG_TRANSITIONS],
    )


def _invariants() -> None:
    for statement in frozen_sql(revision, INVARIANTS_SQL, INVARIANTS_SHA256):
        op.get_bind().exec_driver_sql(statement)


def upgrade() -> None:
    _payments()
    _ledger_outbox_and_audit()
    _orders()
    _consumers_webhooks_and_cases()
    _rules()
    _invariants()


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
