"""Investigation cases: one open case per kind and subject (a payment or a leg); more evidence joins it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg

from server.db.outbox_writer import write_event
from server.domain import events
from server.domain.cases import SUMMARY_LENGTH_MAX

Subject = Literal["payment_id", "leg_id"]


async def open_case(
    connection: asyncpg.Connection,
    kind: str,
    subject: Subject,
    subject_id: uuid.UUID,
    summary: str,
    evidence: list[dict[str, Any]],
    *,
    evidence_if_open: list[dict[str, Any]] | None = None,
    check_provider: bool = False,
    summary_if_open: bool = False,
) -> uuid.UUID:
    """Open a case (and announce it), or add `evidence_if_open` (default: `evidence`) to the open one.

    `summary_if_open` replaces an open case's summary with this one (a case whose latest evidence
    changes what it proposes). `check_provider` asks for the provider's own answer about the subject
    to be added to the case (the case checker does that: server/services/case_checks.py).

    Runs in the caller's transaction, so the case stands or falls with the evidence that opened it.
    """
    case_id: uuid.UUID = await connection.fetchval(
        f"""
        INSERT INTO cases (kind, {subject}, summary, evidence, provider_check_due_at)
        VALUES ($1, $2, $3, $4, CASE WHEN $6 THEN now() END)
        ON CONFLICT (kind, {subject}) WHERE status = 'OPEN'
        DO UPDATE SET evidence = cases.evidence || $5::jsonb, updated_at = now(),
                      summary = CASE WHEN $7 THEN EXCLUDED.summary ELSE cases.summary END,
                      provider_check_due_at = coalesce(cases.provider_check_due_at, EXCLUDED.provider_check_due_at)
        RETURNING id
        """,
        kind,
        subject_id,
        summary[:SUMMARY_LENGTH_MAX],
        evidence,
        evidence if evidence_if_open is None else evidence_if_open,
        check_provider,
        summary_if_open,
    )
    payload = {"case_id": str(case_id), "kind": kind, subject: str(subject_id), "evidence": evidence}
    await write_event(connection, events.CASE_OPENED, str(subject_id), payload)
    return case_id


async def lock_open_case(connection: asyncpg.Connection, case_id: uuid.UUID) -> asyncpg.Record | None:
    """The open case, locked until the caller's transaction ends; None if there is none (or it is resolved)."""
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT id, kind, payment_id, leg_id, summary, evidence FROM cases"
        " WHERE id = $1 AND status = 'OPEN' FOR UPDATE",
        case_id,
    )
    return row


async def resolve_case(connection: asyncpg.Connection, case_id: uuid.UUID, resolution: dict[str, Any]) -> None:
    """Close the case with the resolution as its last piece of evidence, and announce it."""
    await connection.execute(
        "UPDATE cases SET status = 'RESOLVED', evidence = evidence || $2::jsonb, updated_at = now(),"
        " provider_check_due_at = NULL WHERE id = $1",
        case_id,
        [resolution],
    )
    await write_event(connection, events.CASE_RESOLVED, str(case_id), {"case_id": str(case_id)} | resolution)


# Open payment cases due for the provider's own word, leased (their next check pushed out) so that no
# two checkers ask about one case at once.
_CLAIM_PROVIDER_CHECKS = """
WITH due AS (
    SELECT id FROM cases
    WHERE status = 'OPEN' AND payment_id IS NOT NULL AND provider_check_due_at <= now()
    ORDER BY provider_check_due_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE cases c SET provider_check_due_at = now() + make_interval(secs => $2::float8)
FROM due WHERE c.id = due.id
RETURNING c.id, c.payment_id
"""

# The provider's answer kept as a provider status (when it named one) and added to the case; no more checks.
_ADD_PROVIDER_ANSWER = """
WITH observed AS (
    INSERT INTO provider_statuses (payment_id, provider, status, evidence_ref)
    SELECT $2, $3, $4, $5 WHERE $4::text IS NOT NULL
)
UPDATE cases SET evidence = evidence || $6::jsonb, updated_at = now(), provider_check_due_at = NULL WHERE id = $1
"""


async def claim_provider_checks(
    connection: asyncpg.Connection, limit: int, lease_s: float
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """At most `limit` (case id, payment id) of open cases due for the provider's word, each leased for `lease_s`."""
    rows = await connection.fetch(_CLAIM_PROVIDER_CHECKS, limit, lease_s)
    return [(row["id"], row["payment_id"]) for row in rows]


async def add_provider_answer(
    connection: asyncpg.Connection,
    case_id: uuid.UUID,
    payment_id: uuid.UUID,
    provider: str,
    status: str | None,
    evidence_ref: str,
    evidence: list[dict[str, Any]],
) -> None:
    """The provider's answer about the case's payment: its status kept as evidence (None: it has no such
    payment), `evidence` added to the case, and the case's provider check done."""
    await connection.execute(_ADD_PROVIDER_ANSWER, case_id, payment_id, provider, status, evidence_ref, evidence)


# -- reading cases (the reconciliation API) ----------------------------------------------------------


@dataclass(frozen=True)
class CaseFilter:
    """Which cases a list shows; None (or empty) means any."""

    kinds: tuple[str, ...] = ()
    status: str | None = None
    report_run_id: uuid.UUID | None = None
    provider: str | None = None
    opened_after: datetime | None = None
    opened_before: datetime | None = None
    currency_code: str | None = None
    amount_min: Decimal | None = None
    amount_max: Decimal | None = None


@dataclass(frozen=True)
class CaseRecord:
    id: uuid.UUID
    kind: str
    status: str
    summary: str
    payment_id: uuid.UUID | None
    leg_id: uuid.UUID | None
    report_run_id: uuid.UUID | None
    evidence: list[dict[str, Any]]
    opened_at: datetime
    updated_at: datetime
    provider_payment_id: str | None
    amount: Decimal | None
    currency_code: str | None
    state: str | None


_CASE_COLUMNS = """
    c.id, c.kind, c.status, c.summary, c.payment_id, c.leg_id, c.report_run_id, c.evidence, c.opened_at,
    c.updated_at, p.provider_payment_id, p.amount, p.currency_code, p.state
"""


def _case(row: asyncpg.Record) -> CaseRecord:
    return CaseRecord(**dict(row))


async def list_cases(
    connection: asyncpg.Connection, where: CaseFilter, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[CaseRecord]:
    """Newest first, keyset-paged on (opened_at, id)."""
    rows = await connection.fetch(
        f"""
        SELECT {_CASE_COLUMNS}
        FROM cases c
        LEFT JOIN payments p ON p.id = c.payment_id
        LEFT JOIN report_runs r ON r.id = c.report_run_id
        WHERE (cardinality($1::text[]) = 0 OR c.kind = ANY($1::text[]))
          AND ($2::text IS NULL OR c.status = $2)
          AND ($3::uuid IS NULL OR c.report_run_id = $3)
          AND ($4::text IS NULL OR r.provider = $4)
          AND ($5::timestamptz IS NULL OR c.opened_at >= $5)
          AND ($6::timestamptz IS NULL OR c.opened_at < $6)
          AND ($7::text IS NULL OR p.currency_code = $7)
          AND ($8::numeric IS NULL OR p.amount >= $8)
          AND ($9::numeric IS NULL OR p.amount <= $9)
          AND ($10::timestamptz IS NULL OR (c.opened_at, c.id) < ($10, $11::uuid))
        ORDER BY c.opened_at DESC, c.id DESC
        LIMIT $12
        """,
        list(where.kinds),
        where.status,
        where.report_run_id,
        where.provider,
        where.opened_after,
        where.opened_before,
        where.currency_code,
        where.amount_min,
        where.amount_max,
        None if after is None else after[0],
        None if after is None else after[1],
        limit,
    )
    return [_case(row) for row in rows]


async def get_case(connection: asyncpg.Connection, case_id: uuid.UUID) -> CaseRecord | None:
    row = await connection.fetchrow(
        f"SELECT {_CASE_COLUMNS} FROM cases c LEFT JOIN payments p ON p.id = c.payment_id WHERE c.id = $1", case_id
    )
    return None if row is None else _case(row)


async def case_report_rows(connection: asyncpg.Connection, case_id: uuid.UUID) -> list[dict[str, Any]]:
    """The report rows behind a case (its findings'), with each finding's two sides."""
    rows = await connection.fetch(
        """
        SELECT f.run_id, f.row_number, f.difference, f.expected, f.observed, r.provider_transaction_id, r.source_id,
               r.reference, r.payout_id, r.type, r.status, r.currency_code, r.gross, r.fee, r.net, r.settlement_date,
               r.error
        FROM report_findings f LEFT JOIN report_rows r ON r.run_id = f.run_id AND r.row_number = f.row_number
        WHERE f.case_id = $1
        ORDER BY f.id
        """,
        case_id,
    )
    return [dict(row) for row in rows]


async def lock_case(connection: asyncpg.Connection, case_id: uuid.UUID) -> asyncpg.Record | None:
    """The case (any status), locked until the caller's transaction ends, with its report run's provider
    and its currency (its payment's, or its report rows')."""
    row: asyncpg.Record | None = await connection.fetchrow(
        """
        SELECT c.id, c.kind, c.status, c.payment_id, c.report_run_id, r.provider,
               coalesce(p.currency_code, (SELECT w.currency_code FROM report_findings f
                                          JOIN report_rows w ON w.run_id = f.run_id AND w.row_number = f.row_number
                                          WHERE f.case_id = c.id AND w.currency_code IS NOT NULL LIMIT 1))
                   AS currency_code
        FROM cases c LEFT JOIN report_runs r ON r.id = c.report_run_id LEFT JOIN payments p ON p.id = c.payment_id
        WHERE c.id = $1 FOR UPDATE OF c
        """,
        case_id,
    )
    return row
