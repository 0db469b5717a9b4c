"""Payments: the rules for accepting a request to create one (their states: server/domain/payment_states.py)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from decimal import Decimal

from server.domain.errors import FieldViolation, InvalidArgument, echo
from server.domain.money import Money, MoneyError, parse_amount, parse_currency

IDEMPOTENCY_KEY_LENGTH_MAX = 255
DESCRIPTION_LENGTH_MAX = 1000
MERCHANT_REFERENCE_LENGTH_MAX = 255
METADATA_ENTRIES_MAX = 50
METADATA_KEY_LENGTH_MAX = 40
METADATA_VALUE_LENGTH_MAX = 500

#: The operation name stored beside an idempotency key, so that a key is never reused across operations.
CREATE_PAYMENT_OPERATION = "payments.create"
#: The longest operation name stored beside an idempotency key.
OPERATION_LENGTH_MAX = 64


@dataclass(frozen=True)
class CreatePayment:
    """A validated request to create a payment."""

    idempotency_key: str
    amount: Money
    description: str = ""
    merchant_reference: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> bytes:
        """SHA-256 of the parameters in canonical form; equal requests give equal fingerprints.

        Amounts are compared by value in their currency ("10.5" and "10.50" are one request),
        metadata regardless of order.
        """
        canonical = json.dumps(
            {
                "operation": CREATE_PAYMENT_OPERATION,
                "amount": self.amount.to_decimal_string(),
                "currency_code": self.amount.currency_code,
                "description": self.description,
                "merchant_reference": self.merchant_reference,
                "metadata": self.metadata,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).digest()


def check_text(violations: list[FieldViolation], name: str, value: str, length_max: int) -> None:
    if len(value) > length_max:
        violations.append(FieldViolation(name, f"is {len(value)} characters long; the maximum is {length_max}"))
    elif "\x00" in value:
        violations.append(FieldViolation(name, "must not contain NUL characters"))


def validate_idempotency_key(key: str, violations: list[FieldViolation]) -> None:
    if not key:
        violations.append(
            FieldViolation("idempotency_key", "is required: a unique string per request, reused only on retries")
        )
    elif len(key) > IDEMPOTENCY_KEY_LENGTH_MAX:
        violations.append(
            FieldViolation(
                "idempotency_key", f"is {len(key)} characters long; the maximum is {IDEMPOTENCY_KEY_LENGTH_MAX}"
            )
        )
    elif not key.isprintable():
        violations.append(FieldViolation("idempotency_key", "must contain printable characters only"))
    elif not key.strip():
        violations.append(
            FieldViolation("idempotency_key", "must hold something besides spaces: printable characters, e.g. a UUID")
        )


def validate_amount(value: str, currency_code: str, violations: list[FieldViolation]) -> Decimal | None:
    try:
        parse_currency(currency_code)
    except MoneyError as error:
        violations.append(FieldViolation("amount.currency_code", str(error)))
        return None
    try:
        amount = parse_amount(value, currency_code)
    except MoneyError as error:
        violations.append(FieldViolation("amount.value", str(error)))
        return None
    if amount <= 0:
        violations.append(FieldViolation("amount.value", f"must be greater than zero, got {value!r}"))
        return None
    return amount


def validate_metadata(metadata: dict[str, str], violations: list[FieldViolation]) -> None:
    if len(metadata) > METADATA_ENTRIES_MAX:
        violations.append(
            FieldViolation("metadata", f"has {len(metadata)} entries; the maximum is {METADATA_ENTRIES_MAX}")
        )
        return
    for key, value in sorted(metadata.items()):
        if not key or len(key) > METADATA_KEY_LENGTH_MAX:
            violations.append(
                FieldViolation("metadata", f"key {echo(key)} must be 1 to {METADATA_KEY_LENGTH_MAX} characters")
            )
        elif "\x00" in key:
            violations.append(FieldViolation("metadata", f"key {echo(key)} must not contain NUL characters"))
        check_text(violations, f"metadata[{key[:METADATA_KEY_LENGTH_MAX]}]", value, METADATA_VALUE_LENGTH_MAX)


def validate_create_payment(
    *,
    idempotency_key: str,
    amount_value: str,
    currency_code: str,
    description: str,
    merchant_reference: str,
    metadata: dict[str, str],
    has_amount: bool = True,
) -> CreatePayment:
    """Check every field and report every problem at once; InvalidArgument if there is any."""
    violations: list[FieldViolation] = []
    validate_idempotency_key(idempotency_key, violations)
    amount: Decimal | None = None
    if not has_amount:
        violations.append(FieldViolation("amount", 'is required: {value: "12.34", currency_code: "EUR"}'))
    else:
        amount = validate_amount(amount_value, currency_code, violations)
    check_text(violations, "description", description, DESCRIPTION_LENGTH_MAX)
    check_text(violations, "merchant_reference", merchant_reference, MERCHANT_REFERENCE_LENGTH_MAX)
    validate_metadata(metadata, violations)
    if violations or amount is None:  # a missing amount always added a violation
        raise InvalidArgument(violations)
    return CreatePayment(
        idempotency_key=idempotency_key,
        amount=Money(amount, currency_code),
        description=description,
        merchant_reference=merchant_reference,
        metadata=dict(metadata),
    )
