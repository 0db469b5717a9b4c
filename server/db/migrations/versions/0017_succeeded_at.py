"""Reconciliation at database speed: when each payment first succeeded, kept on the payment.

Adds payments.succeeded_at (the time of its first SUCCEEDED transition, written by the transitions'
trigger like its state, backfilled here) and its index: a report's rows are matched to the payments
and their expected settlement day in one join, and the payments a report should have held are found
by their day of success. A report's raw bytes are stored as received (no compression: storing them
is part of taking a report in, and pglz is slower than the disk). Its functions are its own frozen
copy, 0017_succeeded_at.sql (server/db/invariants.sql describes the head revision).

It runs in one transaction, so `payments` is locked against reads and writes while every succeeded
payment is backfilled and the index is built: on a large table, run it in a maintenance window.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from server.db import migrate
from server.db.migrate import frozen_sql, sql_statements

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

INVARIANTS_SQL = "0017_succeeded_at.sql"
INVARIANTS_SHA256 = "01305abc404e62c78435e1137798138a537c30bc30878092d02d6b712feed6f9"


def upgrade() -> None:
    op.add_column("payments", sa.Column("succeeded_at", sa.DateTime(timezone=True), nullable=True))
    # before the guard that refuses it: the trigger of an UPDATE of payments is still 0015's
    op.execute(
        """
        UPDATE payments p SET succeeded_at = s.first_success
        FROM (SELECT payment_id, min(occurred_at) AS first_success FROM payment_transitions
              WHERE to_state = 'SUCCEEDED' GROUP BY payment_id) s
        WHERE p.id = s.payment_id
        """
    )
    op.create_index(
        op.f("ix_payments_succeeded_at"),
        "payments",
        ["succeeded_at"],
        postgresql_where=sa.text("succeeded_at IS NOT NULL"),
    )
    op.execute("ALTER TABLE report_chunks ALTER COLUMN bytes SET STORAGE EXTERNAL")
    for statement in frozen_sql(revision, INVARIANTS_SQL, INVARIANTS_SHA256):
        op.get_bind().exec_driver_sql(statement)


def _functions_of(frozen: str, *names: str) -> list[str]:
    """The named functions as an earlier revision's frozen copy created them, to put back."""
    found = []
    for statement in sql_statements((migrate.FROZEN_SQL_DIR / frozen).read_text()):
        body = statement[statement.find("CREATE") :]
        for name in names:
            for prefix in (f"CREATE FUNCTION {name}(", f"CREATE OR REPLACE FUNCTION {name}("):
                if body.startswith(prefix):
                    found.append(body.replace(prefix, f"CREATE OR REPLACE FUNCTION {name}(", 1))
    if len(found) != len(names):
        raise RuntimeError(f"{frozen} lacks one of {names}")
    return found


def downgrade() -> None:
    for statement in [
        *_functions_of("0015_refunds.sql", "payments_guard_state"),
        *_functions_of("0014_invariants.sql", "payment_transitions_move"),
    ]:
        op.get_bind().exec_driver_sql(statement)
    op.execute("ALTER TABLE report_chunks ALTER COLUMN bytes SET STORAGE EXTENDED")
    op.drop_index(op.f("ix_payments_succeeded_at"), "payments")
    op.drop_column("payments", "succeeded_at")
