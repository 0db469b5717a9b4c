"""A leg's modification is a cancel/replace at the venue: of a working leg, or a filled one re-opened.

- The leg machine (a snapshot of server/domain/order_legs.py): a working leg (PENDING,
  PARTIALLY_FILLED) may be modified too; a MODIFYING leg still takes the fills the venue made under
  its old terms (MODIFYING -> MODIFYING), and the venue's answer returns it to what its fills say
  under the terms then in force (MODIFYING -> PENDING, PARTIALLY_FILLED or FILLED). A refused
  modification no longer rejects the leg.
- The latest modification and its outcome on the leg: its id (the venue instruction's, sent as the
  venue's idempotency key), the ModifyLeg key that asked it, its status and why it was refused.
  `requested_quantity` and `requested_limit_price` stay as the terms it asked once it is answered.
- A MODIFYING leg takes fills, and the resolver checks it like a working leg.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

NEW_LEG_TRANSITIONS = [
    ("PENDING", "MODIFYING"), ("PARTIALLY_FILLED", "MODIFYING"),
    ("MODIFYING", "MODIFYING"), ("MODIFYING", "PENDING"), ("MODIFYING", "PARTIALLY_FILLED"),
]  # fmt: skip

_FILLS_APPLY = """
        CREATE OR REPLACE FUNCTION leg_fills_apply() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            current_state text;
        BEGIN
            SELECT state INTO current_state FROM legs WHERE id = NEW.leg_id FOR UPDATE;
            IF current_state NOT IN ({states}) THEN
                RAISE EXCEPTION 'leg % is %: only a working leg ({names}) can fill', NEW.leg_id,
                    current_state USING ERRCODE = 'check_violation', CONSTRAINT = 'leg_fills_working_leg';
            END IF;
            UPDATE legs SET filled_quantity = filled_quantity + NEW.quantity,
                            fill_notional = fill_notional + NEW.quantity * NEW.price,
                            updated_at = now()
            WHERE id = NEW.leg_id;
            RETURN NEW;
        END $$
"""
_FILLING = "'PENDING', 'PARTIALLY_FILLED', 'MODIFYING'"
_FILLING_BEFORE = "'PENDING', 'PARTIALLY_FILLED'"


def _edit_leg_machine(statement: str) -> None:
    op.execute("ALTER TABLE leg_state_transitions DISABLE TRIGGER leg_state_transitions_append_only")
    op.execute(statement)
    op.execute("ALTER TABLE leg_state_transitions ENABLE TRIGGER leg_state_transitions_append_only")


def _pairs() -> str:
    return ", ".join(f"('{a}', '{b}')" for a, b in NEW_LEG_TRANSITIONS)


def _working_index(states: str) -> None:
    op.drop_index(op.f("ix_legs_working_updated_at"), table_name="legs")
    op.create_index(
        op.f("ix_legs_working_updated_at"), "legs", ["updated_at"], postgresql_where=sa.text(f"state IN ({states})")
    )


def upgrade() -> None:
    _edit_leg_machine(f"INSERT INTO leg_state_transitions (from_state, to_state) VALUES {_pairs()}")
    op.execute(_FILLS_APPLY.format(states=_FILLING, names=_FILLING.replace("'", "")))
    _working_index("'SUBMITTED', " + _FILLING)

    op.add_column("legs", sa.Column("modification_id", UUID(as_uuid=True), nullable=True))
    op.add_column("legs", sa.Column("modification_idempotency_key", sa.Text, nullable=True))
    op.add_column("legs", sa.Column("modification_status", sa.Text, nullable=True))
    op.add_column("legs", sa.Column("modification_reason", sa.Text, nullable=False, server_default=""))
    # a leg MODIFYING before this revision: its modification is the latest one queued for the venue
    op.execute(
        """
        UPDATE legs l SET modification_status = 'PENDING', modification_idempotency_key = '',
            modification_id = coalesce(
                (SELECT i.id FROM venue_instructions i WHERE i.leg_id = l.id AND i.kind = 'modify'
                 ORDER BY i.created_at DESC LIMIT 1),
                gen_random_uuid())
        WHERE l.state = 'MODIFYING'
        """
    )
    op.create_check_constraint(
        op.f("ck_legs_modification_status_known"),
        "legs",
        "modification_status IN ('PENDING', 'CONFIRMED', 'REFUSED', 'CANCELED')",
    )
    op.create_check_constraint(
        op.f("ck_legs_modification_whole"),
        "legs",
        "(modification_id IS NULL) = (modification_status IS NULL)"
        " AND (modification_id IS NULL) = (modification_idempotency_key IS NULL)",
    )
    op.create_check_constraint(
        op.f("ck_legs_modification_idempotency_key_length"), "legs", "char_length(modification_idempotency_key) <= 255"
    )
    op.create_check_constraint(
        op.f("ck_legs_modification_reason_length"), "legs", "char_length(modification_reason) <= 1000"
    )


def downgrade() -> None:
    for name in ("reason_length", "idempotency_key_length", "whole", "status_known"):
        op.drop_constraint(op.f(f"ck_legs_modification_{name}"), "legs")
    for column in ("modification_reason", "modification_status", "modification_idempotency_key", "modification_id"):
        op.drop_column("legs", column)
    _working_index("'SUBMITTED', " + _FILLING_BEFORE)
    op.execute(_FILLS_APPLY.format(states=_FILLING_BEFORE, names=_FILLING_BEFORE.replace("'", "")))
    _edit_leg_machine(f"DELETE FROM leg_state_transitions WHERE (from_state, to_state) IN ({_pairs()})")
