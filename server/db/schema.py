"""The database schema as SQLAlchemy Core tables: the tables, columns, keys and CHECK constraints of the head revision.

Alembic migrations (server/db/migrations) build it; its functions and triggers are in
server/db/invariants.sql. State lists and limits come from server/domain, where the Python checks
read them too, so PostgreSQL refuses what the domain refuses whatever the Python code does. A test
(tests/integration/test_migrations.py) compares a migrated database with this file and invariants.sql:
a change here needs a revision, and a revision needs a change here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

from server.domain import cases as case_rules
from server.domain import events, evidence
from server.domain import reconciliation as recon
from server.domain.cases import CaseStatus
from server.domain.corrections import APPROVER_LENGTH_MAX, Approval
from server.domain.identity import CLIENT_ID_LENGTH_MAX
from server.domain.ledger import ACCOUNT_LENGTH_MAX, ENTRY_DESCRIPTION_LENGTH_MAX, EVENT_KEY_LENGTH_MAX
from server.domain.money import AMOUNT_MAX, AMOUNT_SCALE_MAX
from server.domain.order_legs import (
    AWAITING_VENUE_STATES,
    DECIMAL_MAX,
    EXECUTION_ID_LENGTH_MAX,
    INSTRUCTION_OUTCOME_LENGTH_MAX,
    QUANTITY_SCALE_MAX,
    REASON_LENGTH_MAX,
    LegState,
    ModificationStatus,
    VenueInstructionKind,
)
from server.domain.orders import CLIENT_ORDER_REFERENCE_LENGTH_MAX, INSTRUMENT_SYMBOL_PATTERN, OrderType, Side
from server.domain.payment_states import UNDECIDED_STATES, PaymentState
from server.domain.payments import (
    DESCRIPTION_LENGTH_MAX,
    IDEMPOTENCY_KEY_LENGTH_MAX,
    MERCHANT_REFERENCE_LENGTH_MAX,
    OPERATION_LENGTH_MAX,
)
from server.domain.reconciliation import Difference, ReportKind, RunStatus
from server.domain.refund_states import REASON_LENGTH_MAX as REFUND_REASON_LENGTH_MAX
from server.domain.refund_states import UNDECIDED_REFUND_STATES, RefundState

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: A SHA-256 digest (an idempotency request's fingerprint, an audit entry's hash).
SHA256_BYTES = 32


def _one_of(column: str, values: Iterable[enum.StrEnum]) -> str:
    """`column IN (...)`, the values in their enum's order."""
    listed = ", ".join(f"'{value}'" for value in sorted(values, key=_declared_order))
    return f"{column} IN ({listed})"


def _declared_order(value: enum.StrEnum) -> int:
    members: list[enum.StrEnum] = list(type(value))
    return members.index(value)


def _length(column: str, length_max: int, *, required: bool = True) -> str:
    """Text of at most `length_max` characters; a required one is not empty either."""
    return f"char_length({column}) BETWEEN 1 AND {length_max}" if required else f"char_length({column}) <= {length_max}"


def _iso_4217(column: str = "currency_code") -> str:
    return f"{column} ~ '^[A-Z]{{3}}$'"


def _decimal(column: str, *, nullable: bool = False) -> str:
    """A quantity or a price: positive, at most QUANTITY_SCALE_MAX fraction digits, below DECIMAL_MAX."""
    check = f"{column} > 0 AND scale({column}) <= {QUANTITY_SCALE_MAX} AND {column} < {_plain(DECIMAL_MAX)}"
    return f"{column} IS NULL OR ({check})" if nullable else check


def _plain(number: Decimal) -> str:
    return format(number, "f")


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
    sa.CheckConstraint(_length("client_id", CLIENT_ID_LENGTH_MAX), name="client_id_length"),
    sa.CheckConstraint(_length("idempotency_key", IDEMPOTENCY_KEY_LENGTH_MAX), name="idempotency_key_length"),
    sa.CheckConstraint(_length("operation", OPERATION_LENGTH_MAX), name="operation_length"),
    sa.CheckConstraint(f"octet_length(request_fingerprint) = {SHA256_BYTES}", name="request_fingerprint_sha256"),
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
    # the resolver's schedule for an undecided (UNKNOWN or overdue PENDING) payment
    sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("check_attempts", sa.Integer, nullable=False, server_default="0"),
    # when a retry last began sending the payment (a new payment's first attempt is its creation)
    sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
    # what its refunds count against it (those that succeeded or still may), and what they returned:
    # written by the refunds' triggers only (invariants.sql, section 8)
    sa.Column("refund_held", sa.Numeric, nullable=False, server_default="0"),
    sa.Column("refunded", sa.Numeric, nullable=False, server_default="0"),
    # when it first SUCCEEDED: written with its state by its transitions' trigger only (invariants.sql,
    # section 2); a report's rows are matched to it and their expected settlement day in one join
    sa.Column("succeeded_at", sa.DateTime(timezone=True), nullable=True),
    # One payment per idempotency key, and never a payment without its key record.
    sa.UniqueConstraint("client_id", "idempotency_key"),
    sa.ForeignKeyConstraint(
        ["client_id", "idempotency_key"], ["idempotency_keys.client_id", "idempotency_keys.idempotency_key"]
    ),
    sa.CheckConstraint(f"amount > 0 AND amount <= {_plain(AMOUNT_MAX)}", name="amount_range"),
    sa.CheckConstraint(f"scale(amount) <= {AMOUNT_SCALE_MAX}", name="amount_scale"),
    sa.CheckConstraint(_iso_4217(), name="currency_code_iso4217"),
    sa.CheckConstraint(_one_of("state", PaymentState), name="state_known"),
    sa.CheckConstraint(_length("client_id", CLIENT_ID_LENGTH_MAX), name="client_id_length"),
    sa.CheckConstraint(_length("description", DESCRIPTION_LENGTH_MAX, required=False), name="description_length"),
    sa.CheckConstraint(
        _length("merchant_reference", MERCHANT_REFERENCE_LENGTH_MAX, required=False), name="merchant_reference_length"
    ),
    sa.CheckConstraint("jsonb_typeof(metadata) = 'object'", name="metadata_object"),
    sa.CheckConstraint(
        _length("provider_payment_id", evidence.PROVIDER_ID_LENGTH_MAX, required=False),
        name="provider_payment_id_length",
    ),
    sa.CheckConstraint(
        _length("provider_status", evidence.PROVIDER_STATUS_LENGTH_MAX, required=False), name="provider_status_length"
    ),
    sa.CheckConstraint("check_attempts >= 0", name="check_attempts_nonnegative"),
    # never refunded more than captured, however many refunds race for it
    sa.CheckConstraint(
        "0 <= refunded AND refunded <= refund_held AND refund_held <= amount", name="refunds_within_amount"
    ),
    sa.Index("ix_payments_client_id_created_at_id", "client_id", sa.text("created_at DESC"), sa.text("id DESC")),
    # The resolver's questions: which payments are due a check, by their schedule or by default.
    sa.Index(
        "ix_payments_undecided_updated_at", "updated_at", postgresql_where=sa.text(_one_of("state", UNDECIDED_STATES))
    ),
    sa.Index("ix_payments_next_check_at", "next_check_at", postgresql_where=sa.text("next_check_at IS NOT NULL")),
    # which payment a provider's word names by the provider's own id (a refund Ballast never asked for)
    sa.Index(
        "ix_payments_provider_payment_id",
        "provider_payment_id",
        postgresql_where=sa.text("provider_payment_id IS NOT NULL"),
    ),
    # which payments a settlement report of a period should hold (reconciliation's MISSING_PROVIDER)
    sa.Index("ix_payments_succeeded_at", "succeeded_at", postgresql_where=sa.text("succeeded_at IS NOT NULL")),
    comment=(
        "A payment Ballast was asked to take, in its internal state. Provider statuses are evidence"
        " stored beside the state, never a replacement for it."
    ),
)

payment_state_transitions = sa.Table(
    "payment_state_transitions",
    metadata,
    sa.Column("from_state", sa.Text, nullable=False),
    sa.Column("to_state", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("from_state", "to_state"),
    comment="The allowed (from, to) pairs of the payment state machine; a snapshot of server/domain.",
)

payment_corrections = sa.Table(
    "payment_corrections",
    metadata,
    sa.Column("from_state", sa.Text, nullable=False),
    sa.Column("to_state", sa.Text, nullable=False),
    sa.Column("approval", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("from_state", "to_state"),
    sa.CheckConstraint(_one_of("approval", Approval), name="approval_known"),
    comment=(
        "The corrections of a decided payment the provider's API contradicts, and whether a person must"
        " approve each; a snapshot of server/domain/corrections.py."
    ),
)

payment_transitions = sa.Table(
    "payment_transitions",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("payment_id", UUID(as_uuid=True), sa.ForeignKey("payments.id"), nullable=False),
    sa.Column("from_state", sa.Text, nullable=False),
    sa.Column("to_state", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
    sa.Column("evidence_ref", sa.Text, nullable=False),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # who approved a correction that needs a person (NULL for every other move)
    sa.Column("approved_by", sa.Text, nullable=True),
    sa.CheckConstraint(_length("cause", evidence.CAUSE_LENGTH_MAX), name="cause_length"),
    sa.CheckConstraint(_length("btrim(approved_by)", APPROVER_LENGTH_MAX), name="approved_by_length"),
    sa.CheckConstraint(_length("evidence_ref", evidence.EVIDENCE_REF_LENGTH_MAX), name="evidence_ref_length"),
    sa.CheckConstraint(_length("event", evidence.EVENT_LENGTH_MAX), name="event_length"),
    sa.Index("ix_payment_transitions_payment_id", "payment_id", "id"),
    comment="Every state change of every payment, with its cause and the evidence behind it. Append-only.",
)

provider_statuses = sa.Table(
    "provider_statuses",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("payment_id", UUID(as_uuid=True), sa.ForeignKey("payments.id"), nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("evidence_ref", sa.Text, nullable=False),
    sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint(_length("provider", evidence.PROVIDER_NAME_LENGTH_MAX), name="provider_length"),
    sa.CheckConstraint(_length("status", evidence.PROVIDER_STATUS_LENGTH_MAX), name="status_length"),
    sa.CheckConstraint(_length("evidence_ref", evidence.EVIDENCE_REF_LENGTH_MAX), name="evidence_ref_length"),
    sa.Index("ix_provider_statuses_payment_id", "payment_id", "id"),
    comment="What providers said about payments, verbatim: evidence, kept apart from the internal state.",
)

ledger_entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("event_key", sa.Text, nullable=False, unique=True),
    sa.Column("payment_id", UUID(as_uuid=True), sa.ForeignKey("payments.id"), nullable=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint(_length("event_key", EVENT_KEY_LENGTH_MAX), name="event_key_length"),
    sa.CheckConstraint(_length("description", ENTRY_DESCRIPTION_LENGTH_MAX, required=False), name="description_length"),
    sa.Index("ix_ledger_entries_payment_id", "payment_id"),
    sa.Index("ix_ledger_entries_posted_at_id", "posted_at", "id"),
    comment="One business event's posting; event_key is unique, so an event posts once. Append-only.",
)

ledger_lines = sa.Table(
    "ledger_lines",
    metadata,
    sa.Column("entry_id", UUID(as_uuid=True), sa.ForeignKey("ledger_entries.id"), nullable=False),
    sa.Column("line_number", sa.SmallInteger, nullable=False),
    sa.Column("account", sa.Text, nullable=False),
    sa.Column("currency_code", sa.Text, nullable=False),
    sa.Column("amount", sa.Numeric, nullable=False),
    sa.PrimaryKeyConstraint("entry_id", "line_number"),
    sa.CheckConstraint("amount <> 0", name="amount_nonzero"),
    sa.CheckConstraint(f"scale(amount) <= {AMOUNT_SCALE_MAX}", name="amount_scale"),
    sa.CheckConstraint(_iso_4217(), name="currency_code_iso4217"),
    sa.CheckConstraint(_length("account", ACCOUNT_LENGTH_MAX), name="account_length"),
    sa.CheckConstraint("line_number >= 1", name="line_number_positive"),
    sa.Index("ix_ledger_lines_account", "account", "currency_code"),
    comment="Signed amounts (debit positive, credit negative); each entry's lines sum to zero per currency.",
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("message_key", sa.Text, nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text, nullable=True),
    # the order the relay publishes an aggregate's events in: their commit order, as they are written
    # under the aggregate's row lock
    sa.Column("position", sa.BigInteger, sa.Identity(always=True), nullable=False, unique=True),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("dead_lettered_at", sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint(_length("topic", events.TOPIC_LENGTH_MAX), name="topic_length"),
    sa.CheckConstraint(_length("message_key", events.MESSAGE_KEY_LENGTH_MAX), name="message_key_length"),
    sa.CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
    sa.CheckConstraint("published_at IS NULL OR dead_lettered_at IS NULL", name="published_or_dead"),
    # The relay's two questions: which pending events are due, and is an event the head of its aggregate.
    sa.Index("ix_outbox_pending_position", "position", postgresql_where=sa.text("published_at IS NULL")),
    sa.Index(
        "ix_outbox_pending_message_key_position",
        "message_key",
        "position",
        postgresql_where=sa.text("published_at IS NULL"),
    ),
    comment="Events written in the same transaction as the change they announce; a relay publishes them.",
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("aggregate_type", sa.Text, nullable=False),
    sa.Column("aggregate_id", sa.Text, nullable=False),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("prev_hash", BYTEA, nullable=False),
    sa.Column("hash", BYTEA, nullable=False),
    sa.UniqueConstraint("aggregate_type", "aggregate_id", "sequence", name="uq_audit_log_aggregate_sequence"),
    sa.CheckConstraint(f"octet_length(hash) = {SHA256_BYTES}", name="hash_sha256"),
    sa.CheckConstraint(_length("action", events.AUDIT_ACTION_LENGTH_MAX), name="action_length"),
    sa.CheckConstraint(_length("actor", events.ACTOR_LENGTH_MAX), name="actor_length"),
    comment="Every change, hash-chained per aggregate so that tampering shows. Append-only.",
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("client_order_reference", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("client_id", "idempotency_key"),
    sa.ForeignKeyConstraint(
        ["client_id", "idempotency_key"], ["idempotency_keys.client_id", "idempotency_keys.idempotency_key"]
    ),
    sa.CheckConstraint(
        _length("client_order_reference", CLIENT_ORDER_REFERENCE_LENGTH_MAX, required=False),
        name="client_order_reference_length",
    ),
    sa.Index("ix_orders_client_id_created_at_id", "client_id", sa.text("created_at DESC"), sa.text("id DESC")),
    comment="An order a client submitted: one or more legs worked independently at a venue.",
)

legs = sa.Table(
    "legs",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.id"), nullable=False),
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
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # the resolver's schedule for a leg still at the venue's mercy
    sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("check_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("venue_order_id", sa.Text, nullable=True),
    # the latest modification (a cancel/replace at the venue) and its outcome; requested_quantity and
    # requested_limit_price are the terms it asked
    sa.Column("modification_id", UUID(as_uuid=True), nullable=True),
    sa.Column("modification_idempotency_key", sa.Text, nullable=True),
    sa.Column("modification_status", sa.Text, nullable=True),
    sa.Column("modification_reason", sa.Text, nullable=False, server_default=""),
    sa.UniqueConstraint("order_id", "position"),
    sa.CheckConstraint("position >= 1", name="position_positive"),
    sa.CheckConstraint(f"instrument_symbol ~ '^{INSTRUMENT_SYMBOL_PATTERN}$'", name="instrument_symbol"),
    sa.CheckConstraint(_one_of("side", Side), name="side_known"),
    sa.CheckConstraint(_one_of("order_type", OrderType), name="order_type_known"),
    sa.CheckConstraint(_decimal("quantity"), name="quantity_valid"),
    sa.CheckConstraint(_decimal("limit_price", nullable=True), name="limit_price_valid"),
    sa.CheckConstraint(f"(order_type = '{OrderType.LIMIT}') = (limit_price IS NOT NULL)", name="limit_price_iff_limit"),
    sa.CheckConstraint(_iso_4217(), name="currency_code_iso4217"),
    sa.CheckConstraint(_one_of("state", LegState), name="state_known"),
    sa.CheckConstraint(_length("state_reason", REASON_LENGTH_MAX, required=False), name="state_reason_length"),
    sa.CheckConstraint("filled_quantity >= 0 AND filled_quantity <= quantity", name="filled_within_quantity"),
    sa.CheckConstraint("fill_notional >= 0", name="fill_notional_nonnegative"),
    sa.CheckConstraint(_decimal("requested_quantity", nullable=True), name="requested_quantity_valid"),
    sa.CheckConstraint(_decimal("requested_limit_price", nullable=True), name="requested_limit_price_valid"),
    sa.CheckConstraint("check_attempts >= 0", name="check_attempts_nonnegative"),
    sa.CheckConstraint(
        _length("venue_order_id", evidence.PROVIDER_ID_LENGTH_MAX, required=False), name="venue_order_id_length"
    ),
    sa.CheckConstraint(_one_of("modification_status", ModificationStatus), name="modification_status_known"),
    sa.CheckConstraint(
        "(modification_id IS NULL) = (modification_status IS NULL)"
        " AND (modification_id IS NULL) = (modification_idempotency_key IS NULL)",
        name="modification_whole",
    ),
    sa.CheckConstraint(
        _length("modification_idempotency_key", IDEMPOTENCY_KEY_LENGTH_MAX, required=False),
        name="modification_idempotency_key_length",
    ),
    sa.CheckConstraint(
        _length("modification_reason", REASON_LENGTH_MAX, required=False), name="modification_reason_length"
    ),
    # The resolver's question: which legs still awaiting the venue are due a check.
    sa.Index(
        "ix_legs_working_updated_at", "updated_at", postgresql_where=sa.text(_one_of("state", AWAITING_VENUE_STATES))
    ),
    comment="One leg of an order, in its state; filled_quantity is the sum of its fills, kept by trigger.",
)

leg_fills = sa.Table(
    "leg_fills",
    metadata,
    sa.Column("leg_id", UUID(as_uuid=True), sa.ForeignKey("legs.id"), nullable=False),
    sa.Column("execution_id", sa.Text, nullable=False),
    sa.Column("quantity", sa.Numeric, nullable=False),
    sa.Column("price", sa.Numeric, nullable=False),
    sa.Column("fill_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("evidence_ref", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("leg_id", "execution_id"),
    sa.CheckConstraint(_length("execution_id", EXECUTION_ID_LENGTH_MAX), name="execution_id_length"),
    sa.CheckConstraint(_decimal("quantity"), name="quantity_valid"),
    sa.CheckConstraint(_decimal("price"), name="price_valid"),
    sa.CheckConstraint(_length("evidence_ref", evidence.EVIDENCE_REF_LENGTH_MAX), name="evidence_ref_length"),
    comment="Executions reported by the venue; (leg, execution id) is unique, so a fill applies once.",
)

leg_state_transitions = sa.Table(
    "leg_state_transitions",
    metadata,
    sa.Column("from_state", sa.Text, nullable=False),
    sa.Column("to_state", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("from_state", "to_state"),
    comment="The allowed (from, to) pairs of the order-leg state machine; a snapshot of server/domain.",
)

leg_transitions = sa.Table(
    "leg_transitions",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("leg_id", UUID(as_uuid=True), sa.ForeignKey("legs.id"), nullable=False),
    sa.Column("from_state", sa.Text, nullable=False),
    sa.Column("to_state", sa.Text, nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
    sa.Column("evidence_ref", sa.Text, nullable=False),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint(_length("cause", evidence.CAUSE_LENGTH_MAX), name="cause_length"),
    sa.CheckConstraint(_length("evidence_ref", evidence.EVIDENCE_REF_LENGTH_MAX), name="evidence_ref_length"),
    sa.Index("ix_leg_transitions_leg_id", "leg_id", "id"),
    comment="Every state change of every leg, with its cause and evidence. Append-only.",
)

processed_events = sa.Table(
    "processed_events",
    metadata,
    sa.Column("consumer_group", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("consumer_group", "event_id"),
    sa.CheckConstraint(_length("consumer_group", events.CONSUMER_GROUP_LENGTH_MAX), name="consumer_group_length"),
    sa.CheckConstraint(_length("event_id", events.EVENT_ID_LENGTH_MAX), name="event_id_length"),
    comment=(
        "Events a consumer group has applied, inserted first in the same transaction as the work:"
        " a second delivery finds the row and does nothing."
    ),
)

exposures = sa.Table(
    "exposures",
    metadata,
    sa.Column("account", sa.Text, nullable=False),
    sa.Column("currency_code", sa.Text, nullable=False),
    sa.Column("in_flight", sa.Numeric, nullable=False, server_default="0"),
    sa.Column("settled", sa.Numeric, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("account", "currency_code"),
    sa.CheckConstraint("in_flight >= 0", name="in_flight_nonnegative"),
    comment=(
        "Risk exposure per account and currency, projected from events: money of payments not yet"
        " decided (in flight) and the account's ledger balance (settled)."
    ),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("headers", JSONB, nullable=False),
    sa.Column("body", BYTEA, nullable=False),
    sa.CheckConstraint(_length("provider", evidence.PROVIDER_NAME_LENGTH_MAX), name="provider_length"),
    sa.CheckConstraint(_length("event_id", events.EVENT_ID_LENGTH_MAX, required=False), name="event_id_length"),
    sa.CheckConstraint(f"octet_length(body) <= {evidence.WEBHOOK_BODY_BYTES_MAX}", name="body_size"),
    sa.Index("ix_webhook_deliveries_provider_event_id", "provider", "event_id"),
    comment=(
        "Every signed webhook delivery as received (headers and raw body), duplicates included:"
        " the evidence a provider event was applied on. Append-only."
    ),
)

_OPEN = f"status = '{CaseStatus.OPEN}'"

cases = sa.Table(
    "cases",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("payment_id", UUID(as_uuid=True), sa.ForeignKey("payments.id"), nullable=True),
    sa.Column("status", sa.Text, nullable=False, server_default=CaseStatus.OPEN.value),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("evidence", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("leg_id", UUID(as_uuid=True), sa.ForeignKey("legs.id"), nullable=True),
    # set while the provider's own answer is still to be added to the case
    sa.Column("provider_check_due_at", sa.DateTime(timezone=True), nullable=True),
    # the report run whose finding opened it (reconciliation), which is what a case about no payment is about
    sa.Column("report_run_id", UUID(as_uuid=True), sa.ForeignKey("report_runs.id"), nullable=True),
    sa.CheckConstraint(_one_of("status", CaseStatus), name="status_known"),
    sa.CheckConstraint(
        "num_nonnulls(payment_id, leg_id) <= 1 AND num_nonnulls(payment_id, leg_id, report_run_id) >= 1",
        name="about_one_thing",
    ),
    sa.CheckConstraint(_length("kind", case_rules.KIND_LENGTH_MAX), name="kind_length"),
    sa.CheckConstraint(_length("summary", case_rules.SUMMARY_LENGTH_MAX), name="summary_length"),
    sa.CheckConstraint("jsonb_typeof(evidence) = 'array'", name="evidence_array"),
    # One open case of a kind per payment or leg: a second contradiction adds evidence to it.
    sa.Index("uq_cases_kind_payment_id", "kind", "payment_id", unique=True, postgresql_where=sa.text(_OPEN)),
    sa.Index("uq_cases_kind_leg_id", "kind", "leg_id", unique=True, postgresql_where=sa.text(_OPEN)),
    sa.Index(
        "ix_cases_provider_check_due_at",
        "provider_check_due_at",
        postgresql_where=sa.text(f"{_OPEN} AND provider_check_due_at IS NOT NULL"),
    ),
    sa.Index("ix_cases_report_run_id", "report_run_id", postgresql_where=sa.text("report_run_id IS NOT NULL")),
    comment=(
        "Investigation cases: what Ballast could not decide alone (contradictory provider evidence,"
        " an outcome that stayed unknown), with the evidence, for operations staff to resolve."
    ),
)

venue_instructions = sa.Table(
    "venue_instructions",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("leg_id", UUID(as_uuid=True), sa.ForeignKey("legs.id"), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("body", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("outcome", sa.Text, nullable=True),
    sa.CheckConstraint(_one_of("kind", VenueInstructionKind), name="kind_known"),
    sa.CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
    sa.CheckConstraint(_length("outcome", INSTRUCTION_OUTCOME_LENGTH_MAX, required=False), name="outcome_length"),
    sa.Index("ix_venue_instructions_next_attempt_at", "next_attempt_at", postgresql_where=sa.text("done_at IS NULL")),
    comment=(
        "What Ballast decided to ask of the venue (modify or cancel a leg), written in the transaction that"
        " decided it and sent until the venue answers, under the instruction's id as the venue's idempotency key."
    ),
)


refund_state_transitions = sa.Table(
    "refund_state_transitions",
    metadata,
    sa.Column("from_state", sa.Text, nullable=False),
    sa.Column("to_state", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("from_state", "to_state"),
    comment="The allowed (from, to) pairs of the refund state machine; a snapshot of server/domain.",
)

refunds = sa.Table(
    "refunds",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("payment_id", UUID(as_uuid=True), sa.ForeignKey("payments.id"), nullable=False),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("amount", sa.Numeric, nullable=False),
    sa.Column("currency_code", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("provider_refund_id", sa.Text, nullable=True),
    sa.Column("provider_status", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # the resolver's schedule for an undecided refund, as for payments
    sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("check_attempts", sa.Integer, nullable=False, server_default="0"),
    # when a retry last began sending the refund (a new refund's first attempt is its creation)
    sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("client_id", "idempotency_key"),
    sa.ForeignKeyConstraint(
        ["client_id", "idempotency_key"], ["idempotency_keys.client_id", "idempotency_keys.idempotency_key"]
    ),
    sa.CheckConstraint(f"amount > 0 AND amount <= {_plain(AMOUNT_MAX)}", name="amount_range"),
    sa.CheckConstraint(f"scale(amount) <= {AMOUNT_SCALE_MAX}", name="amount_scale"),
    sa.CheckConstraint(_iso_4217(), name="currency_code_iso4217"),
    sa.CheckConstraint(_one_of("state", RefundState), name="state_known"),
    sa.CheckConstraint(_length("reason", REFUND_REASON_LENGTH_MAX, required=False), name="reason_length"),
    sa.CheckConstraint("jsonb_typeof(metadata) = 'object'", name="metadata_object"),
    sa.CheckConstraint(
        _length("provider_refund_id", evidence.PROVIDER_ID_LENGTH_MAX, required=False),
        name="provider_refund_id_length",
    ),
    sa.CheckConstraint(
        _length("provider_status", evidence.PROVIDER_STATUS_LENGTH_MAX, required=False), name="provider_status_length"
    ),
    sa.CheckConstraint("check_attempts >= 0", name="check_attempts_nonnegative"),
    sa.Index("ix_refunds_payment_id_created_at_id", "payment_id", "created_at", "id"),
    sa.Index(
        "ix_refunds_undecided_updated_at",
        "updated_at",
        postgresql_where=sa.text(_one_of("state", UNDECIDED_REFUND_STATES)),
    ),
    sa.Index("ix_refunds_next_check_at", "next_check_at", postgresql_where=sa.text("next_check_at IS NOT NULL")),
    comment=(
        "A refund a client asked for of a captured payment, in its internal state; its amount counts"
        " against the payment's (payments.refund_held) from the moment it is recorded until it ends"
        " without money moving."
    ),
)

refund_transitions = sa.Table(
    "refund_transitions",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("refund_id", UUID(as_uuid=True), sa.ForeignKey("refunds.id"), nullable=False),
    sa.Column("from_state", sa.Text, nullable=False),
    sa.Column("to_state", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
    sa.Column("evidence_ref", sa.Text, nullable=False),
    sa.Column("provider_status", sa.Text, nullable=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint(_length("cause", evidence.CAUSE_LENGTH_MAX), name="cause_length"),
    sa.CheckConstraint(_length("evidence_ref", evidence.EVIDENCE_REF_LENGTH_MAX), name="evidence_ref_length"),
    sa.CheckConstraint(_length("event", evidence.EVENT_LENGTH_MAX), name="event_length"),
    sa.CheckConstraint(
        _length("provider_status", evidence.PROVIDER_STATUS_LENGTH_MAX, required=False), name="provider_status_length"
    ),
    sa.Index("ix_refund_transitions_refund_id", "refund_id", "id"),
    comment="Every state change of every refund, with its cause and the evidence behind it. Append-only.",
)

_RUN_FINAL = f"status IN ('{RunStatus.COMPLETED}', '{RunStatus.FAILED}')"

provider_settings = sa.Table(
    "provider_settings",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    # the agreed fee schedule of a charge: fee_bps of the gross plus a fixed fee, rounded half up
    sa.Column("fee_bps", sa.Numeric, nullable=False),
    sa.Column("fee_fixed_minor_units", sa.Integer, nullable=False),
    # a refund's fee: a fixed fee (the charge's fee is not returned)
    sa.Column("refund_fee_fixed_minor_units", sa.Integer, nullable=False, server_default="0"),
    # how far a reported fee, amount or FX adjustment may be off before it is a difference
    sa.Column("fee_tolerance_minor_units", sa.Integer, nullable=False, server_default="0"),
    sa.Column("amount_tolerance_minor_units", sa.Integer, nullable=False, server_default="0"),
    sa.Column("fx_tolerance_minor_units", sa.Integer, nullable=False, server_default="0"),
    # a charge settles this many days after it succeeded; a row may come this many days late before a
    # success without one is MISSING_PROVIDER
    sa.Column("settlement_delay_days", sa.Integer, nullable=False),
    sa.Column("settlement_window_days", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint(_length("provider", recon.PROVIDER_LENGTH_MAX), name="provider_length"),
    sa.CheckConstraint("fee_bps >= 0 AND fee_bps <= 10000", name="fee_bps_range"),
    sa.CheckConstraint(
        "fee_fixed_minor_units >= 0 AND refund_fee_fixed_minor_units >= 0 AND fee_tolerance_minor_units >= 0"
        " AND amount_tolerance_minor_units >= 0"
        " AND fx_tolerance_minor_units >= 0",
        name="minor_units_nonnegative",
    ),
    sa.CheckConstraint(
        "settlement_delay_days BETWEEN 0 AND 60 AND settlement_window_days BETWEEN 0 AND 60", name="days_range"
    ),
    comment=(
        "Per provider, what reconciliation compares its reports with: the agreed fee schedule, the"
        " tolerances and the settlement timing. Configuration as data, changed by operators."
    ),
)

report_runs = sa.Table(
    "report_runs",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("file_name", sa.Text, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("byte_count", sa.BigInteger, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("failure_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("row_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("invalid_row_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("matched_row_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("unmatched_row_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("opened_case_count", sa.BigInteger, nullable=False, server_default="0"),
    # the settlement dates its rows cover (known once normalized)
    sa.Column("period_start", sa.Date, nullable=True),
    sa.Column("period_end", sa.Date, nullable=True),
    # a later report of the same provider and period that replaces this one (both are kept)
    sa.Column("superseded_by", UUID(as_uuid=True), sa.ForeignKey("report_runs.id"), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
    # a worker's claim on the run: it is processed by one worker at a time, and taken over after a crash
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint(_length("provider", recon.PROVIDER_LENGTH_MAX), name="provider_length"),
    sa.CheckConstraint(_one_of("kind", ReportKind), name="kind_known"),
    sa.CheckConstraint(_one_of("status", RunStatus), name="status_known"),
    sa.CheckConstraint(_length("file_name", recon.FILE_NAME_LENGTH_MAX), name="file_name_length"),
    sa.CheckConstraint(_length("content_type", recon.CONTENT_TYPE_LENGTH_MAX), name="content_type_length"),
    sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256_hex"),
    sa.CheckConstraint(f"byte_count BETWEEN 1 AND {recon.REPORT_BYTES_MAX}", name="byte_count_range"),
    sa.CheckConstraint(_length("failure_reason", recon.ERROR_LENGTH_MAX, required=False), name="failure_reason_length"),
    sa.CheckConstraint(
        "row_count >= 0 AND invalid_row_count >= 0 AND matched_row_count >= 0 AND unmatched_row_count >= 0"
        " AND opened_case_count >= 0",
        name="counts_nonnegative",
    ),
    sa.CheckConstraint(f"(completed_at IS NOT NULL) = ({_RUN_FINAL})", name="completed_when_final"),
    # the same file twice is one run (unless its run failed)
    sa.Index(
        "uq_report_runs_provider_kind_sha256",
        "provider",
        "kind",
        "sha256",
        unique=True,
        postgresql_where=sa.text(f"status <> '{RunStatus.FAILED}'"),
    ),
    sa.Index("ix_report_runs_unfinished", "created_at", postgresql_where=sa.text(f"NOT ({_RUN_FINAL})")),
    comment=(
        "One provider report taken in, and where its processing stands (stage, counts, failure). The"
        " unit of reconciliation's work: every stage is idempotent per run."
    ),
)

report_chunks = sa.Table(
    "report_chunks",
    metadata,
    sa.Column("run_id", UUID(as_uuid=True), sa.ForeignKey("report_runs.id"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("bytes", BYTEA, nullable=False),
    sa.PrimaryKeyConstraint("run_id", "seq"),
    sa.CheckConstraint("seq >= 0", name="seq_nonnegative"),
    sa.CheckConstraint(f"octet_length(bytes) BETWEEN 1 AND {recon.CHUNK_BYTES_MAX}", name="bytes_size"),
    comment="A report's raw bytes exactly as received, in order, their SHA-256 on the run. Append-only.",
)
# stored as received, uncompressed: taking a report in writes its bytes at disk speed (pglz is slower)
_UNCOMPRESSED = sa.DDL("ALTER TABLE report_chunks ALTER COLUMN bytes SET STORAGE EXTERNAL")  # type: ignore[no-untyped-call]
sa.event.listen(report_chunks, "after_create", _UNCOMPRESSED)

report_rows = sa.Table(
    "report_rows",
    metadata,
    # no foreign key: a million rows are written by one statement of the run's own (its row locked), and a
    # key checked row by row would cost as much as the rest of the insert; runs are never deleted
    sa.Column("run_id", UUID(as_uuid=True), nullable=False),
    # 1-based, counting data rows only (the header line is not a row)
    sa.Column("row_number", sa.BigInteger, nullable=False),
    sa.Column("provider_transaction_id", sa.Text, nullable=True),
    sa.Column("source_id", sa.Text, nullable=True),
    sa.Column("reference", sa.Text, nullable=True),
    sa.Column("payout_id", sa.Text, nullable=True),
    sa.Column("type", sa.Text, nullable=True),
    sa.Column("status", sa.Text, nullable=True),
    sa.Column("currency_code", sa.Text, nullable=True),
    sa.Column("gross", sa.Numeric, nullable=True),
    sa.Column("fee", sa.Numeric, nullable=True),
    sa.Column("net", sa.Numeric, nullable=True),
    sa.Column("settlement_date", sa.Date, nullable=True),
    # why the row could not be normalized; its other fields are then whatever could be read
    sa.Column("error", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("run_id", "row_number"),
    sa.CheckConstraint("row_number >= 1", name="row_number_positive"),
    sa.CheckConstraint(_length("error", recon.ERROR_LENGTH_MAX, required=False), name="error_length"),
    sa.CheckConstraint(
        "error IS NOT NULL OR (provider_transaction_id IS NOT NULL AND type IS NOT NULL AND currency_code IS NOT NULL"
        " AND gross IS NOT NULL AND fee IS NOT NULL AND net IS NOT NULL AND settlement_date IS NOT NULL"
        " AND net = gross - fee)",
        name="valid_or_explained",
    ),
    comment="A report's rows in canonical form (or, for a row that does not parse, why). Written once per run.",
)

report_findings = sa.Table(
    "report_findings",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("run_id", UUID(as_uuid=True), sa.ForeignKey("report_runs.id"), nullable=False),
    sa.Column("row_number", sa.BigInteger, nullable=True),
    sa.Column("difference", sa.Text, nullable=False),
    sa.Column("payment_id", UUID(as_uuid=True), sa.ForeignKey("payments.id"), nullable=True),
    sa.Column("refund_id", UUID(as_uuid=True), sa.ForeignKey("refunds.id"), nullable=True),
    sa.Column("payout_id", sa.Text, nullable=True),
    # Ballast's side and the provider's, field by field, as JSON strings (amounts exact)
    sa.Column("expected", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("observed", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("case_id", UUID(as_uuid=True), sa.ForeignKey("cases.id"), nullable=True),
    # a later run whose row closed this finding (a TIMING_MISMATCH's row arriving)
    sa.Column("closed_by_run_id", UUID(as_uuid=True), sa.ForeignKey("report_runs.id"), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint(_one_of("difference", Difference), name="difference_known"),
    sa.ForeignKeyConstraint(["run_id", "row_number"], ["report_rows.run_id", "report_rows.row_number"]),
    sa.Index("ix_report_findings_run_id_difference", "run_id", "difference"),
    # "has this row a finding?", asked of every row of a run
    sa.Index("ix_report_findings_run_id_row_number", "run_id", "row_number"),
    sa.Index("ix_report_findings_payment_id", "payment_id", postgresql_where=sa.text("payment_id IS NOT NULL")),
    comment=(
        "Every difference a report run found between the provider's rows and Ballast's records, by class,"
        " with both sides; the case it opened, if it needed a person."
    ),
)
