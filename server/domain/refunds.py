"""Refunds: the rules for accepting a request to refund a payment (their states: server/domain/refund_states.py).

A request is checked twice: on its own (`validate_refund_payment`: every field, every problem at
once, INVALID_ARGUMENT), then against the payment it names (`refund_terms`: its currency, whether its
money is captured, what is left to refund). PostgreSQL checks the second part again when the refund
is written (server/db/invariants.sql, section 8), so two refunds racing for the same money cannot
both pass.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from server.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument
from server.domain.identifiers import parse_uuid
from server.domain.money import Money
from server.domain.payment_states import REFUNDABLE_STATES, PaymentState
from server.domain.payments import check_text, validate_amount, validate_idempotency_key, validate_metadata
from server.domain.refund_states import REASON_LENGTH_MAX, RefundTooLarge, refund_amount

#: The operation name stored beside an idempotency key a refund was asked with.
REFUND_PAYMENT_OPERATION = "payments.refund"


@dataclass(frozen=True)
class RefundPayment:
    """A validated request to refund a payment: `amount` None means all that is left of it."""

    idempotency_key: str
    payment_id: uuid.UUID
    amount: Money | None
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> bytes:
        """SHA-256 of the parameters in canonical form; equal requests give equal fingerprints (amounts by
        value in their currency, metadata regardless of order; "the rest" is its own value)."""
        canonical = json.dumps(
            {
                "operation": REFUND_PAYMENT_OPERATION,
                "payment_id": str(self.payment_id),
                "amount": None if self.amount is None else self.amount.to_decimal_string(),
                "currency_code": None if self.amount is None else self.amount.currency_code,
                "reason": self.reason,
                "metadata": self.metadata,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).digest()


def validate_refund_payment(
    *,
    idempotency_key: str,
    payment_id: str,
    has_amount: bool,
    amount_value: str,
    currency_code: str,
    reason: str,
    metadata: dict[str, str],
) -> RefundPayment:
    """Check every field and report every problem at once; InvalidArgument if there is any."""
    violations: list[FieldViolation] = []
    validate_idempotency_key(idempotency_key, violations)
    parsed_id: uuid.UUID | None = None
    try:
        parsed_id = parse_uuid(payment_id, "payment_id")
    except InvalidArgument as error:
        violations.extend(error.violations)
    amount: Decimal | None = None
    if has_amount:
        amount = validate_amount(amount_value, currency_code, violations)
    check_text(violations, "reason", reason, REASON_LENGTH_MAX)
    validate_metadata(metadata, violations)
    if violations or parsed_id is None or (has_amount and amount is None):
        raise InvalidArgument(violations)
    return RefundPayment(
        idempotency_key=idempotency_key,
        payment_id=parsed_id,
        amount=None if amount is None else Money(amount, currency_code),
        reason=reason,
        metadata=dict(metadata),
    )


@dataclass(frozen=True)
class RefundablePayment:
    """What a refund is checked against: the payment as it stands."""

    id: uuid.UUID
    state: PaymentState
    amount: Money
    #: what its refunds count against it already (succeeded, or may still succeed)
    refund_held: Decimal


def refund_terms(request: RefundPayment, payment: RefundablePayment) -> Money:
    """The money the refund takes of `payment`; InvalidArgument for another currency, FailedPrecondition
    (naming the field) for a payment whose money is not captured or an amount over what is left."""
    currency = payment.amount.currency_code
    if request.amount is not None and request.amount.currency_code != currency:
        raise InvalidArgument(
            [
                FieldViolation(
                    "amount.currency_code",
                    f"is {request.amount.currency_code}, but payment {payment.id} is in {currency}:"
                    " a refund is in its payment's currency",
                )
            ]
        )
    if payment.state not in REFUNDABLE_STATES:
        raise FailedPrecondition(
            "payment_id",
            f"payment {payment.id} is {payment.state.value}: only a captured payment (SUCCEEDED or"
            " PARTIALLY_REFUNDED) can be refunded",
        )
    asked = None if request.amount is None else request.amount.amount
    try:
        taken = refund_amount(asked, payment.amount.amount, payment.refund_held)
    except RefundTooLarge as error:
        raise FailedPrecondition(
            "amount.value",
            f"{error.asked} {currency} is more than the {error.left} {currency} left to refund of payment"
            f" {payment.id}: ask for at most that (or omit the amount for all of it)",
        ) from None
    except ValueError:
        raise FailedPrecondition(
            "amount.value", f"nothing is left to refund of payment {payment.id}: its refunds hold all of it"
        ) from None
    return Money(taken, currency)
