"""The payment state machine: which internal event moves a payment from which state to which.

Providers never set a state directly: their statuses are mapped to these events (provider_status.py)
and each event is applied through PAYMENT_EVENTS, the one table of the rules.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from server.domain.payments import PaymentState
from server.domain.state_machine import IllegalTransition, StateMachine

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


#: state -> {event -> next state}. Anything not listed is illegal from that state.
PAYMENT_EVENTS: dict[PaymentState, dict[PaymentEvent, PaymentState]] = {
    P.RECORDED: {
        PaymentEvent.ACCEPTED: P.PENDING,
        PaymentEvent.OUTCOME_UNKNOWN: P.UNKNOWN,
        PaymentEvent.SUCCEEDED: P.SUCCEEDED,
        PaymentEvent.FAILED: P.FAILED,
        PaymentEvent.REJECTED: P.REJECTED,
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
    P.SUCCEEDED: {PaymentEvent.REFUND_REQUESTED: P.REFUND_PENDING},
    P.REFUND_PENDING: {
        PaymentEvent.REFUND_SUCCEEDED: P.REFUNDED,
        PaymentEvent.REFUND_FAILED: P.SUCCEEDED,
    },
    P.FAILED: {},
    P.REJECTED: {},
    P.REFUNDED: {},
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
}

PAYMENT_MACHINE: StateMachine[PaymentState] = StateMachine(
    name="payment",
    initial=P.RECORDED,
    transitions={state: frozenset(events.values()) for state, events in PAYMENT_EVENTS.items()},
)


@dataclass(frozen=True)
class PaymentDecision:
    """The outcome of applying an event: the next state, or None when the event changes nothing."""

    from_state: PaymentState
    to_state: PaymentState | None

    @property
    def changes(self) -> bool:
        return self.to_state is not None


def decide(current: PaymentState, event: PaymentEvent, subject: str = "") -> PaymentDecision:
    """Apply `event` to a payment in `current`: a move, a harmless repeat, or IllegalTransition.

    A repeat (ACCEPTED while PENDING, SUCCEEDED while SUCCEEDED) changes nothing, so duplicate
    provider messages are safe. Anything else the table does not list is refused, naming both states.
    """
    next_state = PAYMENT_EVENTS[current].get(event)
    if next_state is not None:
        return PaymentDecision(current, next_state)
    if EVENT_TARGETS[event] is current:
        return PaymentDecision(current, None)
    raise IllegalTransition(PAYMENT_MACHINE.name, current.value, EVENT_TARGETS[event].value, subject)


class Verdict(enum.StrEnum):
    """What a piece of provider evidence means for a payment, before anything is written."""

    #: news: it moves the payment
    APPLY = "APPLY"
    #: the payment is already where the evidence says: nothing to do
    REPEAT = "REPEAT"
    #: late: it describes a step the payment has gone past (PENDING after SUCCEEDED); recorded, ignored
    STALE = "STALE"
    #: it claims the opposite of a decided outcome (SUCCEEDED after FAILED): recorded, nothing moves,
    #: and a person has to look (an investigation case)
    CONTRADICTION = "CONTRADICTION"


#: Decided outcomes by family: evidence for the other family contradicts them.
_SUCCESS_FAMILY = frozenset({P.SUCCEEDED, P.REFUND_PENDING, P.REFUNDED})
_FAILURE_FAMILY = frozenset({P.FAILED, P.REJECTED})
_REFUND_EVENTS = frozenset({PaymentEvent.REFUND_REQUESTED, PaymentEvent.REFUND_SUCCEEDED, PaymentEvent.REFUND_FAILED})


def judge(current: PaymentState, event: PaymentEvent) -> Verdict:
    """Sort provider evidence: apply it, a repeat, stale, or a contradiction of what is decided."""
    if event in PAYMENT_EVENTS[current]:
        return Verdict.APPLY
    target = EVENT_TARGETS[event]
    if target is current:
        return Verdict.REPEAT
    if event in _REFUND_EVENTS:
        return Verdict.CONTRADICTION if current in _FAILURE_FAMILY else Verdict.STALE
    if (current in _SUCCESS_FAMILY and target in _FAILURE_FAMILY) or (
        current in _FAILURE_FAMILY and target in _SUCCESS_FAMILY
    ):
        return Verdict.CONTRADICTION
    return Verdict.STALE
