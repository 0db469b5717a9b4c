"""Does a venue's report fit the leg it names? The fit rule for order legs (pure, no I/O).

A venue's report names a leg by Ballast's own id (sent as the venue's idempotency key), but what it
says is about whatever order the venue means. Where the report states the venue's order id, the
instrument, the side, the currency or how much has filled, each must agree with what Ballast knows
of the leg. A report that contradicts any of them is kept and moves nothing: it opens a case naming
every field that differs, with Ballast's value and the venue's (server/services/venue_events.py).

The rule, field by field. Absent on the venue's side, a field always fits (it said nothing); the
only field Ballast may not know is the venue order id, before a fitting report named it.

    field               Ballast's value                    the venue's value     fits when
    venue_order_id      the id recorded on the leg         the report's id       Ballast has none (the
                                                                                 report's is recorded), or equal
    execution.order_id  the id recorded, or else the id    its execution's       equal, or neither side
                        this report would record           order id              has an id
    symbol              the leg's symbol                   its symbol            equal, case aside
    side                the leg's side (BUY, SELL)         its side              equal, case aside
    currency            the leg's currency                 its currency          equal, case aside
    filled_quantity     the most the leg may fill (its     its cumulative        a finite decimal from
                        quantity, or a larger one asked    filled quantity       0 to Ballast's value
                        in a pending modification)
    quantity            only in a confirmation of the      the order's           equal, as numbers
                        pending modification: the          quantity
                        quantity it asked, or the one
                        in force if it asked none
    limit_price         likewise, the limit price          the order's limit     equal, as numbers
                                                           price

A report confirms the pending modification when it is the venue's answer to it (`replaced`, naming
that modification's key or none), or when any report states that modification (by its key) as
confirmed. Outside a confirmation, the order's quantity and limit price are not in the rule, on
purpose: a report sent before a modification and delivered after it states the old terms, and fits.
Neither are a fill's own quantity and price (apply_fill refuses a fill that is not positive or that
overfills the leg: a contradiction).
"""

from __future__ import annotations

import decimal
import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from server.domain.stated import stated

#: A stated value is kept (in the case) up to this many characters.


class FitField(enum.StrEnum):
    VENUE_ORDER_ID = "venue_order_id"
    EXECUTION_ORDER_ID = "execution.order_id"
    SYMBOL = "symbol"
    SIDE = "side"
    CURRENCY = "currency"
    FILLED_QUANTITY = "filled_quantity"
    QUANTITY = "quantity"
    LIMIT_PRICE = "limit_price"


class Rule(enum.StrEnum):
    """How a stated value is held against Ballast's: the same, or no more than."""

    EQUAL = "equal"
    AT_MOST = "at_most"


@dataclass(frozen=True)
class PendingModification:
    """A modification sent to the venue and not answered yet, with the terms it would put in force."""

    #: its id, sent as the venue's idempotency key: the key a venue's answer names it by
    id: str
    quantity: Decimal
    limit_price: Decimal | None


@dataclass(frozen=True)
class KnownLeg:
    """What Ballast knows of a leg that a venue's report can contradict."""

    #: the venue's id for the leg's order, once a fitting report named it
    venue_order_id: str | None
    symbol: str
    side: str
    currency: str
    #: the most the leg may fill: its quantity, or a larger one asked in a pending modification
    quantity_max: Decimal
    modification: PendingModification | None = None


@dataclass(frozen=True)
class VenueClaims:
    """What a venue's report states about the order it means; None where it states nothing.

    Values are the venue's text, made storable (see `stated`): the fill rule reads them, never trusts them.
    """

    venue_order_id: str | None = None
    execution_order_id: str | None = None
    symbol: str | None = None
    side: str | None = None
    currency: str | None = None
    #: the order's cumulative filled quantity, as the venue wrote it
    filled_quantity: str | None = None
    #: the order's terms in force, as the venue wrote them
    quantity: str | None = None
    limit_price: str | None = None
    #: the order's latest modification: the key it was sent under, its status and why it was refused
    modification_key: str | None = None
    modification_status: str | None = None
    modification_reason: str | None = None

    def as_evidence(self) -> dict[str, str]:
        """The stated fields, for a case."""
        return {name: value for name, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class Misfit:
    """One field where the venue's report contradicts Ballast."""

    field: FitField
    ballast: str | None
    venue: str
    rule: Rule = Rule.EQUAL

    def as_evidence(self) -> dict[str, str | None]:
        return {"field": self.field.value, "ballast": self.ballast, "venue": self.venue, "rule": self.rule.value}


def misfits(known: KnownLeg, claims: VenueClaims, *, confirms_modification: bool = False) -> tuple[Misfit, ...]:
    """Every field where `claims` contradicts `known`, in the table's order; () when the report fits.
    `confirms_modification`: the report confirms the pending modification, so its terms are compared."""
    found: list[Misfit] = []
    stated_id = claims.venue_order_id
    if stated_id is not None and known.venue_order_id is not None and stated_id != known.venue_order_id:
        found.append(Misfit(FitField.VENUE_ORDER_ID, known.venue_order_id, stated_id))
    order_id = known.venue_order_id if known.venue_order_id is not None else stated_id
    execution_id = claims.execution_order_id
    if execution_id is not None and order_id is not None and execution_id != order_id:
        found.append(Misfit(FitField.EXECUTION_ORDER_ID, order_id, execution_id))
    for field, ours, theirs in (
        (FitField.SYMBOL, known.symbol, claims.symbol),
        (FitField.SIDE, known.side, claims.side),
        (FitField.CURRENCY, known.currency, claims.currency),
    ):
        if theirs is not None and theirs.casefold() != ours.casefold():
            found.append(Misfit(field, ours, theirs))
    filled = claims.filled_quantity
    if filled is not None and not _within(filled, known.quantity_max):
        found.append(Misfit(FitField.FILLED_QUANTITY, format(known.quantity_max, "f"), filled, Rule.AT_MOST))
    asked = known.modification
    if confirms_modification and asked is not None:
        for term, asked_value, stated_value in (
            (FitField.QUANTITY, asked.quantity, claims.quantity),
            (FitField.LIMIT_PRICE, asked.limit_price, claims.limit_price),
        ):
            if stated_value is not None and (asked_value is None or _number(stated_value) != asked_value):
                found.append(Misfit(term, None if asked_value is None else format(asked_value, "f"), stated_value))
    return tuple(found)


def answers_pending(known: KnownLeg, claims: VenueClaims, *, key_required: bool) -> bool:
    """Is `claims` about the leg's pending modification? It names it by its key, or (unless
    `key_required`: a report that is not itself an answer to a modification) names none."""
    if known.modification is None:
        return False
    if claims.modification_key is None:
        return not key_required
    return claims.modification_key == known.modification.id


def _number(text: str) -> Decimal | None:
    """`text` as a finite decimal; None when it is not one (and so equals no term Ballast holds)."""
    try:
        value = Decimal(text.strip())
    except decimal.InvalidOperation:
        return None
    return value if value.is_finite() else None


def _within(text: str, bound: Decimal) -> bool:
    """Is `text` a finite decimal from 0 to `bound`? Anything else cannot be a leg's filled quantity."""
    value = _number(text)
    return value is not None and 0 <= value <= bound


def claims_from_order(order: Mapping[str, Any]) -> VenueClaims:
    """What a broker venue's order object states (a webhook's `data.object`, or the status inquiry's
    answer): its `id`, `symbol`, `side`, `currency`, the cumulative filled quantity (its
    execution's `cumulative_quantity` when it carries one, else the order's `filled_quantity`), the
    execution's `order_id`, its terms (`quantity`, `limit_price`) and its latest `modification`
    (`idempotency_key`, `status`, `reason`)."""
    execution = order.get("execution")
    execution = execution if isinstance(execution, Mapping) else {}
    modification = order.get("modification")
    modification = modification if isinstance(modification, Mapping) else {}
    cumulative = execution.get("cumulative_quantity")
    return VenueClaims(
        venue_order_id=stated(order.get("id")),
        execution_order_id=stated(execution.get("order_id")),
        symbol=stated(order.get("symbol")),
        side=stated(order.get("side")),
        currency=stated(order.get("currency")),
        filled_quantity=stated(cumulative if cumulative is not None else order.get("filled_quantity")),
        quantity=stated(order.get("quantity")),
        limit_price=stated(order.get("limit_price")),
        modification_key=stated(modification.get("idempotency_key")),
        modification_status=stated(modification.get("status")),
        modification_reason=stated(modification.get("reason")),
    )
