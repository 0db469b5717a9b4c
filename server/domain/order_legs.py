"""Order legs: their state machine, fills applied exactly once, never over the quantity in force, and
the venue's answer to a modification.

A leg is one child order at the venue. A modification (ModifyLeg) is a cancel/replace of that order:
a new total quantity and/or limit price. It may be asked of a leg working at the venue (PENDING,
PARTIALLY_FILLED), down to what has filled, or of a FILLED leg, where only a larger quantity changes
anything: it re-opens the leg for the difference. Until the venue answers, the leg is MODIFYING under
its old terms, and fills the venue made under them still apply (MODIFYING -> MODIFYING). The answer
returns the leg to the state its fills say under the terms then in force: the new ones when the venue
confirmed, the old ones when it refused (PENDING, PARTIALLY_FILLED or FILLED). A refused modification
never rejects the leg: REJECTED from MODIFYING is the venue refusing the order itself, which it can
only do while nothing has filled.
"""

from __future__ import annotations

import decimal
import enum
from dataclasses import dataclass, field, replace
from decimal import Decimal

from server.domain.errors import BallastError
from server.domain.state_machine import IllegalTransition, StateMachine


class LegState(enum.StrEnum):
    SUBMITTED = "SUBMITTED"
    PENDING = "PENDING"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    MODIFYING = "MODIFYING"
    REJECTED = "REJECTED"
    CLOSED = "CLOSED"


L = LegState


class ModificationStatus(enum.StrEnum):
    """Where a leg's latest modification stands."""

    #: sent, or being sent, to the venue; the leg is MODIFYING
    PENDING = "PENDING"
    #: the venue confirmed it: its terms are in force
    CONFIRMED = "CONFIRMED"
    #: the venue refused it: the terms in force did not change
    REFUSED = "REFUSED"
    #: ended unanswered: the leg was closed, or its order rejected, first
    CANCELED = "CANCELED"


#: Exactly the allowed moves of a leg; everything else is illegal.
LEG_TRANSITIONS: dict[LegState, frozenset[LegState]] = {
    L.SUBMITTED: frozenset({L.PENDING, L.REJECTED, L.CLOSED}),
    L.PENDING: frozenset({L.FILLED, L.REJECTED, L.PARTIALLY_FILLED, L.MODIFYING, L.CLOSED}),
    L.PARTIALLY_FILLED: frozenset({L.PARTIALLY_FILLED, L.FILLED, L.MODIFYING, L.CLOSED}),
    L.FILLED: frozenset({L.MODIFYING, L.CLOSED}),
    # a fill under the old terms; the venue's answer (to what the fills say); the order refused; closed
    L.MODIFYING: frozenset({L.MODIFYING, L.PENDING, L.PARTIALLY_FILLED, L.FILLED, L.REJECTED, L.CLOSED}),
    L.REJECTED: frozenset({L.CLOSED}),
    L.CLOSED: frozenset(),
}

LEG_MACHINE: StateMachine[LegState] = StateMachine(name="order leg", initial=L.SUBMITTED, transitions=LEG_TRANSITIONS)

#: Quantities and prices carry at most this many fraction digits (the NUMERIC scale in PostgreSQL).
QUANTITY_SCALE_MAX = 12
#: Fill arithmetic runs with this precision and traps any rounding, so totals are exact or refused.
_EXACT = decimal.Context(prec=60, traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation])


class ModificationPending(IllegalTransition):
    """ModifyLeg on a MODIFYING leg: one modification at a time. (The table's MODIFYING -> MODIFYING
    is a fill made under the old terms, never a second modification.)"""

    def __init__(self, subject: str) -> None:
        super().__init__(LEG_MACHINE.name, L.MODIFYING.value, L.MODIFYING.value, subject)
        self.args = (
            f"{LEG_MACHINE.name}: MODIFYING -> MODIFYING by a second modification is refused for {subject}:"
            " the venue has not answered the first yet; modify it once the leg has its answer",
        )


class FillError(BallastError):
    """Venue evidence (a fill, a status, an answer to a modification) that would break a leg's invariants;
    nothing was applied."""


@dataclass(frozen=True)
class Fill:
    execution_id: str
    quantity: Decimal
    price: Decimal


@dataclass(frozen=True)
class Leg:
    """What the fill rules need of a leg. The average price is kept as an exact ratio."""

    #: the quantity in force at the venue (a MODIFYING leg's old one, until the venue confirms)
    ordered_quantity: Decimal
    state: LegState = L.PENDING
    filled_quantity: Decimal = Decimal(0)
    #: sum of quantity x price over the fills, exact
    fill_notional: Decimal = Decimal(0)
    execution_ids: frozenset[str] = field(default_factory=frozenset)

    def average_fill_price(self, fraction_digits: int = QUANTITY_SCALE_MAX) -> Decimal | None:
        """notional / filled, rounded half-even for display; None before the first fill."""
        if self.filled_quantity == 0:
            return None
        with decimal.localcontext(decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)):
            return (self.fill_notional / self.filled_quantity).quantize(Decimal(1).scaleb(-fraction_digits))


#: States a leg reaches through its fills (apply_fill) or the venue's answer to a modification
#: (answer_modification), never on a venue's status alone.
FILL_STATES = frozenset({L.PARTIALLY_FILLED, L.FILLED})
#: States a ModifyLeg may start from: at the venue, and no modification waiting for its answer.
MODIFIABLE_STATES = frozenset({L.PENDING, L.PARTIALLY_FILLED, L.FILLED})
#: States in which a leg still awaits the venue (its acknowledgement, fills, the answer to a
#: modification): the leg resolver checks legs in these.
AWAITING_VENUE_STATES = frozenset({L.SUBMITTED, L.PENDING, L.PARTIALLY_FILLED, L.MODIFYING})


class VenueInstructionKind(enum.StrEnum):
    """What Ballast asks of the venue about a leg, queued in the transaction that decided it."""

    MODIFY = "modify"
    CANCEL = "cancel"


#: The longest outcome kept with a venue instruction (the venue's answer, or why it was not delivered).
INSTRUCTION_OUTCOME_LENGTH_MAX = 500


def check_venue_state(current: LegState, target: LegState, subject: str = "", filled: Decimal = Decimal(0)) -> None:
    """May a venue's status (acknowledged, rejected, closed: not a fill, not an answer to a modification)
    move a leg with `filled` filled from `current` to `target`?"""
    LEG_MACHINE.check(current, target, subject)
    if target in FILL_STATES:
        raise FillError(f"{subject}: {target.value} follows from fills, not from a venue status")
    if target is L.PENDING and current is not L.SUBMITTED:
        raise FillError(f"{subject}: an acknowledgement moves only a SUBMITTED leg, not a {current.value} one")
    if target is L.REJECTED and filled > 0:
        raise FillError(f"{subject}: the venue filled {filled}; an order with fills is not rejected")


def state_for_fills(filled: Decimal, quantity: Decimal) -> LegState:
    """What a leg at the venue is with `filled` of `quantity` filled (filled <= quantity)."""
    if filled == 0:
        return L.PENDING
    return L.FILLED if filled == quantity else L.PARTIALLY_FILLED


def answer_modification(leg: Leg, quantity_after: Decimal, subject: str = "") -> LegState:
    """The state a MODIFYING leg moves to on the venue's answer to its modification: what its fills say
    under `quantity_after`, the quantity then in force (the new one when the venue confirmed, the old
    one when it refused). FillError when no modification is waiting, or when the venue confirms a
    quantity below what it has filled (nothing was applied)."""
    if leg.state is not L.MODIFYING:
        raise FillError(f"{subject}: is {leg.state.value}, with no modification waiting for an answer")
    if leg.filled_quantity > quantity_after:
        raise FillError(f"{subject}: a quantity of {quantity_after} is below the {leg.filled_quantity} filled")
    return state_for_fills(leg.filled_quantity, quantity_after)


EXECUTION_ID_LENGTH_MAX = 128
#: Quantities and prices stay below this (a NUMERIC CHECK in PostgreSQL too).
DECIMAL_MAX = Decimal(10) ** 18
#: The longest reason a leg keeps: why it is in its state (a close, a venue's rejection), or why the venue
#: refused its latest modification.
REASON_LENGTH_MAX = 1000


def _check_fill(fill: Fill) -> None:
    """What the venue reported must be a fill a leg can hold; FillError names what is wrong."""
    if not 1 <= len(fill.execution_id) <= EXECUTION_ID_LENGTH_MAX:
        raise FillError(f"a fill needs an execution id of 1 to {EXECUTION_ID_LENGTH_MAX} characters")
    for name, value in (("quantity", fill.quantity), ("price", fill.price)):
        if not value.is_finite() or not 0 < value < DECIMAL_MAX:
            raise FillError(f"fill {fill.execution_id[:64]}: {name} {value} is not between 0 and {DECIMAL_MAX}")
        if value.as_tuple().exponent < -QUANTITY_SCALE_MAX:  # type: ignore[operator]
            raise FillError(f"fill {fill.execution_id[:64]}: {name} has more than {QUANTITY_SCALE_MAX} fraction digits")


def apply_fill(leg: Leg, fill: Fill, subject: str = "") -> Leg:
    """The leg after `fill`; the same leg if this execution id was applied before.

    Raises FillError for a non-positive quantity or price or an overfill of the quantity in force, and
    IllegalTransition when the leg's state does not allow a fill (filling moves a working leg to
    PARTIALLY_FILLED or FILLED; a MODIFYING leg stays MODIFYING until the venue answers).
    """
    if fill.execution_id in leg.execution_ids:
        return leg
    _check_fill(fill)
    filled = _EXACT.add(leg.filled_quantity, fill.quantity)
    if filled > leg.ordered_quantity:
        raise FillError(
            f"fill {fill.execution_id} of {fill.quantity} would fill {filled} of {leg.ordered_quantity} ordered"
        )
    next_state = L.MODIFYING if leg.state is L.MODIFYING else state_for_fills(filled, leg.ordered_quantity)
    LEG_MACHINE.check(leg.state, next_state, subject)
    return replace(
        leg,
        state=next_state,
        filled_quantity=filled,
        fill_notional=_EXACT.add(leg.fill_notional, _EXACT.multiply(fill.quantity, fill.price)),
        execution_ids=leg.execution_ids | {fill.execution_id},
    )
