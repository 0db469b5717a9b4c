"""Evidence-backed payment transitions, the double-entry ledger, the outbox and the audit chain.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

The rules live in PostgreSQL as well as in Python: a payment's state changes only by appending a
transition the table allows; ledger lines balance per currency and are never changed; audit
entries chain by hash per aggregate. The allowed pairs are a snapshot of server/domain at this
revision (a test compares them); a later change to the machine needs a new migration.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PAYMENT_TRANSITIONS = [
    ("RECORDED", "PENDING"), ("RECORDED", "UNKNOWN"), ("RECORDED", "SUCCEEDED"), ("RECORDED", "FAILED"),
    ("RECORDED", "REJECTED"),
    ("PENDING", "SUCCEEDED"), ("PENDING", "FAILED"), ("PENDING", "REJECTED"),
    ("UNKNOWN", "PENDING"), ("UNKNOWN", "SUCCEEDED"), ("UNKNOWN", "FAILED"), ("UNKNOWN", "REJECTED"),
    ("SUCCEEDED", "REFUND_PENDING"),
    ("REFUND_PENDING", "REFUNDED"), ("REFUND_PENDING", "SUCCEEDED"),
]  # fmt: skip


def _create_payment_state_guards() -> None:
    op.execute(
        """
        CREATE FUNCTION payments_guard_state() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' AND NEW.state <> 'RECORDED' THEN
                RAISE EXCEPTION 'a payment starts RECORDED, not %', NEW.state
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_initial_state';
            END IF;
            IF TG_OP = 'UPDATE' AND (NEW.amount, NEW.currency_code, NEW.client_id, NEW.idempotency_key)
                    IS DISTINCT FROM (OLD.amount, OLD.currency_code, OLD.client_id, OLD.idempotency_key) THEN
                RAISE EXCEPTION 'payment %: amount, currency, client and key never change', OLD.id
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_terms_immutable';
            END IF;
            IF TG_OP = 'UPDATE' AND NEW.state IS DISTINCT FROM OLD.state AND pg_trigger_depth() < 2 THEN
                RAISE EXCEPTION 'payment % state % -> %: only an appended payment_transitions row may change it',
                    OLD.id, OLD.state, NEW.state
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_state_by_transition';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER payments_guard_state BEFORE INSERT OR UPDATE ON payments"
        " FOR EACH ROW EXECUTE FUNCTION payments_guard_state()"
    )
    # Appending a transition is what moves the payment: checked against the allowed pairs and the
    # payment's current state (under its row lock), then applied.
    op.execute(
        """
        CREATE FUNCTION payment_transitions_apply() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            current_state text;
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
            IF NOT EXISTS (SELECT 1 FROM payment_state_transitions
                           WHERE from_state = NEW.from_state AND to_state = NEW.to_state) THEN
                RAISE EXCEPTION 'payment: % -> % is not an allowed transition', NEW.from_state, NEW.to_state
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_transition_allowed';
            END IF;
            UPDATE payments SET state = NEW.to_state, updated_at = NEW.occurred_at WHERE id = NEW.payment_id;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER payment_transitions_apply BEFORE INSERT ON payment_transitions"
        " FOR EACH ROW EXECUTE FUNCTION payment_transitions_apply()"
    )


def _create_append_only(table: str, *, frozen: bool = False) -> None:
    """Rows may be added but never changed or removed; `frozen` tables (rules) refuse additions too."""
    events = "INSERT OR UPDATE OR DELETE" if frozen else "UPDATE OR DELETE"
    op.execute(
        f"CREATE TRIGGER {table}_append_only BEFORE {events} ON {table} FOR EACH ROW EXECUTE FUNCTION refuse_change()"
    )
    op.execute(
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
        " FOR EACH STATEMENT EXECUTE FUNCTION refuse_change()"
    )


def _create_ledger_checks() -> None:
    # At commit: every entry has two or more lines, and its lines sum to zero in each currency.
    op.execute(
        """
        CREATE FUNCTION ledger_entry_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            entry uuid := (to_jsonb(NEW) ->> TG_ARGV[0])::uuid;  -- the entry's id column, named by the trigger
            line_count integer;
            unbalanced text;
        BEGIN
            SELECT count(*) INTO line_count FROM ledger_lines WHERE entry_id = entry;
            IF line_count < 2 THEN
                RAISE EXCEPTION 'ledger entry % has % lines; a double entry needs two or more', entry, line_count
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entry_lines';
            END IF;
            SELECT string_agg(currency_code || ' ' || total, ', ') INTO unbalanced FROM (
                SELECT currency_code, sum(amount) AS total FROM ledger_lines
                WHERE entry_id = entry GROUP BY currency_code HAVING sum(amount) <> 0
            ) AS totals;
            IF unbalanced IS NOT NULL THEN
                RAISE EXCEPTION 'ledger entry % does not sum to zero: %', entry, unbalanced
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entry_balanced';
            END IF;
            RETURN NULL;
        END $$
        """
    )
    for table, entry_column in (("ledger_entries", "id"), ("ledger_lines", "entry_id")):
        op.execute(
            f"CREATE CONSTRAINT TRIGGER {table}_balanced AFTER INSERT ON {table} DEFERRABLE INITIALLY DEFERRED"
            f" FOR EACH ROW EXECUTE FUNCTION ledger_entry_check_balanced('{entry_column}')"
        )


def _create_audit_chain() -> None:
    # One chain per aggregate: the entry's hash covers the previous entry's hash and its own content,
    # so changing or removing any entry breaks every hash after it. Computed here, not by callers.
    op.execute(
        """
        CREATE FUNCTION audit_entry_hash(previous bytea, aggregate_type text, aggregate_id text, sequence bigint,
                                         action text, actor text, payload jsonb, created_at timestamptz)
        RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
            -- a JSON array is an unambiguous encoding: no field can pass for its neighbour
            SELECT sha256(previous || convert_to(jsonb_build_array(
                aggregate_type, aggregate_id, sequence, action, actor, payload,
                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text, 'UTF8'))
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            last_sequence bigint;
            last_hash bytea;
        BEGIN
            SELECT sequence, hash INTO last_sequence, last_hash FROM audit_log
            WHERE aggregate_type = NEW.aggregate_type AND aggregate_id = NEW.aggregate_id
            ORDER BY sequence DESC LIMIT 1;
            NEW.sequence := coalesce(last_sequence, 0) + 1;
            NEW.prev_hash := coalesce(last_hash, '\\x'::bytea);
            NEW.created_at := clock_timestamp();
            NEW.hash := audit_entry_hash(NEW.prev_hash, NEW.aggregate_type, NEW.aggregate_id, NEW.sequence,
                                         NEW.action, NEW.actor, NEW.payload, NEW.created_at);
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_chain()"
    )


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )

    op.create_table(
        "payment_state_transitions",
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("from_state", "to_state", name=op.f("pk_payment_state_transitions")),
        comment="The allowed (from, to) pairs of the payment state machine; a snapshot of server/domain.",
    )
    op.bulk_insert(
        sa.table("payment_state_transitions", sa.column("from_state"), sa.column("to_state")),
        [{"from_state": a, "to_state": b} for a, b in PAYMENT_TRANSITIONS],
    )
    _create_append_only("payment_state_transitions", frozen=True)

    op.create_table(
        "payment_transitions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("payment_id", UUID(as_uuid=True), nullable=False),
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        sa.Column("evidence_ref", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_transitions")),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_payment_transitions_payment_id_payments")
        ),
        sa.CheckConstraint("char_length(cause) BETWEEN 1 AND 64", name=op.f("ck_payment_transitions_cause_length")),
        sa.CheckConstraint(
            "char_length(evidence_ref) BETWEEN 1 AND 500", name=op.f("ck_payment_transitions_evidence_ref_length")
        ),
        sa.CheckConstraint("char_length(event) BETWEEN 1 AND 64", name=op.f("ck_payment_transitions_event_length")),
        comment="Every state change of every payment, with its cause and the evidence behind it. Append-only.",
    )
    op.create_index(op.f("ix_payment_transitions_payment_id"), "payment_transitions", ["payment_id", "id"])
    _create_append_only("payment_transitions")

    op.create_table(
        "provider_statuses",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("payment_id", UUID(as_uuid=True), nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("evidence_ref", sa.Text, nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_statuses")),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_provider_statuses_payment_id_payments")),
        sa.CheckConstraint("char_length(provider) BETWEEN 1 AND 64", name=op.f("ck_provider_statuses_provider_length")),
        sa.CheckConstraint("char_length(status) BETWEEN 1 AND 64", name=op.f("ck_provider_statuses_status_length")),
        sa.CheckConstraint(
            "char_length(evidence_ref) BETWEEN 1 AND 500", name=op.f("ck_provider_statuses_evidence_ref_length")
        ),
        comment="What providers said about payments, verbatim: evidence, kept apart from the internal state.",
    )
    op.create_index(op.f("ix_provider_statuses_payment_id"), "provider_statuses", ["payment_id", "id"])
    _create_append_only("provider_statuses")
    _create_payment_state_guards()

    op.create_table(
        "ledger_entries",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("event_key", sa.Text, nullable=False),
        sa.Column("payment_id", UUID(as_uuid=True), nullable=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        sa.UniqueConstraint("event_key", name=op.f("uq_ledger_entries_event_key")),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_ledger_entries_payment_id_payments")),
        sa.CheckConstraint("char_length(event_key) BETWEEN 1 AND 200", name=op.f("ck_ledger_entries_event_key_length")),
        sa.CheckConstraint("char_length(description) <= 500", name=op.f("ck_ledger_entries_description_length")),
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
        sa.CheckConstraint("amount <> 0", name=op.f("ck_ledger_lines_amount_nonzero")),
        sa.CheckConstraint("scale(amount) <= 4", name=op.f("ck_ledger_lines_amount_scale")),
        sa.CheckConstraint("currency_code ~ '^[A-Z]{3}$'", name=op.f("ck_ledger_lines_currency_code_iso4217")),
        sa.CheckConstraint("char_length(account) BETWEEN 1 AND 200", name=op.f("ck_ledger_lines_account_length")),
        sa.CheckConstraint("line_number >= 1", name=op.f("ck_ledger_lines_line_number_positive")),
        comment="Signed amounts (debit positive, credit negative); each entry's lines sum to zero per currency.",
    )
    op.create_index(op.f("ix_ledger_lines_account"), "ledger_lines", ["account", "currency_code"])
    for table in ("ledger_entries", "ledger_lines"):
        _create_append_only(table)
    _create_ledger_checks()

    op.create_table(
        "outbox",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("message_key", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.CheckConstraint("char_length(topic) BETWEEN 1 AND 128", name=op.f("ck_outbox_topic_length")),
        sa.CheckConstraint("char_length(message_key) BETWEEN 1 AND 256", name=op.f("ck_outbox_message_key_length")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_outbox_attempts_nonnegative")),
        comment="Events written in the same transaction as the change they announce; a relay publishes them.",
    )
    op.create_index(
        op.f("ix_outbox_unpublished"), "outbox", ["created_at"], postgresql_where=sa.text("published_at IS NULL")
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
        sa.CheckConstraint("octet_length(hash) = 32", name=op.f("ck_audit_log_hash_sha256")),
        sa.CheckConstraint("char_length(action) BETWEEN 1 AND 64", name=op.f("ck_audit_log_action_length")),
        sa.CheckConstraint("char_length(actor) BETWEEN 1 AND 128", name=op.f("ck_audit_log_actor_length")),
        comment="Every change, hash-chained per aggregate so that tampering shows. Append-only.",
    )
    _create_audit_chain()
    _create_append_only("audit_log")


def downgrade() -> None:
    for table in (
        "audit_log",
        "outbox",
        "ledger_lines",
        "ledger_entries",
        "provider_statuses",
        "payment_transitions",
        "payment_state_transitions",
    ):
        op.drop_table(table)
    op.execute("DROP TRIGGER payments_guard_state ON payments")
    for function in (
        "audit_log_chain",
        "ledger_entry_check_balanced",
        "payment_transitions_apply",
        "payments_guard_state",
        "refuse_change",
    ):
        op.execute(f"DROP FUNCTION {function}()")
    op.execute("DROP FUNCTION audit_entry_hash(bytea, text, text, bigint, text, text, jsonb, timestamptz)")
