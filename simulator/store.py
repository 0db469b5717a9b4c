"""The provider's memory: payments by id and by idempotency key.

Every method is synchronous and the simulator runs on one event loop, so a check-then-create
cannot interleave with another: 50 concurrent requests with one key create one payment, no lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.payments import Payment, PaymentRequest


class IdempotencyConflict(Exception):
    """The key was used before with different parameters."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used with different parameters")
        self.key = key


@dataclass
class Saved:
    """The first answer given for a key, replayed verbatim to every repeat."""

    request: PaymentRequest
    payment: Payment
    status: int
    body: dict[str, Any]


class PaymentStore:
    def __init__(self) -> None:
        self.payments: dict[str, Payment] = {}  # by id, in creation order
        self.by_key: dict[str, Saved] = {}

    def replay(self, key: str, request: PaymentRequest) -> Saved | None:
        """The saved answer for a repeated key, None for a new key; IdempotencyConflict on a mismatch."""
        saved = self.by_key.get(key)
        if saved is None:
            return None
        if saved.request != request:
            raise IdempotencyConflict(key)
        return saved

    def add(self, payment: Payment, status: int, body: dict[str, Any]) -> None:
        if payment.idempotency_key in self.by_key:
            raise RuntimeError(f"idempotency key {payment.idempotency_key!r} is taken: call replay() first")
        self.payments[payment.id] = payment
        self.by_key[payment.idempotency_key] = Saved(payment.request, payment, status, body)

    def get(self, payment_id: str) -> Payment | None:
        return self.payments.get(payment_id)

    def by_idempotency_key(self, key: str) -> Payment | None:
        saved = self.by_key.get(key)
        return saved.payment if saved else None
