"""The payment state machine: a payment's states, and which internal event moves it from which state to which.

Providers never set a state directly: their statuses are mapped to these events (provider_status.py)
and each event is applied through PAYMENT_EVENTS, the one table of the rules. Who may make a move, and
what a piece of evidence means for a payment, is judged by server/domain/payment_evidence.py.
"""

from __future__ import annotations

import enum

from server.domain.state_machine import StateMachine


class PaymentState(enum.StrEnum):
    """Internal state of a payment. The names are stored in PostgreSQL and exposed in the API."""

    RECORDED = "RECORDED"
    PENDING = "PENDING"
    UNKNOWN = "UNKNOWN"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    REFUND_PENDING = "REFUND_PENDING"
    REFUNDED = "REFUNDED"
    #: captured, and part of it returned by refunds Ballast asked for (server/domain/refund_states.py)
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    #: never sent (or sent and unknown to the provider), and its client never came back: nothing happened
    EXPIRED = "EXPIRED"


#: Where every payment starts: recorded by Ballast, not yet sent anywhere.
INITIAL_PAYMENT_STATE = PaymentState.RECORDED

P = PaymentState


class PaymentEvent(enum.StrEnum):
    """What can happen to a payment, in Ballast's own words."""

    #: the provider took the request and has not decided yet
    ACCEPTED = "ACCEPTED"
    #: the request may have reached the provider, but no definite answer came back (timeout, reset)
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    SUCCEEDED = "SUCCEEDED"
    #: the provider tried and it did not work (insufficient funds, processing error)
    FAILED = "FAILED"
    #: refused before any money moved (validation, risk)
    REJECTED = "REJECTED"
    REFUND_REQUESTED = "REFUND_REQUESTED"
    REFUND_SUCCEEDED = "REFUND_SUCCEEDED"
    REFUND_FAILED = "REFUND_FAILED"
    #: one of Ballast's own refunds succeeded and part of the payment is still captured
    REFUNDED_IN_PART = "REFUNDED_IN_PART"
    #: Ballast's own conclusion: never sent, unknown to the provider, and its client never came back
    EXPIRED = "EXPIRED"


#: state -> {event -> next state}. Anything not listed is illegal from that state.
PAYMENT_EVENTS: dict[PaymentState, dict[PaymentEvent, PaymentState]] = {
    P.RECORDED: {
        PaymentEvent.ACCEPTED: P.PENDING,
        PaymentEvent.OUTCOME_UNKNOWN: P.UNKNOWN,
        PaymentEvent.SUCCEEDED: P.SUCCEEDED,
        PaymentEvent.FAILED: P.FAILED,
        PaymentEvent.REJECTED: P.REJECTED,
        PaymentEvent.EXPIRED: P.EXPIRED,
    },
    P.PENDING: {
        PaymentEvent.SUCCEEDED: P.SUCCEEDED,
        PaymentEvent.FAILED: P.FAILED,
        PaymentEvent.REJECTED: P.REJECTED,
    },
    P.UNKNOWN: {
        PaymentEvent.ACCEPTED: P.PENDING,
        PaymentEvent.SUCCEEDED: P.SUCCEEDED,
        PaymentEvent.FAILED: P.FAILED,
        PaymentEvent.REJECTED: P.REJECTED,
    },
    P.SUCCEEDED: {
        PaymentEvent.REFUND_REQUESTED: P.REFUND_PENDING,
        PaymentEvent.REFUNDED_IN_PART: P.PARTIALLY_REFUNDED,
        PaymentEvent.REFUND_SUCCEEDED: P.REFUNDED,
    },
    P.PARTIALLY_REFUNDED: {PaymentEvent.REFUND_SUCCEEDED: P.REFUNDED},
    P.REFUND_PENDING: {
        PaymentEvent.REFUND_SUCCEEDED: P.REFUNDED,
        PaymentEvent.REFUND_FAILED: P.SUCCEEDED,
    },
    P.FAILED: {},
    P.REJECTED: {},
    P.REFUNDED: {},
    P.EXPIRED: {},
}

#: Where each event leads when it is news; an event whose target is the current state is a repeat.
EVENT_TARGETS: dict[PaymentEvent, PaymentState] = {
    PaymentEvent.ACCEPTED: P.PENDING,
    PaymentEvent.OUTCOME_UNKNOWN: P.UNKNOWN,
    PaymentEvent.SUCCEEDED: P.SUCCEEDED,
    PaymentEvent.FAILED: P.FAILED,
    PaymentEvent.REJECTED: P.REJECTED,
    PaymentEvent.REFUND_REQUESTED: P.REFUND_PENDING,
    PaymentEvent.REFUND_SUCCEEDED: P.REFUNDED,
    PaymentEvent.REFUND_FAILED: P.SUCCEEDED,
    PaymentEvent.REFUNDED_IN_PART: P.PARTIALLY_REFUNDED,
    PaymentEvent.EXPIRED: P.EXPIRED,
}

#: The moves only Ballast makes, from the outcomes of the refunds it asked for: the payment's refunds
#: returned part of it, or all of it. A provider's word that a payment was refunded never makes them
#: (it is a refund Ballast did not ask for, or one of its own refunds seen from the payment's side,
#: which the refund's own evidence settles).
REFUND_MOVES = frozenset(
    {(P.SUCCEEDED, P.PARTIALLY_REFUNDED), (P.SUCCEEDED, P.REFUNDED), (P.PARTIALLY_REFUNDED, P.REFUNDED)}
)

#: The states a provider's word that a payment was refunded (or is being refunded) claims.
REFUNDED_STATES = frozenset({P.REFUND_PENDING, P.REFUNDED})

#: States in which a payment's captured money may be refunded (in part) by a refund Ballast sends.
REFUNDABLE_STATES = frozenset({P.SUCCEEDED, P.PARTIALLY_REFUNDED})

PAYMENT_MACHINE: StateMachine[PaymentState] = StateMachine(
    name="payment",
    initial=INITIAL_PAYMENT_STATE,
    transitions={state: frozenset(events.values()) for state, events in PAYMENT_EVENTS.items()},
)


class Witness(enum.StrEnum):
    """Who says what a payment's outcome is: the order of witnesses.

    The provider's API, asked by id (or answering Ballast's own request), is the authoritative
    witness. A webhook is a signed signal that something changed: authentic, but possibly stale,
    duplicated, reordered or contradictory, so a webhook never decides a payment; it makes Ballast ask
    the API at once. Ballast itself concludes only what it knows: that no answer came (UNKNOWN), or
    that a payment was never sent and its client never came back (EXPIRED).

    The provider's settlement report says what money it actually paid out: a row that settles a
    payment Ballast has not decided (its outcome unknown, or still pending) decides it SUCCEEDED, the
    row as its evidence. It never changes a decided payment: a report that disagrees with one is a
    difference for a person (reconciliation opens a case).
    """

    API = "api"
    WEBHOOK = "webhook"
    BALLAST = "ballast"
    REPORT = "report"


class Verdict(enum.StrEnum):
    """What a piece of evidence means for a payment, judged before anything is written
    (server/domain/payment_evidence.py, `judge`). What was then done is the outcome
    (server/services/payment_events.py, PaymentOutcome)."""

    #: news: it moves the payment
    APPLY = "APPLY"
    #: the payment is already where the evidence says (or in the same money outcome): nothing to do
    REPEAT = "REPEAT"
    #: late: it describes a step the payment has gone past (PENDING after SUCCEEDED); recorded, ignored
    STALE = "STALE"
    #: a webhook claims news that would decide the payment: recorded, nothing moves, and the provider's
    #: API is asked at once; its answer decides
    CONFIRM = "CONFIRM"
    #: the provider's API contradicts a decided state, and the correction table fixes it without a person
    CORRECT = "CORRECT"
    #: the provider's API contradicts a decided state, and the correction needs a person's approval:
    #: nothing moves, a case holds the proposed correction and its evidence
    HOLD = "HOLD"
    #: the evidence is about another amount, currency or provider object: it never moves anything and
    #: opens a case naming the fields that differ
    MISFIT = "MISFIT"


#: States in which the provider has not decided (or not been asked): evidence may still decide them.
UNDECIDED_STATES = frozenset({P.RECORDED, P.PENDING, P.UNKNOWN})


class MoneyOutcome(enum.StrEnum):
    """What a decided state means for the money: two states with one outcome never need a correction."""

    NOT_TAKEN = "NOT_TAKEN"
    CAPTURED = "CAPTURED"
    RETURNED = "RETURNED"


#: The money outcome of each decided state (undecided states have none).
MONEY_OUTCOMES: dict[PaymentState, MoneyOutcome] = {
    P.SUCCEEDED: MoneyOutcome.CAPTURED,
    P.REFUND_PENDING: MoneyOutcome.CAPTURED,
    P.PARTIALLY_REFUNDED: MoneyOutcome.CAPTURED,
    P.REFUNDED: MoneyOutcome.RETURNED,
    P.FAILED: MoneyOutcome.NOT_TAKEN,
    P.REJECTED: MoneyOutcome.NOT_TAKEN,
    P.EXPIRED: MoneyOutcome.NOT_TAKEN,
}


def event_towards(current: PaymentState, target: PaymentState) -> PaymentEvent | None:
    """The event that moves a payment from `current` to `target`, if the machine has one."""
    for event, next_state in PAYMENT_EVENTS[current].items():
        if next_state is target:
            return event
    return None
