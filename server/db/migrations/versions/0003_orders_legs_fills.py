"""Orders, their legs, fills and leg transitions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

As for payments, PostgreSQL holds the rules: a leg is born SUBMITTED and changes state only by an
appended transition from the allowed pairs (a snapshot of server/domain/order_legs.py); its filled
quantity changes only by an appended fill, never decreases and never exceeds the ordered quantity;
an execution id is recorded once per leg.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LEG_TRANSITIONS = [
    ("SUBMITTED", "PENDING"), ("SUBMITTED", "REJECTED"), ("SUBMITTED", "CLOSED"),
    ("PENDING", "FILLED"), ("PENDING", "REJECTED"), ("PENDING", "PARTIALLY_FILLED"), ("PENDING", "CLOSED"),
    ("PARTIALLY_FILLED", "PARTIALLY_FILLED"), ("PARTIALLY_FILLED", "FILLED"), ("PARTIALLY_FILLED", "CLOSED"),
    ("FILLED", "MODIFYING"), ("FILLED", "CLOSED"),
    ("MODIFYING", "FILLED"), ("MODIFYING", "REJECTED"), ("MODIFYING", "CLOSED"),
    ("REJECTED", "CLOSED"),
]  # fmt: skip

DECIMAL_CHECK = "{column} > 0 AND scale({column}) <= 12 AND {column} < 1000000000000000000"


def _create_tables() -> None:
    op.create_table(
        "orders",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("client_order_reference", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("client_id", "idempotency_key", name=op.f("uq_orders_client_id_idempotency_key")),
        sa.ForeignKeyConstraint(
            ["client_id", "idempotency_key"],
            ["idempotency_keys.client_id", "idempotency_keys.idempotency_key"],
            name=op.f("fk_orders_client_id_idempotency_key_idempotency_keys"),
        ),
        sa.CheckConstraint(
            "char_length(client_order_reference) <= 255", name=op.f("ck_orders_client_order_reference_length")
        ),
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
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legs")),
        sa.UniqueConstraint("order_id", "position", name=op.f("uq_legs_order_id_position")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_legs_order_id_orders")),
        sa.CheckConstraint("position >= 1", name=op.f("ck_legs_position_positive")),
        sa.CheckConstraint("instrument_symbol ~ '^[A-Za-z0-9._/-]{1,32}$'", name=op.f("ck_legs_instrument_symbol")),
        sa.CheckConstraint("side IN ('BUY', 'SELL')", name=op.f("ck_legs_side_known")),
        sa.CheckConstraint("order_type IN ('MARKET', 'LIMIT')", name=op.f("ck_legs_order_type_known")),
        sa.CheckConstraint(DECIMAL_CHECK.format(column="quantity"), name=op.f("ck_legs_quantity_valid")),
        sa.CheckConstraint(
            f"limit_price IS NULL OR ({DECIMAL_CHECK.format(column='limit_price')})",
            name=op.f("ck_legs_limit_price_valid"),
        ),
        sa.CheckConstraint(
            "(order_type = 'LIMIT') = (limit_price IS NOT NULL)", name=op.f("ck_legs_limit_price_iff_limit")
        ),
        sa.CheckConstraint("currency_code ~ '^[A-Z]{3}$'", name=op.f("ck_legs_currency_code_iso4217")),
        sa.CheckConstraint(
            "state IN ('SUBMITTED', 'PENDING', 'PARTIALLY_FILLED', 'FILLED', 'MODIFYING', 'REJECTED', 'CLOSED')",
            name=op.f("ck_legs_state_known"),
        ),
        sa.CheckConstraint("char_length(state_reason) <= 1000", name=op.f("ck_legs_state_reason_length")),
        sa.CheckConstraint(
            "filled_quantity >= 0 AND filled_quantity <= quantity", name=op.f("ck_legs_filled_within_quantity")
        ),
        sa.CheckConstraint("fill_notional >= 0", name=op.f("ck_legs_fill_notional_nonnegative")),
        sa.CheckConstraint(
            f"requested_quantity IS NULL OR ({DECIMAL_CHECK.format(column='requested_quantity')})",
            name=op.f("ck_legs_requested_quantity_valid"),
        ),
        sa.CheckConstraint(
            f"requested_limit_price IS NULL OR ({DECIMAL_CHECK.format(column='requested_limit_price')})",
            name=op.f("ck_legs_requested_limit_price_valid"),
        ),
        comment="One leg of an order, in its state; filled_quantity is the sum of its fills, kept by trigger.",
    )
    op.create_table(
        "leg_fills",
        sa.Column("leg_id", UUID(as_uuid=True), nullable=False),
        sa.Column("execution_id", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("price", sa.Numeric, nullable=False),
        sa.Column("fill_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("evidence_ref", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("leg_id", "execution_id", name=op.f("pk_leg_fills")),
        sa.ForeignKeyConstraint(["leg_id"], ["legs.id"], name=op.f("fk_leg_fills_leg_id_legs")),
        sa.CheckConstraint(
            "char_length(execution_id) BETWEEN 1 AND 128", name=op.f("ck_leg_fills_execution_id_length")
        ),
        sa.CheckConstraint(DECIMAL_CHECK.format(column="quantity"), name=op.f("ck_leg_fills_quantity_valid")),
        sa.CheckConstraint(DECIMAL_CHECK.format(column="price"), name=op.f("ck_leg_fills_price_valid")),
        sa.CheckConstraint(
            "char_length(evidence_ref) BETWEEN 1 AND 500", name=op.f("ck_leg_fills_evidence_ref_length")
        ),
        comment="Executions reported by the venue; (leg, execution id) is unique, so a fill applies once.",
    )
    op.create_table(
        "leg_state_transitions",
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("from_state", "to_state", name=op.f("pk_leg_state_transitions")),
        comment="The allowed (from, to) pairs of the order-leg state machine; a snapshot of server/domain.",
    )
    op.bulk_insert(
        sa.table("leg_state_transitions", sa.column("from_state"), sa.column("to_state")),
        [{"from_state": a, "to_state": b} for a, b in LEG_TRANSITIONS],
    )
    op.create_table(
        "leg_transitions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("leg_id", UUID(as_uuid=True), nullable=False),
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        sa.Column("evidence_ref", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leg_transitions")),
        sa.ForeignKeyConstraint(["leg_id"], ["legs.id"], name=op.f("fk_leg_transitions_leg_id_legs")),
        sa.CheckConstraint("char_length(cause) BETWEEN 1 AND 64", name=op.f("ck_leg_transitions_cause_length")),
        sa.CheckConstraint(
            "char_length(evidence_ref) BETWEEN 1 AND 500", name=op.f("ck_leg_transitions_evidence_ref_length")
        ),
        comment="Every state change of every leg, with its cause and evidence. Append-only.",
    )
    op.create_index(op.f("ix_leg_transitions_leg_id"), "leg_transitions", ["leg_id", "id"])


def _create_triggers() -> None:
    op.execute(
        """
        CREATE FUNCTION legs_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                IF NEW.state <> 'SUBMITTED' OR NEW.filled_quantity <> 0 OR NEW.fill_notional <> 0 THEN
                    RAISE EXCEPTION 'a leg starts SUBMITTED and unfilled'
                        USING ERRCODE = 'check_violation', CONSTRAINT = 'legs_initial_state';
                END IF;
                RETURN NEW;
            END IF;
            IF pg_trigger_depth() < 2 AND (NEW.state IS DISTINCT FROM OLD.state
                    OR NEW.filled_quantity IS DISTINCT FROM OLD.filled_quantity
                    OR NEW.fill_notional IS DISTINCT FROM OLD.fill_notional) THEN
                RAISE EXCEPTION 'leg %: state and fills change only through leg_transitions and leg_fills', OLD.id
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'legs_change_by_evidence';
            END IF;
            IF (NEW.order_id, NEW.position, NEW.instrument_symbol, NEW.side, NEW.order_type, NEW.currency_code)
                    IS DISTINCT FROM (OLD.order_id, OLD.position, OLD.instrument_symbol, OLD.side, OLD.order_type,
                                      OLD.currency_code) THEN
                RAISE EXCEPTION 'leg %: instrument, side, type and currency never change', OLD.id
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'legs_terms_immutable';
            END IF;
            -- quantity and limit price change only when the venue confirms a modification
            IF (NEW.quantity, NEW.limit_price) IS DISTINCT FROM (OLD.quantity, OLD.limit_price)
                    AND OLD.state <> 'MODIFYING' THEN
                RAISE EXCEPTION 'leg %: quantity and limit price change only through a confirmed modification', OLD.id
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'legs_terms_by_modification';
            END IF;
            IF NEW.filled_quantity < OLD.filled_quantity THEN
                RAISE EXCEPTION 'leg %: filled quantity may not decrease (% -> %)', OLD.id, OLD.filled_quantity,
                    NEW.filled_quantity USING ERRCODE = 'check_violation', CONSTRAINT = 'legs_fills_never_decrease';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute("CREATE TRIGGER legs_guard BEFORE INSERT OR UPDATE ON legs FOR EACH ROW EXECUTE FUNCTION legs_guard()")
    op.execute(
        """
        CREATE FUNCTION leg_transitions_apply() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            current_state text;
        BEGIN
            SELECT state INTO current_state FROM legs WHERE id = NEW.leg_id FOR UPDATE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'leg % does not exist', NEW.leg_id USING ERRCODE = 'foreign_key_violation';
            END IF;
            IF current_state <> NEW.from_state THEN
                RAISE EXCEPTION 'leg % is %, not % as the transition claims', NEW.leg_id, current_state,
                    NEW.from_state USING ERRCODE = 'serialization_failure';
            END IF;
            IF NOT EXISTS (SELECT 1 FROM leg_state_transitions
                           WHERE from_state = NEW.from_state AND to_state = NEW.to_state) THEN
                RAISE EXCEPTION 'order leg: % -> % is not an allowed transition', NEW.from_state, NEW.to_state
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'leg_transition_allowed';
            END IF;
            UPDATE legs SET state = NEW.to_state, updated_at = NEW.occurred_at WHERE id = NEW.leg_id;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER leg_transitions_apply BEFORE INSERT ON leg_transitions"
        " FOR EACH ROW EXECUTE FUNCTION leg_transitions_apply()"
    )
    # A fill adds to the leg's totals (exactly: NUMERIC arithmetic does not round); the legs CHECK
    # refuses an overfill, the primary key a second copy of an execution.
    op.execute(
        """
        CREATE FUNCTION leg_fills_apply() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            current_state text;
        BEGIN
            SELECT state INTO current_state FROM legs WHERE id = NEW.leg_id FOR UPDATE;
            IF current_state NOT IN ('PENDING', 'PARTIALLY_FILLED') THEN
                RAISE EXCEPTION 'leg % is %: only a working leg (PENDING, PARTIALLY_FILLED) can fill', NEW.leg_id,
                    current_state USING ERRCODE = 'check_violation', CONSTRAINT = 'leg_fills_working_leg';
            END IF;
            UPDATE legs SET filled_quantity = filled_quantity + NEW.quantity,
                            fill_notional = fill_notional + NEW.quantity * NEW.price,
                            updated_at = now()
            WHERE id = NEW.leg_id;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER leg_fills_apply AFTER INSERT ON leg_fills FOR EACH ROW EXECUTE FUNCTION leg_fills_apply()"
    )
    for table in ("leg_fills", "leg_state_transitions", "leg_transitions"):
        # the rule table refuses additions too: nobody extends the machine with SQL
        events = "INSERT OR UPDATE OR DELETE" if table == "leg_state_transitions" else "UPDATE OR DELETE"
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE {events} ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION refuse_change()"
        )


def upgrade() -> None:
    _create_tables()
    _create_triggers()


def downgrade() -> None:
    for table in ("leg_transitions", "leg_state_transitions", "leg_fills", "legs", "orders"):
        op.drop_table(table)
    for function in ("leg_fills_apply", "leg_transitions_apply", "legs_guard"):
        op.execute(f"DROP FUNCTION {function}()")
