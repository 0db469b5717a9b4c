"""Investigation cases: what Ballast could not decide alone, kept with the evidence for a person."""

from __future__ import annotations

import enum


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
