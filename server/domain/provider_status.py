"""Each provider's vocabulary mapped to Ballast's payment events: the only place that mapping lives.

A provider's status is stored verbatim as evidence; only its mapped event can move a payment.
"""

from __future__ import annotations

from server.domain.errors import BallastError
from server.domain.payment_states import PaymentEvent

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
