"""The refund state machine, and how much of a payment is left to refund.

A refund is its own resource: a client asks for part or all of a captured payment back, Ballast
records it, sends it to the provider under the refund's own id as the idempotency key, and the
provider's answers (its API asked by id, its webhooks as signals) move it, the way they move a
payment (payment_states.py). Its amount counts against the payment from the moment it is recorded
until it ends without money moving (failed, rejected, expired), so several partial refunds can never
add up to more than was captured, however many are asked for at once; PostgreSQL holds the same rule
(server/db/invariants.sql).
"""

from __future__ import annotations

import enum
from decimal import Decimal

from server.domain.payment_states import PaymentState, Verdict, Witness
from server.domain.state_machine import StateMachine

#: The longest reason a client may give for a refund (the provider keeps it with its refund).
REASON_LENGTH_MAX = 255


class RefundState(enum.StrEnum):
    """Internal state of a refund. The names are stored in PostgreSQL and exposed in the API."""

    #: asked for and recorded by Ballast, not yet sent (or not yet known to have arrived)
    RECORDED = "RECORDED"
    #: the provider took it and has not finished it
    PENDING = "PENDING"
    #: sent, and no definite answer came back: the resolver asks the provider by id
    UNKNOWN = "UNKNOWN"
    #: the provider returned the money to the customer
    SUCCEEDED = "SUCCEEDED"
    #: the provider tried and could not return the money
    FAILED = "FAILED"
    #: the provider refused it before anything moved
    REJECTED = "REJECTED"
    #: never sent (or unknown to the provider), and its client never came back: nothing happened
    EXPIRED = "EXPIRED"


INITIAL_REFUND_STATE = RefundState.RECORDED

R = RefundState


class RefundEvent(enum.StrEnum):
    """What can happen to a refund, in Ballast's own words."""

    ACCEPTED = "ACCEPTED"
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


#: state -> {event -> next state}. Anything not listed is illegal from that state.
REFUND_EVENTS: dict[RefundState, dict[RefundEvent, RefundState]] = {
    R.RECORDED: {
        RefundEvent.ACCEPTED: R.PENDING,
        RefundEvent.OUTCOME_UNKNOWN: R.UNKNOWN,
        RefundEvent.SUCCEEDED: R.SUCCEEDED,
        RefundEvent.FAILED: R.FAILED,
        RefundEvent.REJECTED: R.REJECTED,
        RefundEvent.EXPIRED: R.EXPIRED,
    },
    R.PENDING: {RefundEvent.SUCCEEDED: R.SUCCEEDED, RefundEvent.FAILED: R.FAILED},
    R.UNKNOWN: {
        RefundEvent.ACCEPTED: R.PENDING,
        RefundEvent.SUCCEEDED: R.SUCCEEDED,
        RefundEvent.FAILED: R.FAILED,
        RefundEvent.REJECTED: R.REJECTED,
    },
    R.SUCCEEDED: {},
    R.FAILED: {},
    R.REJECTED: {},
    R.EXPIRED: {},
}

#: Where each event leads when it is news; an event whose target is the current state is a repeat.
REFUND_EVENT_TARGETS: dict[RefundEvent, RefundState] = {
    RefundEvent.ACCEPTED: R.PENDING,
    RefundEvent.OUTCOME_UNKNOWN: R.UNKNOWN,
    RefundEvent.SUCCEEDED: R.SUCCEEDED,
    RefundEvent.FAILED: R.FAILED,
    RefundEvent.REJECTED: R.REJECTED,
    RefundEvent.EXPIRED: R.EXPIRED,
}

REFUND_MACHINE: StateMachine[RefundState] = StateMachine(
    name="refund",
    initial=INITIAL_REFUND_STATE,
    transitions={state: frozenset(events.values()) for state, events in REFUND_EVENTS.items()},
)

#: States in which the provider has not decided (or not been asked): evidence may still decide them.
UNDECIDED_REFUND_STATES = frozenset({R.RECORDED, R.PENDING, R.UNKNOWN})
#: States in which no money moved and none will: the refund's amount no longer counts against the payment.
RELEASED_REFUND_STATES = frozenset({R.FAILED, R.REJECTED, R.EXPIRED})


def holds_amount(state: RefundState) -> bool:
    """Whether a refund in `state` counts against what is left to refund of its payment."""
    return state not in RELEASED_REFUND_STATES


class RefundTooLarge(ValueError):
    """The amount asked for is more than what is left to refund of the payment."""

    def __init__(self, asked: Decimal, left: Decimal) -> None:
        self.asked = asked
        self.left = left
        super().__init__(f"{asked} is more than the {left} left to refund")


def left_to_refund(captured: Decimal, held: Decimal) -> Decimal:
    """What may still be refunded of a payment that captured `captured`, with `held` already counted
    against it by refunds that succeeded or may still succeed."""
    if captured < 0 or held < 0 or held > captured:
        raise ValueError(f"held {held} of captured {captured} is impossible")
    return captured - held


def refund_amount(asked: Decimal | None, captured: Decimal, held: Decimal) -> Decimal:
    """The amount a new refund takes: what was asked, or (None) all that is left; RefundTooLarge when
    that is more than is left, ValueError when nothing is (or the amount is not positive)."""
    left = left_to_refund(captured, held)
    amount = left if asked is None else asked
    if amount <= 0:
        raise ValueError("nothing is left to refund" if asked is None else "a refund's amount must be positive")
    if amount > left:
        raise RefundTooLarge(amount, left)
    return amount


def refund_event_towards(current: RefundState, target: RefundState) -> RefundEvent | None:
    """The event that moves a refund from `current` to `target`, if the machine has one."""
    for event, next_state in REFUND_EVENTS[current].items():
        if next_state is target:
            return event
    return None


def judge_refund(current: RefundState, event: RefundEvent, witness: Witness) -> Verdict:
    """Sort evidence about a refund by what it claims and who says it, as `judge` does for payments
    (server/domain/payment_evidence.py), with one difference: a decided refund is never corrected
    by Ballast on its own. Returning a customer's money, or finding it was not returned, is a
    person's call, so the API's contradiction of a decided refund is HELD in a case.

    - The claim names the current state: REPEAT.
    - A webhook moves a refund to PENDING where the machine allows; any other news it claims is
      CONFIRMed with the API first (a refund due a check at once); a contradiction of a decided
      refund too (the API's answer may hold it); older news is STALE.
    - The API's word applies wherever the machine has the move (APPLY); a pending word about a
      decided refund is STALE; two ends without money moving (FAILED, REJECTED) are a REPEAT; any
      other contradiction of a decided refund is HELD.
    - Ballast's own conclusions (no answer, expired) apply only where the machine allows them.
    """
    target = REFUND_EVENT_TARGETS[event]
    if target is current:
        return Verdict.REPEAT
    moves = refund_event_towards(current, target) is not None
    if witness is Witness.BALLAST:
        return Verdict.APPLY if moves else Verdict.STALE
    if moves:
        return Verdict.APPLY if witness is Witness.API or target is R.PENDING else Verdict.CONFIRM
    if target in UNDECIDED_REFUND_STATES:
        return Verdict.STALE
    if current in RELEASED_REFUND_STATES and target in RELEASED_REFUND_STATES:
        return Verdict.REPEAT
    if current in UNDECIDED_REFUND_STATES:
        return Verdict.STALE  # e.g. EXPIRED claimed by a provider: not its word to say
    return Verdict.CONFIRM if witness is Witness.WEBHOOK else Verdict.HOLD


def payment_state_after_refunds(current: PaymentState, captured: Decimal, refunded: Decimal) -> PaymentState:
    """Where a captured payment's own refunds leave it, having returned `refunded` of `captured`:
    REFUNDED when all of it, PARTIALLY_REFUNDED when some, as it is when none (PostgreSQL checks the
    same totals on the move: payment_transitions_apply)."""
    if current not in (PaymentState.SUCCEEDED, PaymentState.PARTIALLY_REFUNDED) or refunded <= 0:
        return current
    return PaymentState.REFUNDED if refunded >= captured else PaymentState.PARTIALLY_REFUNDED
