"""Order legs: their state machine, and fills applied exactly once, never over the ordered quantity."""

from __future__ import annotations

import decimal
import enum
from dataclasses import dataclass, field, replace
from decimal import Decimal

from server.domain.errors import BallastError
from server.domain.state_machine import StateMachine


class LegState(enum.StrEnum):
    SUBMITTED = "SUBMITTED"
    PENDING = "PENDING"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    MODIFYING = "MODIFYING"
    REJECTED = "REJECTED"
    CLOSED = "CLOSED"


L = LegState

#: Exactly the allowed moves of a leg; everything else is illegal.
LEG_TRANSITIONS: dict[LegState, frozenset[LegState]] = {
    L.SUBMITTED: frozenset({L.PENDING, L.REJECTED, L.CLOSED}),
    L.PENDING: frozenset({L.FILLED, L.REJECTED, L.PARTIALLY_FILLED, L.CLOSED}),
    L.PARTIALLY_FILLED: frozenset({L.PARTIALLY_FILLED, L.FILLED, L.CLOSED}),
    L.FILLED: frozenset({L.MODIFYING, L.CLOSED}),
    L.MODIFYING: frozenset({L.FILLED, L.REJECTED, L.CLOSED}),
    L.REJECTED: frozenset({L.CLOSED}),
    L.CLOSED: frozenset(),
}

LEG_MACHINE: StateMachine[LegState] = StateMachine(name="order leg", initial=L.SUBMITTED, transitions=LEG_TRANSITIONS)

#: Quantities and prices carry at most this many fraction digits (the NUMERIC scale in PostgreSQL).
QUANTITY_SCALE_MAX = 12
#: Fill arithmetic runs with this precision and traps any rounding, so totals are exact or refused.
_EXACT = decimal.Context(prec=60, traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation])


class FillError(BallastError):
    """A fill that would break a leg's invariants; nothing was applied."""


@dataclass(frozen=True)
class Fill:
    execution_id: str
    quantity: Decimal
    price: Decimal


@dataclass(frozen=True)
class Leg:
    """What the fill rules need of a leg. The average price is kept as an exact ratio."""

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


#: States a leg reaches through its fills (apply_fill), never on a venue's status alone; the one
#: exception is a confirmed modification, which returns a filled leg to FILLED.
FILL_STATES = frozenset({L.PARTIALLY_FILLED, L.FILLED})


def check_venue_state(current: LegState, target: LegState, subject: str = "") -> None:
    """May a venue's status (not a fill) move a leg from `current` to `target`?"""
    LEG_MACHINE.check(current, target, subject)
    if target in FILL_STATES and not (current is L.MODIFYING and target is L.FILLED):
        raise FillError(f"{subject}: {target.value} follows from fills, not from a venue status")


EXECUTION_ID_LENGTH_MAX = 128
#: Quantities and prices stay below this (a NUMERIC CHECK in PostgreSQL too).
DECIMAL_MAX = Decimal(10) ** 18


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

    Raises FillError for a non-positive quantity or price or an overfill, and IllegalTransition
    when the leg's state does not allow a fill (filling moves it to PARTIALLY_FILLED or FILLED).
    """
    if fill.execution_id in leg.execution_ids:
        return leg
    _check_fill(fill)
    filled = _EXACT.add(leg.filled_quantity, fill.quantity)
    if filled > leg.ordered_quantity:
        raise FillError(
            f"fill {fill.execution_id} of {fill.quantity} would fill {filled} of {leg.ordered_quantity} ordered"
        )
    next_state = L.FILLED if filled == leg.ordered_quantity else L.PARTIALLY_FILLED
    LEG_MACHINE.check(leg.state, next_state, subject)
    return replace(
        leg,
        state=next_state,
        filled_quantity=filled,
        fill_notional=_EXACT.add(leg.fill_notional, _EXACT.multiply(fill.quantity, fill.price)),
        execution_ids=leg.execution_ids | {fill.execution_id},
    )
