"""Each provider's vocabulary mapped to Ballast's payment and refund events and leg reports: the only place those
mappings live.

A provider's status is stored verbatim as evidence; only its mapped event can move a payment.
"""

from __future__ import annotations

import enum

from server.domain.errors import BallastError
from server.domain.order_legs import LegState
from server.domain.payment_states import PaymentEvent
from server.domain.refund_states import RefundEvent

E = PaymentEvent

#: provider -> {provider's status word, lower case -> internal event}
PROVIDER_STATUS_EVENTS: dict[str, dict[str, PaymentEvent]] = {
    # the local simulator speaks like a card gateway
    "simulator": {
        "pending": E.ACCEPTED,
        "processing": E.ACCEPTED,
        "requires_action": E.ACCEPTED,
        "succeeded": E.SUCCEEDED,
        "captured": E.SUCCEEDED,
        "settled": E.SUCCEEDED,
        "failed": E.FAILED,
        "declined": E.FAILED,
        "canceled": E.FAILED,
        "rejected": E.REJECTED,
        "invalid": E.REJECTED,
        "refund_pending": E.REFUND_REQUESTED,
        "refunded": E.REFUND_SUCCEEDED,
        "refund_failed": E.REFUND_FAILED,
    },
}


#: provider -> {a refund's status word, lower case -> internal refund event}
PROVIDER_REFUND_STATUS_EVENTS: dict[str, dict[str, RefundEvent]] = {
    "simulator": {
        "pending": RefundEvent.ACCEPTED,
        "succeeded": RefundEvent.SUCCEEDED,
        "failed": RefundEvent.FAILED,
    },
}


class UnknownProviderStatus(BallastError):
    """A status word the mapping does not know: kept as evidence, never guessed at."""

    def __init__(self, provider: str, status: str) -> None:
        self.provider = provider
        self.status = status
        super().__init__(f"provider {provider!r} reported status {status[:64]!r}, which has no mapping")


def event_for(provider: str, status: str) -> PaymentEvent:
    try:
        return PROVIDER_STATUS_EVENTS[provider][status.strip().lower()]
    except KeyError:
        raise UnknownProviderStatus(provider, status) from None


def refund_event_for(provider: str, status: str) -> RefundEvent:
    """The refund event a provider's word for a refund's status stands for; UnknownProviderStatus if none."""
    try:
        return PROVIDER_REFUND_STATUS_EVENTS[provider][status.strip().lower()]
    except KeyError:
        raise UnknownProviderStatus(provider, status) from None


class VenueReport(enum.StrEnum):
    """What a venue's execution report says happened to a leg, in Ballast's words."""

    ACKNOWLEDGED = "ACKNOWLEDGED"
    FILL = "FILL"
    REJECTED = "REJECTED"
    CLOSED = "CLOSED"
    #: a modification was confirmed: its terms are in force
    MODIFIED = "MODIFIED"
    #: a modification was refused: the terms in force did not change
    MODIFY_REFUSED = "MODIFY_REFUSED"


#: The venue's answers to a modification (they move a leg through answer_modification, not a status).
MODIFICATION_ANSWERS = frozenset({VenueReport.MODIFIED, VenueReport.MODIFY_REFUSED})


R = VenueReport

#: venue -> {its execution type word, lower case -> what it reports}
VENUE_EXEC_TYPES: dict[str, dict[str, VenueReport]] = {
    # the local simulator's broker venue, whose words are close to FIX's ExecType
    "simulator": {
        "new": R.ACKNOWLEDGED,
        "partial_fill": R.FILL,
        "fill": R.FILL,
        "rejected": R.REJECTED,
        "canceled": R.CLOSED,
        "closed": R.CLOSED,
        "replaced": R.MODIFIED,
        "modify_rejected": R.MODIFY_REFUSED,
        # its order statuses, as a status inquiry answers: a filled status means fills to read
        "partially_filled": R.FILL,
        "filled": R.FILL,
    },
}

#: venue -> {the status word of an order's modification, lower case -> the answer it gives}; a word
#: not here (pending, canceled) answers nothing.
VENUE_MODIFICATION_STATUSES: dict[str, dict[str, VenueReport]] = {
    "simulator": {"confirmed": R.MODIFIED, "rejected": R.MODIFY_REFUSED},
}

#: The leg state each status report moves a leg to (fills move it through apply_fill, the answers to a
#: modification through answer_modification).
LEG_STATE_FOR_REPORT: dict[VenueReport, LegState] = {
    R.ACKNOWLEDGED: LegState.PENDING,
    R.REJECTED: LegState.REJECTED,
    R.CLOSED: LegState.CLOSED,
}


def modification_answer_for(venue: str, status: str) -> VenueReport | None:
    """What a venue's word for a modification's status answers (MODIFIED, MODIFY_REFUSED), if anything."""
    return VENUE_MODIFICATION_STATUSES.get(venue, {}).get(status.strip().lower())


def venue_report_for(venue: str, exec_type: str) -> VenueReport:
    try:
        return VENUE_EXEC_TYPES[venue][exec_type.strip().lower()]
    except KeyError:
        raise UnknownProviderStatus(venue, exec_type) from None
