"""Refunds: a refund of a captured payment as its own resource, and PARTIALLY_REFUNDED payments.

Adds the refunds, their machine (refund_state_transitions) and their history (refund_transitions);
the payment's refund totals (refund_held, refunded) with the CHECK that keeps them within its amount,
and an index on the provider's id of a payment (a refund Ballast never asked for names only that);
the PARTIALLY_REFUNDED state and the payment moves its own refunds make. Its functions and triggers
are its own frozen copy, 0015_refunds.sql (server/db/invariants.sql describes the head revision).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

from server.db import migrate
from server.db.migrate import frozen_sql, sql_statements

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

INVARIANTS_SQL = "0015_refunds.sql"
INVARIANTS_SHA256 = "942c47a7838c9339fc5b607bb053be89279a8f2622c105d7bf7e5bd6c1270069"

PAYMENT_STATES_BEFORE = (
    "'RECORDED', 'PENDING', 'UNKNOWN', 'SUCCEEDED', 'FAILED', 'REJECTED', 'REFUND_PENDING', 'REFUNDED', 'EXPIRED'"
)
PAYMENT_STATES = (
    "'RECORDED', 'PENDING', 'UNKNOWN', 'SUCCEEDED', 'FAILED', 'REJECTED', 'REFUND_PENDING', 'REFUNDED',"
    " 'EXPIRED', 'PARTIALLY_REFUNDED'"
)
REFUND_STATES = "'RECORDED', 'PENDING', 'UNKNOWN', 'SUCCEEDED', 'FAILED', 'REJECTED', 'EXPIRED'"
#: The payment moves its own refunds make (server/domain/payment_states.py, REFUND_MOVES).
PAYMENT_TRANSITIONS = [
    ("SUCCEEDED", "PARTIALLY_REFUNDED"),
    ("SUCCEEDED", "REFUNDED"),
    ("PARTIALLY_REFUNDED", "REFUNDED"),
]
#: The refund machine (server/domain/refund_states.py).
REFUND_TRANSITIONS = [
    ("RECORDED", "PENDING"), ("RECORDED", "UNKNOWN"), ("RECORDED", "SUCCEEDED"), ("RECORDED", "FAILED"),
    ("RECORDED", "REJECTED"), ("RECORDED", "EXPIRED"),
    ("PENDING", "SUCCEEDED"), ("PENDING", "FAILED"),
    ("UNKNOWN", "PENDING"), ("UNKNOWN", "SUCCEEDED"), ("UNKNOWN", "FAILED"), ("UNKNOWN", "REJECTED"),
]  # fmt: skip
FUNCTIONS = ["refunds_guard()", "refund_transitions_apply()"]


def _check(table: str, name: str, condition: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(condition, name=op.f(f"ck_{table}_{name}"))


def _length(column: str, length_max: int, *, required: bool = True) -> str:
    return f"char_length({column}) BETWEEN 1 AND {length_max}" if required else f"char_length({column}) <= {length_max}"


def _payments() -> None:
    op.drop_constraint(op.f("ck_payments_state_known"), "payments", type_="check")
    op.create_check_constraint(op.f("ck_payments_state_known"), "payments", f"state IN ({PAYMENT_STATES})")
    op.add_column("payments", sa.Column("refund_held", sa.Numeric, nullable=False, server_default="0"))
    op.add_column("payments", sa.Column("refunded", sa.Numeric, nullable=False, server_default="0"))
    op.create_index(
        op.f("ix_payments_provider_payment_id"),
        "payments",
        ["provider_payment_id"],
        postgresql_where=sa.text("provider_payment_id IS NOT NULL"),
    )
    op.create_check_constraint(
        op.f("ck_payments_refunds_within_amount"),
        "payments",
        "0 <= refunded AND refunded <= refund_held AND refund_held <= amount",
    )


def _refunds() -> None:
    op.create_table(
        "refund_state_transitions",
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("from_state", "to_state", name=op.f("pk_refund_state_transitions")),
        comment="The allowed (from, to) pairs of the refund state machine; a snapshot of server/domain.",
    )
    op.create_table(
        "refunds",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("payment_id", UUID(as_uuid=True), nullable=False),
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
        sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("check_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
        sa.UniqueConstraint("client_id", "idempotency_key", name=op.f("uq_refunds_client_id_idempotency_key")),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_refunds_payment_id_payments")),
        sa.ForeignKeyConstraint(
            ["client_id", "idempotency_key"],
            ["idempotency_keys.client_id", "idempotency_keys.idempotency_key"],
            name=op.f("fk_refunds_client_id_idempotency_key_idempotency_keys"),
        ),
        _check("refunds", "amount_range", "amount > 0 AND amount <= 1000000000000000"),
        _check("refunds", "amount_scale", "scale(amount) <= 4"),
        _check("refunds", "currency_code_iso4217", "currency_code ~ '^[A-Z]{3}$'"),
        _check("refunds", "state_known", f"state IN ({REFUND_STATES})"),
        _check("refunds", "reason_length", _length("reason", 255, required=False)),
        _check("refunds", "metadata_object", "jsonb_typeof(metadata) = 'object'"),
        _check("refunds", "provider_refund_id_length", _length("provider_refund_id", 255, required=False)),
        _check("refunds", "provider_status_length", _length("provider_status", 64, required=False)),
        _check("refunds", "check_attempts_nonnegative", "check_attempts >= 0"),
        comment=(
            "A refund a client asked for of a captured payment, in its internal state; its amount counts"
            " against the payment's (payments.refund_held) from the moment it is recorded until it ends"
            " without money moving."
        ),
    )
    op.create_index(op.f("ix_refunds_payment_id_created_at_id"), "refunds", ["payment_id", "created_at", "id"])
    op.create_index(
        op.f("ix_refunds_undecided_updated_at"),
        "refunds",
        ["updated_at"],
        postgresql_where=sa.text("state IN ('RECORDED', 'PENDING', 'UNKNOWN')"),
    )
    op.create_index(
        op.f("ix_refunds_next_check_at"),
        "refunds",
        ["next_check_at"],
        postgresql_where=sa.text("next_check_at IS NOT NULL"),
    )
    op.create_table(
        "refund_transitions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("refund_id", UUID(as_uuid=True), nullable=False),
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        sa.Column("evidence_ref", sa.Text, nullable=False),
        sa.Column("provider_status", sa.Text, nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refund_transitions")),
        sa.ForeignKeyConstraint(["refund_id"], ["refunds.id"], name=op.f("fk_refund_transitions_refund_id_refunds")),
        _check("refund_transitions", "cause_length", _length("cause", 64)),
        _check("refund_transitions", "evidence_ref_length", _length("evidence_ref", 500)),
        _check("refund_transitions", "event_length", _length("event", 64)),
        _check("refund_transitions", "provider_status_length", _length("provider_status", 64, required=False)),
        comment="Every state change of every refund, with its cause and the evidence behind it. Append-only.",
    )
    op.create_index(op.f("ix_refund_transitions_refund_id"), "refund_transitions", ["refund_id", "id"])


def _rules() -> None:
    """The rule rows: the refund machine's before its table refuses changes; the payment's new moves
    with its table's refusal lifted for this transaction only."""
    op.bulk_insert(
        sa.table("refund_state_transitions", sa.column("from_state"), sa.column("to_state")),
        [{"from_state": a, "to_state": b} for a, b in REFUND_TRANSITIONS],
    )
    op.execute("ALTER TABLE payment_state_transitions DISABLE TRIGGER payment_state_transitions_append_only")
    op.bulk_insert(
        sa.table("payment_state_transitions", sa.column("from_state"), sa.column("to_state")),
        [{"from_state": a, "to_state": b} for a, b in PAYMENT_TRANSITIONS],
    )
    op.execute("ALTER TABLE payment_state_transitions ENABLE TRIGGER payment_state_transitions_append_only")


def _invariants() -> None:
    for statement in frozen_sql(revision, INVARIANTS_SQL, INVARIANTS_SHA256):
        op.get_bind().exec_driver_sql(statement)


def upgrade() -> None:
    _payments()
    _refunds()
    _rules()
    _invariants()


def _functions_of_0014(*names: str) -> list[str]:
    """The named functions as revision 0014 created them (its frozen copy), to put back."""
    script = (migrate.FROZEN_SQL_DIR / "0014_invariants.sql").read_text()
    found = []
    for statement in sql_statements(script):
        body = statement[statement.find("CREATE FUNCTION") :]
        if any(body.startswith(f"CREATE FUNCTION {name}(") for name in names):
            found.append(body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    if len(found) != len(names):
        raise RuntimeError(f"0014_invariants.sql lacks one of {names}")
    return found


def downgrade() -> None:
    """Back to 0014; refused by the state CHECK while any payment is PARTIALLY_REFUNDED (refunds are
    money facts: a downgrade never drops them silently, so one that has refunds to drop is refused)."""
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM refunds) THEN RAISE EXCEPTION"
        " 'refunds exist: revision 0015 cannot be undone without losing them'; END IF; END $$"
    )
    op.drop_table("refund_transitions")
    op.drop_table("refunds")
    op.drop_table("refund_state_transitions")
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
    for statement in _functions_of_0014("payments_guard_state", "payment_transitions_apply"):
        op.get_bind().exec_driver_sql(statement)
    op.execute("ALTER TABLE payment_state_transitions DISABLE TRIGGER payment_state_transitions_append_only")
    for from_state, to_state in PAYMENT_TRANSITIONS:
        op.execute(
            f"DELETE FROM payment_state_transitions WHERE from_state = '{from_state}' AND to_state = '{to_state}'"
        )
    op.execute("ALTER TABLE payment_state_transitions ENABLE TRIGGER payment_state_transitions_append_only")
    op.drop_constraint(op.f("ck_payments_refunds_within_amount"), "payments", type_="check")
    op.drop_index(op.f("ix_payments_provider_payment_id"), "payments")
    op.drop_column("payments", "refunded")
    op.drop_column("payments", "refund_held")
    op.drop_constraint(op.f("ck_payments_state_known"), "payments", type_="check")
    op.create_check_constraint(op.f("ck_payments_state_known"), "payments", f"state IN ({PAYMENT_STATES_BEFORE})")
