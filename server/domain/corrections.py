"""The correction table: what Ballast does when the provider's API contradicts a decided payment.

A decided state stands against webhooks (they only make Ballast ask), but not against the provider's
authoritative word: when the API, asked by id, says another outcome, the payment is corrected
through an explicit CORRECTION transition with its evidence and the compensating ledger entries.
Not every mismatch is fixed automatically. The rule of thumb: a correction that gives a merchant
money the provider really took is automatic (the ledger would otherwise owe the merchant nothing for
a real charge); one that takes money back from a merchant, or charges for a payment its client was
told had expired, or records a refund Ballast never asked for, waits for a person, in a case holding
the proposed correction and the evidence. A payment corrected once needs a person for any further
correction: a provider that changes its mind twice is not trusted a third time.

PostgreSQL enforces the same table (payment_corrections, checked by the transition trigger).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from server.domain.payment_states import PaymentState

P = PaymentState

#: The event name of a correction transition (never a provider's event: it is Ballast's reconciling act).
CORRECTION_EVENT = "CORRECTION"
#: The case a correction waiting for a person opens.
CORRECTION_CASE = "CORRECTION_NEEDS_APPROVAL"
#: The longest name of the person approving a correction (kept with the correction transition).
APPROVER_LENGTH_MAX = 128


class Approval(enum.StrEnum):
    AUTOMATIC = "AUTOMATIC"
    PERSON = "PERSON"


@dataclass(frozen=True)
class Correction:
    #: the state the payment is corrected to (the provider's)
    to_state: PaymentState
    approval: Approval
    why: str


_TAKEN = "the provider took the money: the merchant is owed it (posts the capture)"
_TAKE_BACK = "takes money back from the merchant: a person confirms the reversal"
_EXPIRED = "its client was told it expired: charging for it (or refunding the customer) is a person's call"
_UNASKED_REFUND = "a refund Ballast never asked for: a person confirms it before the ledger returns the money"

#: (decided state, the state the provider's API says) -> the correction. Pairs not listed are not
#: contradictions (a move the machine allows, the same money outcome, or older news).
CORRECTIONS: dict[tuple[PaymentState, PaymentState], Correction] = {
    (P.FAILED, P.SUCCEEDED): Correction(P.SUCCEEDED, Approval.AUTOMATIC, _TAKEN),
    (P.REJECTED, P.SUCCEEDED): Correction(P.SUCCEEDED, Approval.AUTOMATIC, _TAKEN),
    (P.SUCCEEDED, P.FAILED): Correction(P.FAILED, Approval.PERSON, _TAKE_BACK),
    (P.SUCCEEDED, P.REJECTED): Correction(P.REJECTED, Approval.PERSON, _TAKE_BACK),
    (P.REFUND_PENDING, P.FAILED): Correction(P.FAILED, Approval.PERSON, _TAKE_BACK),
    (P.REFUND_PENDING, P.REJECTED): Correction(P.REJECTED, Approval.PERSON, _TAKE_BACK),
    (P.EXPIRED, P.PENDING): Correction(P.PENDING, Approval.PERSON, _EXPIRED),
    (P.EXPIRED, P.SUCCEEDED): Correction(P.SUCCEEDED, Approval.PERSON, _EXPIRED),
    (P.SUCCEEDED, P.REFUNDED): Correction(P.REFUNDED, Approval.PERSON, _UNASKED_REFUND),
    (P.RECORDED, P.REFUNDED): Correction(P.REFUNDED, Approval.PERSON, _UNASKED_REFUND),
    (P.PENDING, P.REFUNDED): Correction(P.REFUNDED, Approval.PERSON, _UNASKED_REFUND),
    (P.UNKNOWN, P.REFUNDED): Correction(P.REFUNDED, Approval.PERSON, _UNASKED_REFUND),
    (P.FAILED, P.REFUNDED): Correction(P.REFUNDED, Approval.PERSON, _UNASKED_REFUND),
    (P.REJECTED, P.REFUNDED): Correction(P.REFUNDED, Approval.PERSON, _UNASKED_REFUND),
    (P.EXPIRED, P.REFUNDED): Correction(P.REFUNDED, Approval.PERSON, _UNASKED_REFUND),
    (P.RECORDED, P.REFUND_PENDING): Correction(P.REFUND_PENDING, Approval.PERSON, _UNASKED_REFUND),
    (P.PENDING, P.REFUND_PENDING): Correction(P.REFUND_PENDING, Approval.PERSON, _UNASKED_REFUND),
    (P.UNKNOWN, P.REFUND_PENDING): Correction(P.REFUND_PENDING, Approval.PERSON, _UNASKED_REFUND),
    (P.FAILED, P.REFUND_PENDING): Correction(P.REFUND_PENDING, Approval.PERSON, _UNASKED_REFUND),
    (P.REJECTED, P.REFUND_PENDING): Correction(P.REFUND_PENDING, Approval.PERSON, _UNASKED_REFUND),
    (P.EXPIRED, P.REFUND_PENDING): Correction(P.REFUND_PENDING, Approval.PERSON, _UNASKED_REFUND),
}


def approval_needed(from_state: PaymentState, to_state: PaymentState, corrected_before: bool) -> Approval:
    """Who must approve correcting a payment from `from_state` to `to_state`."""
    correction = CORRECTIONS[(from_state, to_state)]
    return Approval.PERSON if corrected_before else correction.approval
