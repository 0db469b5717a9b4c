"""The order of witnesses: corrections through their own table, expiry of abandoned payments, due checks.

- EXPIRED: a RECORDED payment that was never sent (or that the provider, asked, does not have) and
  whose client never came back. `submitted_at` stamps a retry's attempt to send a payment (a new
  payment's first attempt is its creation), so an expiry never races a submission.
- Corrections: a decided payment the provider's API contradicts moves through a CORRECTION
  transition, allowed only along the pairs of `payment_corrections` (a snapshot of
  server/domain/corrections.py); one that needs a person, or any correction of a payment corrected
  before, is refused without `approved_by`.
- A payment that moves starts its own check schedule: the transition resets `check_attempts` and
  `next_check_at`, keeping a check already due when the payment stays undecided (a webhook asked
  for it). Any payment (decided ones too, after a webhook claimed news) is due when `next_check_at`
  has passed.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_STATES = "'RECORDED', 'PENDING', 'UNKNOWN', 'SUCCEEDED', 'FAILED', 'REJECTED', 'REFUND_PENDING', 'REFUNDED', 'EXPIRED'"
_STATES_BEFORE = "'RECORDED', 'PENDING', 'UNKNOWN', 'SUCCEEDED', 'FAILED', 'REJECTED', 'REFUND_PENDING', 'REFUNDED'"

# A snapshot of server/domain/corrections.py (a test compares them).
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

_CHECK_TRANSITION = """
        CREATE OR REPLACE FUNCTION payment_transitions_apply() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            current_state text;
            approval text;
        BEGIN
            SELECT state INTO current_state FROM payments WHERE id = NEW.payment_id FOR UPDATE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'payment % does not exist', NEW.payment_id
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
            IF current_state <> NEW.from_state THEN
                RAISE EXCEPTION 'payment % is %, not % as the transition claims', NEW.payment_id, current_state,
                    NEW.from_state USING ERRCODE = 'serialization_failure';
            END IF;
            IF NEW.event = 'CORRECTION' THEN
                SELECT c.approval INTO approval FROM payment_corrections c
                WHERE c.from_state = NEW.from_state AND c.to_state = NEW.to_state;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'payment: correcting % to % is not in the correction table', NEW.from_state,
                        NEW.to_state USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_correction_allowed';
                END IF;
                IF NEW.approved_by IS NULL AND (approval = 'PERSON' OR EXISTS (
                        SELECT 1 FROM payment_transitions t
                        WHERE t.payment_id = NEW.payment_id AND t.event = 'CORRECTION')) THEN
                    RAISE EXCEPTION 'payment %: correcting % to % needs a person''s approval', NEW.payment_id,
                        NEW.from_state, NEW.to_state
                        USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_correction_approved';
                END IF;
            ELSIF NOT EXISTS (SELECT 1 FROM payment_state_transitions
                              WHERE from_state = NEW.from_state AND to_state = NEW.to_state) THEN
                RAISE EXCEPTION 'payment: % -> % is not an allowed transition', NEW.from_state, NEW.to_state
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_transition_allowed';
            END IF;
            RETURN NEW;
        END $$
"""

_MOVE = """
        CREATE OR REPLACE FUNCTION payment_transitions_move() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            twice uuid;
        BEGIN
            SELECT payment_id INTO twice FROM appended GROUP BY payment_id HAVING count(*) > 1 LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'payment % moves twice in one statement; append its transitions one at a time', twice
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_transition_once_per_statement';
            END IF;
            UPDATE payments p SET state = a.to_state, updated_at = a.occurred_at{reset}
            FROM appended a WHERE p.id = a.payment_id;
            RETURN NULL;
        END $$
"""


def upgrade() -> None:
    op.add_column("payments", sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint(op.f("ck_payments_state_known"), "payments")
    op.create_check_constraint(op.f("ck_payments_state_known"), "payments", f"state IN ({_STATES})")
    op.execute("ALTER TABLE payment_state_transitions DISABLE TRIGGER payment_state_transitions_append_only")
    op.execute("INSERT INTO payment_state_transitions (from_state, to_state) VALUES ('RECORDED', 'EXPIRED')")
    op.execute("ALTER TABLE payment_state_transitions ENABLE TRIGGER payment_state_transitions_append_only")

    op.create_table(
        "payment_corrections",
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.Column("approval", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("from_state", "to_state", name=op.f("pk_payment_corrections")),
        sa.CheckConstraint("approval IN ('AUTOMATIC', 'PERSON')", name=op.f("ck_payment_corrections_approval_known")),
        comment=(
            "The corrections of a decided payment the provider's API contradicts, and whether a person must"
            " approve each; a snapshot of server/domain/corrections.py."
        ),
    )
    op.bulk_insert(
        sa.table("payment_corrections", sa.column("from_state"), sa.column("to_state"), sa.column("approval")),
        [{"from_state": a, "to_state": b, "approval": c} for a, b, c in PAYMENT_CORRECTIONS],
    )
    op.execute(
        "CREATE TRIGGER payment_corrections_append_only BEFORE INSERT OR UPDATE OR DELETE ON payment_corrections"
        " FOR EACH ROW EXECUTE FUNCTION refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER payment_corrections_no_truncate BEFORE TRUNCATE ON payment_corrections"
        " FOR EACH STATEMENT EXECUTE FUNCTION refuse_change()"
    )

    op.add_column("payment_transitions", sa.Column("approved_by", sa.Text, nullable=True))
    op.create_check_constraint(
        op.f("ck_payment_transitions_approved_by_length"),
        "payment_transitions",
        "char_length(btrim(approved_by)) BETWEEN 1 AND 128",
    )
    op.execute(_CHECK_TRANSITION)
    # a check a webhook asked for (due already) survives a move to another undecided state; a lease or
    # a backoff does not, and a decided payment needs none
    op.execute(
        _MOVE.format(
            reset=""",
                check_attempts = 0,
                next_check_at = CASE WHEN a.to_state IN ('RECORDED', 'PENDING', 'UNKNOWN')
                                      AND p.next_check_at <= a.occurred_at THEN p.next_check_at END"""
        )
    )

    op.drop_index(op.f("ix_payments_undecided_updated_at"), table_name="payments")
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


def downgrade() -> None:
    op.drop_index(op.f("ix_payments_next_check_at"), table_name="payments")
    op.drop_index(op.f("ix_payments_undecided_updated_at"), table_name="payments")
    op.create_index(
        op.f("ix_payments_undecided_updated_at"),
        "payments",
        ["updated_at"],
        postgresql_where=sa.text("state IN ('UNKNOWN', 'PENDING')"),
    )
    op.execute(_MOVE.format(reset=""))
    op.execute(_CHECK_TRANSITION.replace("IF NEW.event = 'CORRECTION' THEN", "IF false THEN"))
    op.drop_constraint(op.f("ck_payment_transitions_approved_by_length"), "payment_transitions")
    op.drop_column("payment_transitions", "approved_by")
    op.drop_table("payment_corrections")
    op.execute("ALTER TABLE payment_state_transitions DISABLE TRIGGER payment_state_transitions_append_only")
    op.execute("DELETE FROM payment_state_transitions WHERE to_state = 'EXPIRED'")
    op.execute("ALTER TABLE payment_state_transitions ENABLE TRIGGER payment_state_transitions_append_only")
    op.drop_constraint(op.f("ck_payments_state_known"), "payments")
    op.create_check_constraint(op.f("ck_payments_state_known"), "payments", f"state IN ({_STATES_BEFORE})")
    op.drop_column("payments", "submitted_at")
