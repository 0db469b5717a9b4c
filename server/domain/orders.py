"""Orders: the rules for accepting a SubmitOrder, ModifyLeg or CloseLeg request."""

from __future__ import annotations

import enum
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from server.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument, echo
from server.domain.identifiers import parse_uuid
from server.domain.money import EXACT, MoneyError, parse_currency
from server.domain.order_legs import (
    DECIMAL_MAX,
    LEG_MACHINE,
    MODIFIABLE_STATES,
    QUANTITY_SCALE_MAX,
    REASON_LENGTH_MAX,
    LegState,
    ModificationPending,
)
from server.domain.payments import validate_idempotency_key
from server.domain.state_machine import IllegalTransition

SUBMIT_ORDER_OPERATION = "orders.submit"
MODIFY_LEG_OPERATION = "legs.modify"
CLOSE_LEG_OPERATION = "legs.close"

LEGS_MAX = 20
CLIENT_ORDER_REFERENCE_LENGTH_MAX = 255
#: An instrument's symbol as a venue spells it (a CHECK on legs too).
INSTRUMENT_SYMBOL_PATTERN = r"[A-Za-z0-9._/-]{1,32}"

_SYMBOL = re.compile(INSTRUMENT_SYMBOL_PATTERN)
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")


class Side(enum.StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(enum.StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"


@dataclass(frozen=True)
class LegSpec:
    instrument_symbol: str
    side: Side
    quantity: Decimal
    order_type: OrderType
    limit_price: Decimal | None
    currency_code: str


@dataclass(frozen=True)
class SubmitOrder:
    idempotency_key: str
    client_order_reference: str
    legs: tuple[LegSpec, ...]

    def fingerprint(self) -> bytes:
        return _fingerprint(
            {
                "operation": SUBMIT_ORDER_OPERATION,
                "client_order_reference": self.client_order_reference,
                "legs": [
                    [
                        leg.instrument_symbol,
                        leg.side.value,
                        _canonical(leg.quantity),
                        leg.order_type.value,
                        None if leg.limit_price is None else _canonical(leg.limit_price),
                        leg.currency_code,
                    ]
                    for leg in self.legs
                ],
            }
        )


@dataclass(frozen=True)
class ModifyLeg:
    idempotency_key: str
    order_id: uuid.UUID
    leg_id: uuid.UUID
    new_quantity: Decimal | None
    new_limit_price: Decimal | None

    def fingerprint(self) -> bytes:
        return _fingerprint(
            {
                "operation": MODIFY_LEG_OPERATION,
                "leg_id": str(self.leg_id),
                "quantity": None if self.new_quantity is None else _canonical(self.new_quantity),
                "limit_price": None if self.new_limit_price is None else _canonical(self.new_limit_price),
            }
        )


@dataclass(frozen=True)
class CloseLeg:
    idempotency_key: str
    order_id: uuid.UUID
    leg_id: uuid.UUID
    reason: str

    def fingerprint(self) -> bytes:
        return _fingerprint({"operation": CLOSE_LEG_OPERATION, "leg_id": str(self.leg_id), "reason": self.reason})


def _canonical(value: Decimal) -> str:
    """ "1.50" and "1.5" are one quantity."""
    return format(value.normalize(EXACT), "f")


def _fingerprint(canonical: dict[str, Any]) -> bytes:
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).digest()


def parse_positive_decimal(value: str, field: str, violations: list[FieldViolation]) -> Decimal | None:
    """A positive decimal string with at most QUANTITY_SCALE_MAX fraction digits, below DECIMAL_MAX."""
    if not value:
        violations.append(FieldViolation(field, 'is required: a positive decimal string such as "10" or "0.5"'))
        return None
    if len(value) > 40 or not _DECIMAL.fullmatch(value):
        violations.append(FieldViolation(field, f'{echo(value)} is not a plain decimal string such as "10.5"'))
        return None
    if len(value.partition(".")[2]) > QUANTITY_SCALE_MAX:
        violations.append(FieldViolation(field, f"has more than {QUANTITY_SCALE_MAX} fraction digits"))
        return None
    number = Decimal(value)
    if number <= 0 or number >= DECIMAL_MAX:
        violations.append(FieldViolation(field, f"must be greater than 0 and less than {DECIMAL_MAX}"))
        return None
    return number


def _text(violations: list[FieldViolation], field: str, value: str, length_max: int, *, required: bool = False) -> None:
    if required and not value:
        violations.append(FieldViolation(field, "is required"))
    elif len(value) > length_max:
        violations.append(FieldViolation(field, f"is {len(value)} characters long; the maximum is {length_max}"))
    elif "\x00" in value:
        violations.append(FieldViolation(field, "must not contain NUL characters"))


def _enum(enum_type: type[enum.StrEnum], value: str, field: str, violations: list[FieldViolation]) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        violations.append(FieldViolation(field, f"is required: one of {', '.join(m.value for m in enum_type)}"))
        return None


def _leg(raw: dict[str, str], at: str, violations: list[FieldViolation]) -> LegSpec | None:
    before = len(violations)
    symbol = raw["instrument_symbol"]
    if not _SYMBOL.fullmatch(symbol):
        violations.append(FieldViolation(f"{at}.instrument_symbol", "is required: 1 to 32 letters, digits or . _ / -"))
    side = _enum(Side, raw["side"], f"{at}.side", violations)
    order_type = _enum(OrderType, raw["order_type"], f"{at}.order_type", violations)
    quantity = parse_positive_decimal(raw["quantity"], f"{at}.quantity", violations)
    limit_price = None
    if order_type is OrderType.LIMIT:
        limit_price = parse_positive_decimal(raw["limit_price"], f"{at}.limit_price", violations)
    elif raw["limit_price"]:
        violations.append(FieldViolation(f"{at}.limit_price", "must be empty unless order_type is LIMIT"))
    try:
        parse_currency(raw["currency_code"])
    except MoneyError as error:
        violations.append(FieldViolation(f"{at}.currency_code", str(error)))
    if len(violations) > before or quantity is None:
        return None
    return LegSpec(symbol, side, quantity, order_type, limit_price, raw["currency_code"])


def validate_submit_order(idempotency_key: str, client_order_reference: str, legs: list[dict[str, str]]) -> SubmitOrder:
    """Check every field and report every problem at once; InvalidArgument if there is any.

    Each leg is a dict with instrument_symbol, side, quantity, order_type, limit_price, currency_code
    (strings, as they come off the wire; enum names without their prefix).
    """
    violations: list[FieldViolation] = []
    validate_idempotency_key(idempotency_key, violations)
    _text(violations, "client_order_reference", client_order_reference, CLIENT_ORDER_REFERENCE_LENGTH_MAX)
    if not legs:
        violations.append(FieldViolation("legs", "at least one leg is required"))
    elif len(legs) > LEGS_MAX:
        violations.append(FieldViolation("legs", f"has {len(legs)} legs; the maximum is {LEGS_MAX}"))
    specs = [] if len(legs) > LEGS_MAX else [_leg(raw, f"legs[{index}]", violations) for index, raw in enumerate(legs)]
    if violations:
        raise InvalidArgument(violations)
    return SubmitOrder(idempotency_key, client_order_reference, tuple(spec for spec in specs if spec is not None))


def _ids(order_id: str, leg_id: str, violations: list[FieldViolation]) -> tuple[uuid.UUID, uuid.UUID]:
    parsed = []
    for field, raw in (("order_id", order_id), ("leg_id", leg_id)):
        try:
            parsed.append(parse_uuid(raw, field))
        except InvalidArgument as error:
            violations.extend(error.violations)
            parsed.append(uuid.UUID(int=0))
    return parsed[0], parsed[1]


def validate_modify_leg(
    idempotency_key: str, order_id: str, leg_id: str, new_quantity: str, new_limit_price: str
) -> ModifyLeg:
    violations: list[FieldViolation] = []
    validate_idempotency_key(idempotency_key, violations)
    order_uuid, leg_uuid = _ids(order_id, leg_id, violations)
    quantity = parse_positive_decimal(new_quantity, "new_quantity", violations) if new_quantity else None
    price = parse_positive_decimal(new_limit_price, "new_limit_price", violations) if new_limit_price else None
    if not new_quantity and not new_limit_price:
        violations.append(FieldViolation("new_quantity", "new_quantity or new_limit_price is required"))
    if violations:
        raise InvalidArgument(violations)
    return ModifyLeg(idempotency_key, order_uuid, leg_uuid, quantity, price)


def check_modification_fits_type(request: ModifyLeg, order_type: OrderType) -> None:
    """What no leg of this type can take, whatever its state: INVALID_ARGUMENT, checked before the key."""
    if request.new_limit_price is not None and order_type is not OrderType.LIMIT:
        raise InvalidArgument([FieldViolation("new_limit_price", "only a LIMIT leg has a limit price")])


def check_modification(request: ModifyLeg, state: LegState, terms: LegSpec, filled: Decimal, subject: str) -> None:
    """May this leg, as it stands, be amended as asked? A leg is amended at the venue (cancel/replace)
    while it is working there (PENDING, PARTIALLY_FILLED) or once FILLED, one modification at a time.

    FAILED_PRECONDITION, naming the leg: for a leg in another state (IllegalTransition,
    ModificationPending), and for terms this leg, as it stands, cannot take: a quantity below what has
    filled, terms equal to those in force, or, for a FILLED leg, anything but a larger quantity (nothing
    of it works at the venue to reprice or to shrink). These depend on the leg's state and fills, which
    move on, so they are preconditions, not malformed input; and they are checked after the key, so
    that a replay still replays.
    """
    if state is LegState.MODIFYING:
        raise ModificationPending(subject)
    if state not in MODIFIABLE_STATES:
        raise IllegalTransition(LEG_MACHINE.name, state.value, LegState.MODIFYING.value, subject)
    quantity = terms.quantity if request.new_quantity is None else request.new_quantity
    limit_price = terms.limit_price if request.new_limit_price is None else request.new_limit_price
    asked = "new_quantity" if request.new_quantity is not None else "new_limit_price"
    if request.new_quantity is not None and request.new_quantity < filled:
        refusal = f"new_quantity must be at least the filled quantity, {filled}"
    elif (quantity, limit_price) == (terms.quantity, terms.limit_price):
        in_force = f"quantity {terms.quantity}" + ("" if terms.limit_price is None else f", limit {terms.limit_price}")
        refusal = f"{asked} changes nothing: the leg's terms in force are {in_force}"
    elif state is LegState.FILLED and quantity == filled:
        refusal = f"{asked}: a FILLED leg has nothing working to change: only a new_quantity above the filled {filled}"
    else:
        return
    raise FailedPrecondition(subject, refusal)


def validate_close_leg(idempotency_key: str, order_id: str, leg_id: str, reason: str) -> CloseLeg:
    violations: list[FieldViolation] = []
    validate_idempotency_key(idempotency_key, violations)
    order_uuid, leg_uuid = _ids(order_id, leg_id, violations)
    _text(violations, "reason", reason, REASON_LENGTH_MAX, required=True)
    if violations:
        raise InvalidArgument(violations)
    return CloseLeg(idempotency_key, order_uuid, leg_uuid, reason)
