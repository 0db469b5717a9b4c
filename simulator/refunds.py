"""A refund as the provider sees it: full or partial, pending until it succeeds or fails.

A refund belongs to one succeeded payment. It is accepted as `pending` and later `succeeded` or
`failed`; only succeeded ones move money (the payment's `amount_refunded`, a settlement line). What is
left to refund counts pending refunds against the payment too, so concurrent refunds can never add
up to more than was paid; a failed refund frees its amount.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from simulator.payments import InvalidRequest, parse_amount, parse_currency

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
FINAL_OUTCOMES = (SUCCEEDED, FAILED)

TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset(FINAL_OUTCOMES),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
}

REASON_MAX = 255
METADATA_KEYS_MAX = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500


@dataclass(frozen=True)
class RefundRequest:
    """The parameters of POST /v1/payments/{id}/refunds; equal requests may share an idempotency key.

    `amount` None asks for the rest of the payment. `metadata` is kept as sorted pairs, so two bodies
    with the same metadata in another order are the same request.
    """

    payment_id: str
    amount: Decimal | None
    currency: str
    reason: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, payment_id: str, body: Any) -> RefundRequest:
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        unknown = sorted(set(body) - {"amount", "currency", "reason", "metadata"})
        if unknown:
            raise InvalidRequest(f"unknown parameter: {unknown[0]}", unknown[0])
        currency = parse_currency(body.get("currency"))
        raw_amount = body.get("amount")
        amount = None if raw_amount is None else parse_amount(raw_amount, currency)
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or not 0 < len(reason) <= REASON_MAX):
            raise InvalidRequest(f"reason must be a string of 1 to {REASON_MAX} characters", "reason")
        return cls(payment_id, amount, currency, reason, _metadata(body.get("metadata", {})))


def _metadata(value: Any) -> tuple[tuple[str, str], ...]:
    """Stripe's metadata rules: an object of at most 50 string keys (40 characters) to strings (500)."""
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > METADATA_KEYS_MAX:
        raise InvalidRequest(f"metadata must be an object of at most {METADATA_KEYS_MAX} keys", "metadata")
    for key, item in value.items():
        if not 0 < len(key) <= METADATA_KEY_MAX or not isinstance(item, str) or len(item) > METADATA_VALUE_MAX:
            raise InvalidRequest(
                f"metadata keys have 1 to {METADATA_KEY_MAX} characters and values are strings"
                f" of at most {METADATA_VALUE_MAX}",
                "metadata",
            )
    return tuple(sorted(value.items()))


@dataclass
class Refund:
    """One refund the provider accepted; `outcome` is where it will go when it leaves pending."""

    request: RefundRequest
    idempotency_key: str
    amount: Decimal  # the request's, or the rest of the payment when it named none
    outcome: str
    settle_after_ms: int
    id: str = field(default_factory=lambda: f"re_{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))
    status: str = PENDING
    history: list[str] = field(default_factory=lambda: [PENDING])

    @property
    def payment_id(self) -> str:
        return self.request.payment_id

    def move_to(self, status: str) -> None:
        if status not in TRANSITIONS[self.status]:
            raise InvalidRequest(f"refund {self.id} is {self.status}; it cannot become {status}")
        self.status = status
        self.history.append(status)

    def to_json(self, status: str | None = None) -> dict[str, Any]:
        """The API's view; `status` lets a contradictory webhook claim a status it does not have."""
        return {
            "id": self.id,
            "object": "refund",
            "payment": self.payment_id,
            "amount": str(self.amount),
            "currency": self.request.currency,
            "status": status or self.status,
            "reason": self.request.reason,
            "metadata": dict(self.request.metadata),
            "idempotency_key": self.idempotency_key,
            "created": self.created,
        }


class RefundRefused(Exception):
    """A refund the provider will not make: the HTTP status, the message, the parameter it names
    and a machine-readable code. Nothing was created."""

    def __init__(self, status: int, message: str, param: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code
