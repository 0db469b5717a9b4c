"""Cases for the people who work them: listing with filters, and one case with its evidence side by side.

Every case Ballast opens is served here: reconciliation's differences (their report rows and both
sides of each differing field) and the investigations of the rest of Ballast (contradicting
evidence, outcomes that stayed unknown).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from server.db import cases_repository as cases_repo
from server.db import ledger_repository
from server.db import recon_repository as recon_repo
from server.db.cases_repository import CaseFilter
from server.db.cases_repository import CaseRecord as CaseRecord  # a result of these use cases
from server.db.database import Budget, Database, in_transaction
from server.db.idempotency_repository import claim_key
from server.db.outbox_writer import append_audit
from server.db.recon_repository import ReportRunRecord as ReportRunRecord  # a result of these use cases
from server.domain.cases import (
    KIND_FAMILIES,
    POSTING_RESOLUTIONS,
    RESOLVE_CASE_OPERATION,
    CaseStatus,
    Resolution,
    ResolveCase,
    kinds_of_family,
)
from server.domain.corrections import CORRECTION_CASE
from server.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from server.domain.identifiers import parse_uuid
from server.domain.identity import Principal
from server.domain.ledger import case_postings
from server.domain.money import MoneyError, parse_amount, parse_currency
from server.services.corrections import approve_correction_in
from server.services.paging import LIST_PAGE, decode_cursor, encode_cursor


@dataclass(frozen=True)
class CaseQuery:
    """ListCases' filters, as received (empty: any)."""

    family: str = ""
    status: str = ""
    report_run_id: str = ""
    provider: str = ""
    opened_after: datetime | None = None
    opened_before: datetime | None = None
    amount_min: tuple[str, str] | None = None  # (value, currency)
    amount_max: tuple[str, str] | None = None
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True)
class CasePage:
    cases: list[CaseRecord]
    next_page_token: str


@dataclass(frozen=True)
class FieldDifference:
    field: str
    ballast: str
    provider: str


@dataclass(frozen=True)
class CaseDetail:
    """A case with what its people need: the report rows behind it and each differing field."""

    case: CaseRecord
    report_rows: list[dict[str, Any]] = field(default_factory=list)
    differences: list[FieldDifference] = field(default_factory=list)


def _filter(query: CaseQuery) -> CaseFilter:
    violations: list[FieldViolation] = []
    kinds: tuple[str, ...] = ()
    if query.family:
        kinds = tuple(kinds_of_family(query.family))
        if not kinds:
            violations.append(FieldViolation("kind", f"no case is of kind {query.family[:40]!r}"))
    if query.status and query.status not in CaseStatus.__members__:
        violations.append(FieldViolation("status", "must be OPEN or RESOLVED"))
    run_id = None
    if query.report_run_id:
        try:
            run_id = parse_uuid(query.report_run_id, "report_run_id")
        except InvalidArgument as error:
            violations.extend(error.violations)
    bounds: dict[str, Decimal] = {}
    currencies: set[str] = set()
    for name, bound in (("min_amount", query.amount_min), ("max_amount", query.amount_max)):
        if bound is None:
            continue
        value, currency = bound
        try:
            currency = parse_currency(currency)
        except MoneyError as error:
            violations.append(FieldViolation(f"{name}.currency_code", str(error)))
            continue
        try:
            bounds[name] = parse_amount(value, currency)
            currencies.add(currency)
        except MoneyError as error:
            violations.append(FieldViolation(f"{name}.value", str(error)))
    if len(currencies) > 1:
        violations.append(FieldViolation("max_amount.currency_code", "must be min_amount's currency"))
    if violations:
        raise InvalidArgument(violations)
    return CaseFilter(
        kinds=kinds,
        status=query.status or None,
        report_run_id=run_id,
        provider=query.provider or None,
        opened_after=query.opened_after,
        opened_before=query.opened_before,
        currency_code=next(iter(currencies), None),
        amount_min=bounds.get("min_amount"),
        amount_max=bounds.get("max_amount"),
    )


async def list_cases(database: Database, query: CaseQuery, budget: Budget) -> CasePage:
    """Cases newest first, a page at a time, under the query's filters (a token is tied to them)."""
    where = _filter(query)
    limit = LIST_PAGE.limit(query.page_size)
    scope = hashlib.sha256(repr(where).encode()).hexdigest()[:16]  # ties a token to its filter, briefly
    after = decode_cursor(query.page_token, "ListCases", scope) if query.page_token else None
    async with database.connection(budget) as connection:
        found = await cases_repo.list_cases(connection, where, after, limit + 1)
    page = found[:limit]
    token = encode_cursor(page[-1].opened_at, page[-1].id, scope) if len(found) > limit else ""
    return CasePage(page, token)


def _differences(rows: list[dict[str, Any]]) -> list[FieldDifference]:
    """Each field the findings name, Ballast's value beside the provider's."""
    differences: dict[str, FieldDifference] = {}
    for row in rows:
        expected, observed = row["expected"] or {}, row["observed"] or {}
        for name in [*expected, *(key for key in observed if key not in expected)]:
            if name in differences:
                continue
            differences[name] = FieldDifference(name, str(expected.get(name, "")), str(observed.get(name, "")))
    return list(differences.values())


async def get_case(database: Database, raw_case_id: str, budget: Budget) -> CaseDetail:
    case_id = parse_uuid(raw_case_id, "case_id")
    async with database.connection(budget) as connection:
        case = await cases_repo.get_case(connection, case_id)
        if case is None:
            raise NotFound("case", str(case_id))
        rows = await cases_repo.case_report_rows(connection, case_id)
    return CaseDetail(case, rows, _differences(rows))


async def get_report_run(database: Database, raw_run_id: str, budget: Budget) -> ReportRunRecord:
    run_id = parse_uuid(raw_run_id, "report_run_id")
    async with database.connection(budget) as connection:
        run = await recon_repo.get_run(connection, run_id)
    if run is None:
        raise NotFound("report run", str(run_id))
    return run


def family_of(kind: str) -> str | None:
    """The API's kind (CaseKind, without its prefix) a case of this kind shows under."""
    return KIND_FAMILIES.get(kind)


@dataclass(frozen=True)
class Resolved:
    detail: CaseDetail
    #: the result of an earlier call with the same key, returned again
    replayed: bool


async def resolve_case(database: Database, principal: Principal, command: ResolveCase, budget: Budget) -> Resolved:
    """Decide an open case, once: the decision (with its note and evidence) closes the case, is appended
    to the case's audit chain, and a difference it carries is posted to the ledger (once per case). The
    same key again returns the case as resolved; another resolution of a resolved case is refused."""

    async def work(connection: asyncpg.Connection) -> bool:
        claimed = await claim_key(
            connection,
            principal.client_id,
            command.idempotency_key,
            RESOLVE_CASE_OPERATION,
            command.fingerprint(),
            command.case_id,
        )
        if claimed.replayed:
            return True
        case = await cases_repo.lock_case(connection, command.case_id)
        if case is None:
            raise NotFound("case", str(command.case_id))
        if case["status"] != CaseStatus.OPEN:
            raise FailedPrecondition("case_id", f"case {command.case_id} is already resolved")
        at = datetime.now(UTC).isoformat()
        if case["kind"] == CORRECTION_CASE and command.resolution is Resolution.PROVIDER_CORRECT:
            # accepting the provider's version of a decided payment: the correction the case proposes,
            # through the payment's machine and the ledger, as approve-correction applies it
            approved = await approve_correction_in(
                connection,
                command.case_id,
                None,
                principal.client_id,
                command.note,
                {"resolution": command.resolution.value, "evidence_refs": list(command.evidence_refs), "at": at},
            )
            await append_audit(
                connection,
                "case",
                str(command.case_id),
                "case.resolved",
                principal.client_id,
                {
                    "resolution": command.resolution.value,
                    "note": command.note,
                    "at": at,
                    "ledger_entries_posted": len(approved.outcome.ledger_entry_ids),
                },
            )
            return False
        posted = 0
        if command.difference is not None and command.currency_code is not None:
            if case["provider"] is None:
                raise FailedPrecondition(
                    "difference", "this case was not opened by a provider's report: resolve it without a difference"
                )
            if case["currency_code"] != command.currency_code:
                raise FailedPrecondition(
                    "difference.currency_code",
                    f"the case is about {case['currency_code']}: a difference is posted in that currency",
                )
            account = f"{POSTING_RESOLUTIONS[command.resolution]}:{case['provider']}"
            posted = await ledger_repository.post_entries(
                connection, case_postings(command.case_id, account, command.difference, command.currency_code)
            )
        resolution = {
            "resolution": command.resolution.value,
            "resolved_by": principal.client_id,
            "note": command.note,
            "evidence_refs": list(command.evidence_refs),
            "difference": None if command.difference is None else format(command.difference, "f"),
            "currency_code": command.currency_code,
            "ledger_entries_posted": posted,
            "at": at,
        }
        await cases_repo.resolve_case(connection, command.case_id, resolution)
        await append_audit(connection, "case", str(command.case_id), "case.resolved", principal.client_id, resolution)
        return False

    replayed = await in_transaction(database, budget, work)
    detail = await get_case(database, str(command.case_id), budget)
    return Resolved(detail, replayed)
