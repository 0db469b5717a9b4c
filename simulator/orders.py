"""An order leg as the venue sees it: its request, its status, its fills and how they are planned.

Quantities and prices stay `Decimal` and travel as decimal strings. The fill plan is drawn from the
order's own seeded generator, so the same seed gives the same fills, in the same parts, at the same
prices, whatever else the simulator is doing.
"""

from __future__ import annotations

import decimal
import hashlib
import itertools
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from simulator.payments import InvalidRequest

NEW, PARTIALLY_FILLED, FILLED = "new", "partially_filled", "filled"
REJECTED, CANCELED, CLOSED = "rejected", "canceled", "closed"
WORKING = frozenset({NEW, PARTIALLY_FILLED})
FINAL = frozenset({REJECTED, CANCELED, CLOSED})
MODIFIABLE = frozenset({NEW, PARTIALLY_FILLED, FILLED})

# the only moves the venue makes; a replace that raises a filled order's quantity makes it work again
TRANSITIONS: dict[str, frozenset[str]] = {
    NEW: frozenset({PARTIALLY_FILLED, FILLED, REJECTED, CANCELED}),
    PARTIALLY_FILLED: frozenset({PARTIALLY_FILLED, FILLED, CANCELED}),
    FILLED: frozenset({PARTIALLY_FILLED, CLOSED}),
    REJECTED: frozenset(),
    CANCELED: frozenset(),
    CLOSED: frozenset(),
}

SIDES = ("buy", "sell")
ORDER_TYPES = ("market", "limit")
TICK = Decimal("0.01")
FRACTION_DIGITS_MAX = 8
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,8})?$")
_SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9./-]{0,15}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_AVERAGE = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN)
_FIELDS = {"symbol", "side", "type", "quantity", "limit_price", "currency", "reference"}


def _positive_decimal(body: dict[str, Any], name: str) -> Decimal:
    value = body.get(name)
    if not isinstance(value, str) or not _DECIMAL.match(value) or Decimal(value) <= 0:
        raise InvalidRequest(
            f'{name} must be a positive decimal string with at most {FRACTION_DIGITS_MAX} decimals, such as "100"', name
        )
    return Decimal(value)


@dataclass(frozen=True)
class OrderRequest:
    """The parameters of POST /v1/orders; equal requests may share an idempotency key."""

    symbol: str
    side: str
    type: str
    quantity: Decimal
    limit_price: Decimal | None
    currency: str
    reference: str

    @classmethod
    def parse(cls, body: Any) -> OrderRequest:
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown parameter: {unknown[0]}", unknown[0])
        symbol, side, kind = body.get("symbol"), body.get("side"), body.get("type", "market")
        currency, reference = body.get("currency", "USD"), body.get("reference", "")
        if not isinstance(symbol, str) or not _SYMBOL.match(symbol):
            raise InvalidRequest("symbol must be 1-16 upper-case letters, digits, '.', '/' or '-'", "symbol")
        if side not in SIDES:
            raise InvalidRequest(f"side must be one of {', '.join(SIDES)}", "side")
        if kind not in ORDER_TYPES:
            raise InvalidRequest(f"type must be one of {', '.join(ORDER_TYPES)}", "type")
        quantity = _positive_decimal(body, "quantity")
        limit_price = None
        if kind == "limit":
            limit_price = _positive_decimal(body, "limit_price")
        elif body.get("limit_price") is not None:
            raise InvalidRequest("a market order takes no limit_price", "limit_price")
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            raise InvalidRequest("currency must be a three-letter ISO 4217 code such as USD", "currency")
        if not isinstance(reference, str) or len(reference) > 255:
            raise InvalidRequest("reference must be a string of at most 255 characters", "reference")
        return cls(symbol, str(side), str(kind), quantity, limit_price, currency, reference)


#: A modification's status: waiting for the venue, confirmed (`replaced`), refused (`modify_rejected`),
#: or ended unanswered because the order was canceled, closed or rejected first.
MODIFICATION_PENDING, MODIFICATION_CONFIRMED = "pending", "confirmed"
MODIFICATION_REJECTED, MODIFICATION_CANCELED = "rejected", "canceled"


@dataclass
class Modification:
    """A cancel/replace the client asked for: a new total quantity and/or limit price. The venue
    confirms it (`replaced`) or refuses it later; its idempotency key names it in every report."""

    quantity: Decimal | None
    limit_price: Decimal | None
    key: str | None = None
    id: str = field(default_factory=lambda: f"mod_{uuid.uuid4().hex[:24]}")
    status: str = MODIFICATION_PENDING
    reason: str | None = None

    @classmethod
    def parse(cls, body: Any, order: Order, key: str | None = None) -> Modification:
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        unknown = sorted(set(body) - {"quantity", "limit_price"})
        if unknown:
            raise InvalidRequest(f"unknown parameter: {unknown[0]}", unknown[0])
        if body.get("quantity") is None and body.get("limit_price") is None:
            raise InvalidRequest("give a new quantity, a new limit_price, or both", "quantity")
        quantity = _positive_decimal(body, "quantity") if body.get("quantity") is not None else None
        limit_price = _positive_decimal(body, "limit_price") if body.get("limit_price") is not None else None
        if limit_price is not None and order.request.type != "limit":
            raise InvalidRequest("only a limit order has a limit_price to change", "limit_price")
        if quantity is not None and quantity < order.filled_quantity:
            raise InvalidRequest(f"quantity {quantity} is below the {order.filled_quantity} already filled", "quantity")
        if order.status == FILLED and (order.quantity if quantity is None else quantity) == order.filled_quantity:
            raise InvalidRequest("a filled order changes only by a larger quantity", "quantity")
        return cls(quantity, limit_price, key)

    def end(self, status: str, reason: str | None = None) -> None:
        self.status, self.reason = status, reason

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "idempotency_key": self.key,
            "status": self.status,
            "quantity": None if self.quantity is None else str(self.quantity),
            "limit_price": None if self.limit_price is None else str(self.limit_price),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Execution:
    """One fill: the execution report's own id, quantity and price."""

    order_id: str
    exec_type: str  # partial_fill | fill
    quantity: Decimal
    price: Decimal
    cumulative_quantity: Decimal
    leaves_quantity: Decimal
    id: str = field(default_factory=lambda: f"exec_{uuid.uuid4().hex[:24]}")
    time: int = field(default_factory=lambda: int(time.time()))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "order_id": self.order_id,
            "exec_type": self.exec_type,
            "quantity": str(self.quantity),
            "price": str(self.price),
            "cumulative_quantity": str(self.cumulative_quantity),
            "leaves_quantity": str(self.leaves_quantity),
            "time": self.time,
        }


@dataclass
class Order:
    """One order leg the venue accepted. `rests`: it works until canceled and never fills."""

    request: OrderRequest
    idempotency_key: str
    rejected: bool
    rests: bool
    plan: list[tuple[Decimal, Decimal]]  # (quantity, price) of the fills still to come
    id: str = field(default_factory=lambda: f"ord_{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))
    status: str = NEW
    history: list[str] = field(default_factory=lambda: [NEW])
    quantity: Decimal = Decimal(0)
    limit_price: Decimal | None = None
    executions: list[Execution] = field(default_factory=list)
    #: the modification waiting for the venue's answer, if any
    modification: Modification | None = None
    #: the latest modification that ended (confirmed, rejected, canceled), if any
    answered_modification: Modification | None = None
    reject_reason: str | None = None

    def __post_init__(self) -> None:
        if not self.quantity:
            self.quantity = self.request.quantity
            self.limit_price = self.request.limit_price

    @property
    def filled_quantity(self) -> Decimal:
        return sum((execution.quantity for execution in self.executions), Decimal(0))

    @property
    def average_price(self) -> Decimal | None:
        filled = self.filled_quantity
        if not filled:
            return None
        notional = sum((execution.quantity * execution.price for execution in self.executions), Decimal(0))
        return _AVERAGE.divide(notional, filled).quantize(Decimal(1).scaleb(-FRACTION_DIGITS_MAX), context=_AVERAGE)

    @property
    def latest_modification(self) -> Modification | None:
        """The one a report states: the pending modification, else the latest that ended."""
        return self.modification or self.answered_modification

    def end_modification(self, status: str, reason: str | None = None) -> None:
        """The pending modification, if any, ends: confirmed, rejected, or canceled with the order."""
        ended = self.modification
        if ended is not None:
            ended.end(status, reason)
            self.modification, self.answered_modification = None, ended

    def move_to(self, status: str) -> None:
        if status not in TRANSITIONS[self.status]:
            raise InvalidRequest(f"order {self.id} is {self.status}; it cannot become {status}")
        self.status = status
        self.history.append(status)

    def fill(self, quantity: Decimal, price: Decimal) -> Execution:
        cumulative = self.filled_quantity + quantity
        if cumulative > self.quantity:
            raise RuntimeError(f"order {self.id}: a fill of {quantity} would overfill {self.quantity}")
        leaves = self.quantity - cumulative
        execution = Execution(self.id, "fill" if leaves == 0 else "partial_fill", quantity, price, cumulative, leaves)
        self.executions.append(execution)
        self.move_to(FILLED if leaves == 0 else PARTIALLY_FILLED)
        return execution

    def to_json(self, status: str | None = None) -> dict[str, Any]:
        """The API's view; `status` lets a contradictory webhook claim a status it does not have."""
        average = self.average_price
        return {
            "id": self.id,
            "object": "order",
            "symbol": self.request.symbol,
            "side": self.request.side,
            "type": self.request.type,
            "quantity": str(self.quantity),
            "limit_price": None if self.limit_price is None else str(self.limit_price),
            "currency": self.request.currency,
            "reference": self.request.reference,
            "status": status or self.status,
            "filled_quantity": str(self.filled_quantity),
            "leaves_quantity": str(self.quantity - self.filled_quantity if self.status in WORKING else Decimal(0)),
            "average_price": None if average is None else str(average),
            "reject_reason": self.reject_reason,
            "modification": None if self.latest_modification is None else self.latest_modification.to_json(),
            "created": self.created,
            "idempotency_key": self.idempotency_key,
        }


def reference_price(symbol: str) -> Decimal:
    """A market price per symbol that every run agrees on: 10.00 to 499.99."""
    digest = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:4], "big")
    return Decimal(1000 + digest % 49_000) * TICK


def plan_fills(
    rng: random.Random,
    order_type: str,
    side: str,
    limit_price: Decimal | None,
    symbol: str,
    leaves: Decimal,
    parts_max: int,
) -> list[tuple[Decimal, Decimal]]:
    """Split `leaves` into 1..parts_max fills, each a whole number of the quantity's smallest unit.

    A limit order fills at its limit or better (up to 3 ticks); a market order near the symbol's
    reference price (within 5 ticks).
    """
    exponent = leaves.normalize().as_tuple().exponent
    unit = Decimal(1).scaleb(min(exponent, 0) if isinstance(exponent, int) else 0)
    units = int(leaves / unit)
    parts = min(rng.randint(1, parts_max), units)
    cuts = sorted(rng.sample(range(1, units), parts - 1)) if parts > 1 else []
    bounds = [0, *cuts, units]
    plan = []
    for start, end in itertools.pairwise(bounds):
        if order_type == "limit" and limit_price is not None:
            improvement = TICK * rng.randint(0, 3)
            price = limit_price - improvement if side == "buy" else limit_price + improvement
            price = price if price > 0 else limit_price
        else:
            price = reference_price(symbol) + TICK * rng.randint(-5, 5)
        plan.append(((end - start) * unit, price))
    return plan
