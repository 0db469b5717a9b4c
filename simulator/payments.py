"""A payment as the provider sees it: its request, its status and the moves that status may make.

Amounts stay `Decimal` and travel as decimal strings; a float would round a customer's money.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from server.domain.money import MINOR_UNITS

PENDING, SUCCEEDED, FAILED, DECLINED, REFUNDED = "pending", "succeeded", "failed", "declined", "refunded"
FINAL_OUTCOMES = (SUCCEEDED, FAILED, DECLINED)

# the only moves a provider makes; anything else is a bug in the simulator, not a fault
TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset(FINAL_OUTCOMES),
    SUCCEEDED: frozenset({REFUNDED}),
    FAILED: frozenset(),
    DECLINED: frozenset(),
    REFUNDED: frozenset(),
}

_AMOUNT = re.compile(r"^(0|[1-9][0-9]{0,14})(\.[0-9]+)?$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def currency_digits(currency: str) -> int:
    """Fraction digits of the currency's minor unit, from the ISO 4217 table Ballast uses (0 for JPY,
    3 for KWD, 2 for EUR): the simulator must never refuse an amount a real provider takes."""
    return MINOR_UNITS[currency]


class InvalidRequest(ValueError):
    """A request the provider refuses before doing anything; `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class PaymentRequest:
    """The parameters of POST /v1/payments; equal requests may share an idempotency key."""

    amount: Decimal
    currency: str
    reference: str

    @classmethod
    def parse(cls, body: Any) -> PaymentRequest:
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        unknown = sorted(set(body) - {"amount", "currency", "reference"})
        if unknown:
            raise InvalidRequest(f"unknown parameter: {unknown[0]}", unknown[0])
        amount, reference = body.get("amount"), body.get("reference", "")
        if not isinstance(amount, str) or not _AMOUNT.match(amount):
            raise InvalidRequest('amount must be a decimal string such as "12.34"', "amount")
        currency = parse_currency(body.get("currency"))
        if not isinstance(reference, str) or len(reference) > 255:
            raise InvalidRequest("reference must be a string of at most 255 characters", "reference")
        return cls(amount=parse_amount(amount, currency), currency=currency, reference=reference)


def parse_currency(currency: Any) -> str:
    """An active ISO 4217 code, or InvalidRequest naming `currency`."""
    if not isinstance(currency, str) or not _CURRENCY.match(currency) or currency not in MINOR_UNITS:
        raise InvalidRequest("currency must be an active ISO 4217 code such as EUR", "currency")
    return currency


def parse_amount(amount: Any, currency: str) -> Decimal:
    """A positive decimal string with at most the currency's digits, or InvalidRequest naming `amount`."""
    if not isinstance(amount, str) or not _AMOUNT.match(amount):
        raise InvalidRequest('amount must be a decimal string such as "12.34"', "amount")
    value = Decimal(amount)
    digits = currency_digits(currency)
    if value <= 0:
        raise InvalidRequest("amount must be greater than zero", "amount")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > digits:
        raise InvalidRequest(f"{currency} amounts have at most {digits} decimal places", "amount")
    return value


@dataclass
class Payment:
    """One payment the provider accepted; `outcome` is where it will go when it leaves pending."""

    request: PaymentRequest
    idempotency_key: str
    outcome: str
    settle_after_ms: int
    id: str = field(default_factory=lambda: f"pay_{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))
    status: str = PENDING
    history: list[str] = field(default_factory=lambda: [PENDING])
    refunded_amount: Decimal = Decimal(0)  # the sum of its succeeded refunds

    def move_to(self, status: str) -> None:
        if status not in TRANSITIONS[self.status]:
            raise InvalidRequest(f"payment {self.id} is {self.status}; it cannot become {status}")
        self.status = status
        self.history.append(status)

    @property
    def digits(self) -> int:
        return currency_digits(self.request.currency)

    def to_json(self, status: str | None = None) -> dict[str, Any]:
        """The API's view; `status` lets a contradictory webhook claim a status it does not have."""
        return {
            "id": self.id,
            "object": "payment",
            "amount": str(self.request.amount),
            "currency": self.request.currency,
            "reference": self.request.reference,
            "status": status or self.status,
            "amount_refunded": str(self.refunded_amount.quantize(Decimal(1).scaleb(-self.digits))),
            "created": self.created,
            "idempotency_key": self.idempotency_key,
        }
