"""Payments move set-wise: one UPDATE per statement of transitions, and one query per balance check.

A statement that appends the transitions of many payments (a batch of webhooks) used to update each
payment with a statement of its own, from the row trigger. Each transition is still checked by the
row trigger, under the payment's row lock, before it is stored; the payments now move together, in
one UPDATE at the end of the statement, and a statement may move a payment once. The ledger balance
check reads an entry's lines once instead of twice. What is enforced does not change.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_CHECK_TRANSITION = """
    SELECT state INTO current_state FROM payments WHERE id = NEW.payment_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'payment % does not exist', NEW.payment_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF current_state <> NEW.from_state THEN
        RAISE EXCEPTION 'payment % is %, not % as the transition claims', NEW.payment_id, current_state,
            NEW.from_state USING ERRCODE = 'serialization_failure';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payment_state_transitions
                   WHERE from_state = NEW.from_state AND to_state = NEW.to_state) THEN
        RAISE EXCEPTION 'payment: % -> % is not an allowed transition', NEW.from_state, NEW.to_state
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_transition_allowed';
    END IF;
"""


_REFUSE_FEW_LINES = """
    IF line_count < 2 THEN
        RAISE EXCEPTION 'ledger entry % has % lines; a double entry needs two or more', entry, line_count
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entry_lines';
    END IF;
"""
_REFUSE_UNBALANCED = """
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entry % does not sum to zero: %', entry, unbalanced
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entry_balanced';
    END IF;
"""


def _transition_check(move_here: bool) -> str:
    move = "UPDATE payments SET state = NEW.to_state, updated_at = NEW.occurred_at WHERE id = NEW.payment_id;"
    return f"""
        CREATE OR REPLACE FUNCTION payment_transitions_apply() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            current_state text;
        BEGIN
            {_CHECK_TRANSITION}
            {move if move_here else ""}
            RETURN NEW;
        END $$
    """


def upgrade() -> None:
    op.execute(_transition_check(move_here=False))
    # After the statement: every transition in it was checked against the state its payment had
    # before the statement, so a payment moved twice in one statement would skip a check.
    op.execute(
        """
        CREATE FUNCTION payment_transitions_move() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            twice uuid;
        BEGIN
            SELECT payment_id INTO twice FROM appended GROUP BY payment_id HAVING count(*) > 1 LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'payment % moves twice in one statement; append its transitions one at a time', twice
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_transition_once_per_statement';
            END IF;
            UPDATE payments p SET state = a.to_state, updated_at = a.occurred_at
            FROM appended a WHERE p.id = a.payment_id;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER payment_transitions_move AFTER INSERT ON payment_transitions"
        " REFERENCING NEW TABLE AS appended FOR EACH STATEMENT EXECUTE FUNCTION payment_transitions_move()"
    )
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION ledger_entry_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            entry uuid;
            line_count bigint;
            unbalanced text;
        BEGIN
            IF TG_ARGV[0] = 'id' THEN  -- the entry's id column, named by the trigger
                entry := NEW.id;
            ELSE
                entry := NEW.entry_id;
            END IF;
            SELECT coalesce(sum(lines), 0),
                   string_agg(currency_code || ' ' || total, ', ') FILTER (WHERE total <> 0)
            INTO line_count, unbalanced
            FROM (SELECT currency_code, count(*) AS lines, sum(amount) AS total FROM ledger_lines
                  WHERE entry_id = entry GROUP BY currency_code) AS totals;
            {_REFUSE_FEW_LINES}
            {_REFUSE_UNBALANCED}
            RETURN NULL;
        END $$
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION ledger_entry_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            entry uuid := (to_jsonb(NEW) ->> TG_ARGV[0])::uuid;
            line_count integer;
            unbalanced text;
        BEGIN
            SELECT count(*) INTO line_count FROM ledger_lines WHERE entry_id = entry;
            {_REFUSE_FEW_LINES}
            SELECT string_agg(currency_code || ' ' || total, ', ') INTO unbalanced FROM (
                SELECT currency_code, sum(amount) AS total FROM ledger_lines
                WHERE entry_id = entry GROUP BY currency_code HAVING sum(amount) <> 0
            ) AS totals;
            {_REFUSE_UNBALANCED}
            RETURN NULL;
        END $$
        """
    )
    op.execute("DROP TRIGGER payment_transitions_move ON payment_transitions")
    op.execute("DROP FUNCTION payment_transitions_move()")
    op.execute(_transition_check(move_here=True))
