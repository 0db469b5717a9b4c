"""Reconciliation: provider reports as runs, their raw bytes and canonical rows, the differences found,
and each provider's fee schedule, tolerances and settlement timing.

Adds report_runs, report_chunks (the raw bytes, append-only), report_rows (canonical rows,
append-only), report_findings and provider_settings (with the simulator's agreed schedule); cases
may now be about a report run rather than a payment or a leg. Its triggers are its own frozen copy,
0016_reconciliation.sql (server/db/invariants.sql describes the head revision).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

from server.db.migrate import frozen_sql

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

INVARIANTS_SQL = "0016_reconciliation.sql"
INVARIANTS_SHA256 = "87168d54d901f9f41729e98f08ada34fd79bcf19fbead9a73e543e04628e3279"

RUN_STATUSES = "'RECEIVED', 'NORMALIZING', 'MATCHING', 'COMPLETED', 'FAILED'"
RUN_FINAL = "status IN ('COMPLETED', 'FAILED')"
DIFFERENCES = (
    "'MISSING_INTERNAL', 'MISSING_PROVIDER', 'AMOUNT_MISMATCH', 'CURRENCY_MISMATCH', 'STATUS_MISMATCH',"
    " 'FEE_MISMATCH', 'TIMING_MISMATCH', 'DUPLICATE_PROVIDER_ROW', 'FX_ADJUSTMENT', 'PAYOUT_MISMATCH'"
)
REPORT_BYTES_MAX = 512 * 1024 * 1024
CHUNK_BYTES_MAX = 1024 * 1024


def _check(table: str, name: str, condition: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(condition, name=op.f(f"ck_{table}_{name}"))


def _length(column: str, length_max: int, *, required: bool = True) -> str:
    return f"char_length({column}) BETWEEN 1 AND {length_max}" if required else f"char_length({column}) <= {length_max}"


def _provider_settings() -> None:
    table = op.create_table(
        "provider_settings",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("fee_bps", sa.Numeric, nullable=False),
        sa.Column("fee_fixed_minor_units", sa.Integer, nullable=False),
        sa.Column("refund_fee_fixed_minor_units", sa.Integer, nullable=False, server_default="0"),
        sa.Column("fee_tolerance_minor_units", sa.Integer, nullable=False, server_default="0"),
        sa.Column("amount_tolerance_minor_units", sa.Integer, nullable=False, server_default="0"),
        sa.Column("fx_tolerance_minor_units", sa.Integer, nullable=False, server_default="0"),
        sa.Column("settlement_delay_days", sa.Integer, nullable=False),
        sa.Column("settlement_window_days", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("provider", name=op.f("pk_provider_settings")),
        _check("provider_settings", "provider_length", _length("provider", 64)),
        _check("provider_settings", "fee_bps_range", "fee_bps >= 0 AND fee_bps <= 10000"),
        _check(
            "provider_settings",
            "minor_units_nonnegative",
            "fee_fixed_minor_units >= 0 AND refund_fee_fixed_minor_units >= 0 AND fee_tolerance_minor_units >= 0"
            " AND amount_tolerance_minor_units >= 0"
            " AND fx_tolerance_minor_units >= 0",
        ),
        _check(
            "provider_settings",
            "days_range",
            "settlement_delay_days BETWEEN 0 AND 60 AND settlement_window_days BETWEEN 0 AND 60",
        ),
        comment=(
            "Per provider, what reconciliation compares its reports with: the agreed fee schedule, the"
            " tolerances and the settlement timing. Configuration as data, changed by operators."
        ),
    )
    # the simulator's agreed schedule (simulator/settings.py): 2.9% + 30 minor units, paid out a day later
    op.bulk_insert(
        table,
        [
            {
                "provider": "simulator",
                "fee_bps": 290,
                "fee_fixed_minor_units": 30,
                "settlement_delay_days": 1,
                "settlement_window_days": 1,
            }
        ],
    )


def _runs() -> None:
    op.create_table(
        "report_runs",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
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
        sa.Column("period_start", sa.Date, nullable=True),
        sa.Column("period_end", sa.Date, nullable=True),
        sa.Column("superseded_by", UUID(as_uuid=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_runs")),
        sa.ForeignKeyConstraint(
            ["superseded_by"], ["report_runs.id"], name=op.f("fk_report_runs_superseded_by_report_runs")
        ),
        _check("report_runs", "provider_length", _length("provider", 64)),
        _check("report_runs", "kind_known", "kind IN ('SETTLEMENT', 'TRANSACTIONS')"),
        _check("report_runs", "status_known", f"status IN ({RUN_STATUSES})"),
        _check("report_runs", "file_name_length", _length("file_name", 255)),
        _check("report_runs", "content_type_length", _length("content_type", 255)),
        _check("report_runs", "sha256_hex", "sha256 ~ '^[0-9a-f]{64}$'"),
        _check("report_runs", "byte_count_range", f"byte_count BETWEEN 1 AND {REPORT_BYTES_MAX}"),
        _check("report_runs", "failure_reason_length", _length("failure_reason", 500, required=False)),
        _check(
            "report_runs",
            "counts_nonnegative",
            "row_count >= 0 AND invalid_row_count >= 0 AND matched_row_count >= 0 AND unmatched_row_count >= 0"
            " AND opened_case_count >= 0",
        ),
        _check("report_runs", "completed_when_final", f"(completed_at IS NOT NULL) = ({RUN_FINAL})"),
        comment=(
            "One provider report taken in, and where its processing stands (stage, counts, failure). The"
            " unit of reconciliation's work: every stage is idempotent per run."
        ),
    )
    op.create_index(
        op.f("uq_report_runs_provider_kind_sha256"),
        "report_runs",
        ["provider", "kind", "sha256"],
        unique=True,
        postgresql_where=sa.text("status <> 'FAILED'"),
    )
    op.create_index(
        op.f("ix_report_runs_unfinished"), "report_runs", ["created_at"], postgresql_where=sa.text(f"NOT ({RUN_FINAL})")
    )
    op.create_table(
        "report_chunks",
        sa.Column("run_id", UUID(as_uuid=True), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("bytes", BYTEA, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq", name=op.f("pk_report_chunks")),
        sa.ForeignKeyConstraint(["run_id"], ["report_runs.id"], name=op.f("fk_report_chunks_run_id_report_runs")),
        _check("report_chunks", "seq_nonnegative", "seq >= 0"),
        _check("report_chunks", "bytes_size", f"octet_length(bytes) BETWEEN 1 AND {CHUNK_BYTES_MAX}"),
        comment="A report's raw bytes exactly as received, in order, their SHA-256 on the run. Append-only.",
    )
    op.create_table(
        "report_rows",
        sa.Column("run_id", UUID(as_uuid=True), nullable=False),
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
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("run_id", "row_number", name=op.f("pk_report_rows")),
        _check("report_rows", "row_number_positive", "row_number >= 1"),
        _check("report_rows", "error_length", _length("error", 500, required=False)),
        _check(
            "report_rows",
            "valid_or_explained",
            "error IS NOT NULL OR (provider_transaction_id IS NOT NULL AND type IS NOT NULL AND currency_code IS NOT"
            " NULL AND gross IS NOT NULL AND fee IS NOT NULL AND net IS NOT NULL AND settlement_date IS NOT NULL"
            " AND net = gross - fee)",
        ),
        comment="A report's rows in canonical form (or, for a row that does not parse, why). Written once per run.",
    )
    op.create_table(
        "report_findings",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("run_id", UUID(as_uuid=True), nullable=False),
        sa.Column("row_number", sa.BigInteger, nullable=True),
        sa.Column("difference", sa.Text, nullable=False),
        sa.Column("payment_id", UUID(as_uuid=True), nullable=True),
        sa.Column("refund_id", UUID(as_uuid=True), nullable=True),
        sa.Column("payout_id", sa.Text, nullable=True),
        sa.Column("expected", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("observed", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("case_id", UUID(as_uuid=True), nullable=True),
        sa.Column("closed_by_run_id", UUID(as_uuid=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_findings")),
        sa.ForeignKeyConstraint(["run_id"], ["report_runs.id"], name=op.f("fk_report_findings_run_id_report_runs")),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_report_findings_payment_id_payments")),
        sa.ForeignKeyConstraint(["refund_id"], ["refunds.id"], name=op.f("fk_report_findings_refund_id_refunds")),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_report_findings_case_id_cases")),
        sa.ForeignKeyConstraint(
            ["closed_by_run_id"], ["report_runs.id"], name=op.f("fk_report_findings_closed_by_run_id_report_runs")
        ),
        sa.ForeignKeyConstraint(
            ["run_id", "row_number"],
            ["report_rows.run_id", "report_rows.row_number"],
            name=op.f("fk_report_findings_run_id_row_number_report_rows"),
        ),
        _check("report_findings", "difference_known", f"difference IN ({DIFFERENCES})"),
        comment=(
            "Every difference a report run found between the provider's rows and Ballast's records, by class,"
            " with both sides; the case it opened, if it needed a person."
        ),
    )
    op.create_index(op.f("ix_report_findings_run_id_difference"), "report_findings", ["run_id", "difference"])
    op.create_index(op.f("ix_report_findings_run_id_row_number"), "report_findings", ["run_id", "row_number"])
    op.create_index(
        op.f("ix_report_findings_payment_id"),
        "report_findings",
        ["payment_id"],
        postgresql_where=sa.text("payment_id IS NOT NULL"),
    )


def _cases() -> None:
    op.add_column("cases", sa.Column("report_run_id", UUID(as_uuid=True), nullable=True))
    op.create_foreign_key(op.f("fk_cases_report_run_id_report_runs"), "cases", "report_runs", ["report_run_id"], ["id"])
    op.drop_constraint(op.f("ck_cases_about_one_thing"), "cases", type_="check")
    op.create_check_constraint(
        op.f("ck_cases_about_one_thing"),
        "cases",
        "num_nonnulls(payment_id, leg_id) <= 1 AND num_nonnulls(payment_id, leg_id, report_run_id) >= 1",
    )
    op.create_index(
        op.f("ix_cases_report_run_id"),
        "cases",
        ["report_run_id"],
        postgresql_where=sa.text("report_run_id IS NOT NULL"),
    )


def upgrade() -> None:
    _provider_settings()
    _runs()
    _cases()
    for statement in frozen_sql(revision, INVARIANTS_SQL, INVARIANTS_SHA256):
        op.get_bind().exec_driver_sql(statement)


def downgrade() -> None:
    """Back to 0015; refused while any report was taken in (reports and their findings are evidence: a
    downgrade never drops them silently)."""
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM report_runs) THEN RAISE EXCEPTION"
        " 'report runs exist: revision 0016 cannot be undone without losing them'; END IF; END $$"
    )
    op.drop_index(op.f("ix_cases_report_run_id"), "cases")
    op.drop_constraint(op.f("ck_cases_about_one_thing"), "cases", type_="check")
    op.create_check_constraint(op.f("ck_cases_about_one_thing"), "cases", "(payment_id IS NULL) <> (leg_id IS NULL)")
    op.drop_constraint(op.f("fk_cases_report_run_id_report_runs"), "cases", type_="foreignkey")
    op.drop_column("cases", "report_run_id")
    op.drop_table("report_findings")
    op.drop_table("report_rows")
    op.drop_table("report_chunks")
    op.drop_table("report_runs")
    op.drop_table("provider_settings")
