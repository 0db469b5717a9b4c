"""The payment state machine: which internal event moves a payment from which state to which.

Providers never set a state directly: their statuses are mapped to these events (provider_status.py)
and each event is applied through PAYMENT_EVENTS, the one table of the rules.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

from server.domain.corrections import CORRECTIONS, Approval
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
    P.SUCCEEDED: {PaymentEvent.REFUND_REQUESTED: P.REFUND_PENDING},
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
    PaymentEvent.EXPIRED: P.EXPIRED,
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


class Witness(enum.StrEnum):
    """Who says what a payment's outcome is: the order of witnesses.

    The provider's API, asked by id (or answering Ballast's own request), is the authoritative
    witness. A webhook is a signed signal that something changed: authentic, but possibly stale,
    duplicated, reordered or contradictory, so a webhook never decides a payment; it makes Ballast ask
    the API at once. Ballast itself concludes only what it knows: that no answer came (UNKNOWN), or
    that a payment was never sent and its client never came back (EXPIRED).
    """

    API = "api"
    WEBHOOK = "webhook"
    BALLAST = "ballast"


class Verdict(enum.StrEnum):
    """What a piece of provider evidence means for a payment, before anything is written."""

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


def judge(current: PaymentState, event: PaymentEvent, witness: Witness) -> Verdict:
    """Sort evidence by what it claims and who says it (the evidence-judging table).

    - The claim names the current state: REPEAT.
    - A webhook may move a payment to PENDING where the machine allows (the provider has it;
      nothing is decided).
      Any other claim of a webhook is CONFIRMed with the API first when the API's word could change
      something (a move, or a correction the table lists); else it is a REPEAT when the payment is
      decided with the same money outcome (failed for REJECTED), and STALE otherwise (pending after
      succeeded, succeeded after refunded).
    - The API's word applies wherever the machine has a move to the state it claims (APPLY). Where it
      has none: the same money outcome is a REPEAT (REJECTED vs failed), a contradiction the
      correction table lists is CORRECTed or HELD for a person, and anything else is STALE (pending
      after succeeded: a slower answer from before the decision).
    - Ballast's own conclusions apply only where the machine allows them, else they are STALE.
    """
    target = EVENT_TARGETS[event]
    if target is current:
        return Verdict.REPEAT
    moves = event_towards(current, target) is not None
    if witness is Witness.BALLAST:
        return Verdict.APPLY if moves else Verdict.STALE
    correction = CORRECTIONS.get((current, target))
    if witness is Witness.WEBHOOK:
        if target in UNDECIDED_STATES and moves:
            return Verdict.APPLY
        if moves or correction is not None:  # what the API would say could change something: ask it
            return Verdict.CONFIRM
    elif moves:
        return Verdict.APPLY
    if current in MONEY_OUTCOMES and MONEY_OUTCOMES.get(target) is MONEY_OUTCOMES[current]:
        return Verdict.REPEAT
    if correction is None or witness is Witness.WEBHOOK:
        return Verdict.STALE
    return Verdict.CORRECT if correction.approval is Approval.AUTOMATIC else Verdict.HOLD


@dataclass(frozen=True)
class Misfit:
    """A term the evidence names differently from the payment Ballast holds."""

    field: str
    ballast: str
    provider: str


def _same_amount(amount: Decimal, claimed: str) -> bool:
    try:
        return Decimal(claimed.strip()) == amount
    except ArithmeticError:  # not a number at all: it cannot be this payment's amount
        return False


def misfits(
    *,
    amount: Decimal,
    currency_code: str,
    provider_payment_id: str | None,
    claimed_amount: str | None,
    claimed_currency_code: str | None,
    claimed_provider_payment_id: str | None,
) -> list[Misfit]:
    """The terms in which provider evidence contradicts the payment; empty when it fits.

    Amounts compare by value ("12.3" is 12.30); a term the evidence does not state is not compared,
    nor a provider id Ballast has not recorded yet (the first one named is kept).
    """
    found: list[Misfit] = []
    if claimed_amount is not None and not _same_amount(amount, claimed_amount):
        found.append(Misfit("amount", format(amount, "f"), claimed_amount[:64]))
    if claimed_currency_code is not None and claimed_currency_code.strip().upper() != currency_code:
        found.append(Misfit("currency_code", currency_code, claimed_currency_code[:64]))
    if (
        claimed_provider_payment_id is not None
        and provider_payment_id is not None
        and claimed_provider_payment_id != provider_payment_id
    ):
        found.append(Misfit("provider_payment_id", provider_payment_id, claimed_provider_payment_id[:255]))
    return found
