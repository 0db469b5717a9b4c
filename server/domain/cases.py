"""Investigation cases: what Ballast could not decide alone, kept with the evidence for a person."""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal

from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.identifiers import parse_uuid
from server.domain.money import MoneyError, parse_amount, parse_currency
from server.domain.payments import check_text, validate_idempotency_key


class CaseStatus(enum.StrEnum):
    #: waiting for a person (or for more evidence, which is added to it)
    OPEN = "OPEN"
    RESOLVED = "RESOLVED"


#: A case's kind (one open case of a kind per payment or leg) and its summary for the person.
KIND_LENGTH_MAX = 64
SUMMARY_LENGTH_MAX = 2000


#: Each case kind Ballast opens, and the family the API shows it under (CaseKind, without its prefix):
#: reconciliation's differences by their own names, and the investigations of the rest of Ballast.
#: tests/unit/test_case_kinds.py checks every kind the services open is here.
KIND_FAMILIES: dict[str, str] = {
    # reconciliation (server/domain/reconciliation.py, Difference)
    "MISSING_INTERNAL": "MISSING_INTERNAL",
    "MISSING_PROVIDER": "MISSING_PROVIDER",
    "AMOUNT_MISMATCH": "AMOUNT_MISMATCH",
    "CURRENCY_MISMATCH": "CURRENCY_MISMATCH",
    "STATUS_MISMATCH": "STATUS_MISMATCH",
    "FEE_MISMATCH": "FEE_MISMATCH",
    "TIMING_MISMATCH": "TIMING_MISMATCH",
    "DUPLICATE_PROVIDER_ROW": "DUPLICATE",
    "FX_ADJUSTMENT": "FX_ADJUSTMENT",
    "PAYOUT_MISMATCH": "PAYOUT_MISMATCH",
    # investigations
    "CONTRADICTORY_VENUE_EVIDENCE": "CONTRADICTORY_EVIDENCE",
    "REFUND_CONTRADICTION": "CONTRADICTORY_EVIDENCE",
    "UNRESOLVED_OUTCOME": "UNRESOLVED_OUTCOME",
    "UNRESOLVED_REFUND": "UNRESOLVED_OUTCOME",
    "EVIDENCE_MISMATCH": "EVIDENCE_MISMATCH",
    "REFUND_EVIDENCE_MISMATCH": "EVIDENCE_MISMATCH",
    "CORRECTION_NEEDS_APPROVAL": "CORRECTION_NEEDS_APPROVAL",
    "UNASKED_REFUND": "UNASKED_REFUND",
    "VENUE_INSTRUCTION_NOT_DELIVERED": "INSTRUCTION_NOT_DELIVERED",
}


def kinds_of_family(family: str) -> list[str]:
    """The case kinds the API shows under one family."""
    return [kind for kind, of in KIND_FAMILIES.items() if of == family]


class Resolution(enum.StrEnum):
    """A person's decision on a case (ResolveCase)."""

    PROVIDER_CORRECT = "PROVIDER_CORRECT"  # the provider is right; Ballast's records are (to be) corrected
    INTERNAL_CORRECT = "INTERNAL_CORRECT"  # Ballast is right; the provider is (to be) asked to correct
    WRITTEN_OFF = "WRITTEN_OFF"  # accepted as it is; a difference given is posted to write-off
    NO_DISCREPANCY = "NO_DISCREPANCY"  # a timing difference, a false match
    COMPENSATED = "COMPENSATED"  # a compensating ledger entry for the difference


#: Resolutions that post a difference, and the account (per provider) each posts it against.
POSTING_RESOLUTIONS = {Resolution.COMPENSATED: "reconciliation_adjustment", Resolution.WRITTEN_OFF: "write_off"}
RESOLVE_CASE_OPERATION = "cases.resolve"
NOTE_LENGTH_MAX = 2000
EVIDENCE_REF_LENGTH_MAX = 500
EVIDENCE_REFS_MAX = 50


@dataclass(frozen=True)
class ResolveCase:
    """A validated request to decide a case: `difference` (provider less Ballast, signed) is posted."""

    idempotency_key: str
    case_id: uuid.UUID
    resolution: Resolution
    note: str
    evidence_refs: tuple[str, ...] = ()
    difference: Decimal | None = None
    currency_code: str | None = None

    def fingerprint(self) -> bytes:
        canonical = json.dumps(
            {
                "operation": RESOLVE_CASE_OPERATION,
                "case_id": str(self.case_id),
                "resolution": self.resolution.value,
                "note": self.note,
                "evidence_refs": list(self.evidence_refs),
                "difference": None if self.difference is None else format(self.difference, "f"),
                "currency_code": self.currency_code,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).digest()


def validate_resolve_case(
    *,
    idempotency_key: str,
    case_id: str,
    resolution: str,
    note: str,
    evidence_refs: list[str],
    difference: tuple[str, str] | None,
) -> ResolveCase:
    """Every field checked, every problem at once (INVALID_ARGUMENT naming each)."""
    violations: list[FieldViolation] = []
    validate_idempotency_key(idempotency_key, violations)
    parsed_id = None
    try:
        parsed_id = parse_uuid(case_id, "case_id")
    except InvalidArgument as error:
        violations.extend(error.violations)
    decided = Resolution.__members__.get(resolution)
    if decided is None:
        violations.append(FieldViolation("resolution", f"is required: one of {', '.join(Resolution)}"))
    if not note.strip():
        violations.append(FieldViolation("note", "is required: why this decision was taken"))
    check_text(violations, "note", note, NOTE_LENGTH_MAX)
    if len(evidence_refs) > EVIDENCE_REFS_MAX:
        violations.append(FieldViolation("evidence_refs", f"at most {EVIDENCE_REFS_MAX} references"))
    for n, ref in enumerate(evidence_refs):
        if not ref or len(ref) > EVIDENCE_REF_LENGTH_MAX or not ref.isprintable():
            violations.append(
                FieldViolation(f"evidence_refs[{n}]", f"must be 1 to {EVIDENCE_REF_LENGTH_MAX} printable characters")
            )
    amount = currency = None
    if difference is not None:
        value, currency = difference
        negative = value.startswith("-")
        try:
            currency = parse_currency(currency)
            amount = parse_amount(value[1:] if negative else value, currency)
            if amount == 0:
                violations.append(FieldViolation("difference.value", "must not be zero"))
            amount = -amount if negative else amount
        except MoneyError as error:
            violations.append(FieldViolation("difference", str(error)))
    if decided is Resolution.COMPENSATED and difference is None:
        violations.append(FieldViolation("difference", "is required to post a compensating entry"))
    if decided is not None and decided not in POSTING_RESOLUTIONS and difference is not None:
        violations.append(FieldViolation("difference", f"is posted only for {', '.join(POSTING_RESOLUTIONS)}"))
    if violations or parsed_id is None or decided is None:
        raise InvalidArgument(violations)
    return ResolveCase(idempotency_key, parsed_id, decided, note, tuple(evidence_refs), amount, currency)
