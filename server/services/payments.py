"""Payment use cases: each takes a validated request and a time budget, and returns records or raises named errors."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from server.db import payments_repository
from server.db.database import Budget, Database
from server.db.payments_repository import PaymentRecord
from server.domain.errors import (
    ConcurrencyConflict,
    FieldViolation,
    IdempotencyKeyReused,
    InvalidArgument,
    NotFound,
    echo,
)
from server.domain.identity import Principal
from server.domain.payments import CreatePayment, PaymentState

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500


@dataclass(frozen=True)
class CreatePaymentResult:
    payment: PaymentRecord
    #: True when an earlier request with the same key created the payment.
    replayed: bool


async def create_payment(
    database: Database, principal: Principal, request: CreatePayment, budget: Budget
) -> CreatePaymentResult:
    """Record a payment once per (client, idempotency key).

    A concurrent request with the same key waits on the key's unique index until the first one
    commits, then reads what it created; so 50 racing calls create one payment and all return it.
    """
    async with database.connection(budget) as connection:
        created = await payments_repository.insert_payment_with_key(
            connection, principal.client_id, request, timeout_s=budget.remaining_s()
        )
        if created is not None:
            return CreatePaymentResult(created, replayed=False)
        existing = await payments_repository.find_key(
            connection, principal.client_id, request.idempotency_key, timeout_s=budget.remaining_s()
        )
    if existing is None:
        # The key's row vanished between the two statements (it was purged); a retry starts afresh.
        raise ConcurrencyConflict(f"idempotency_key {request.idempotency_key!r} changed while in use; retry")
    if existing.request_fingerprint != request.fingerprint() or existing.payment is None:
        raise IdempotencyKeyReused(request.idempotency_key, existing.operation)
    return CreatePaymentResult(existing.payment, replayed=True)


#: The one spelling of an id Ballast accepts: the canonical 8-4-4-4-12 hex form (either case).
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
PAGE_TOKEN_LENGTH_MAX = 256


def parse_payment_id(raw: str, field: str = "payment_id") -> uuid.UUID:
    # uuid.UUID() alone would also take braces, "urn:uuid:", signs, underscores and non-ASCII digits.
    if not _UUID.fullmatch(raw):
        raise InvalidArgument([FieldViolation(field, f"{echo(raw, 40)} is not a UUID such as {uuid.UUID(int=0)}")])
    return uuid.UUID(raw)


async def get_payment(database: Database, principal: Principal, payment_id: uuid.UUID, budget: Budget) -> PaymentRecord:
    """A payment of the calling client; another client's payment is NotFound, as if it did not exist."""
    async with database.connection(budget) as connection:
        payment = await payments_repository.get_payment(
            connection, principal.client_id, payment_id, timeout_s=budget.remaining_s()
        )
    if payment is None:
        raise NotFound("payment", str(payment_id))
    return payment


@dataclass(frozen=True)
class PaymentPage:
    payments: list[PaymentRecord]
    #: True when payments exist after the last one in this page.
    has_more: bool
    state: PaymentState | None

    def token_after(self, last: PaymentRecord) -> str:
        """The token of the page that starts after `last` (which may be before the end of this page)."""
        return _encode_page_token(self.state, last)

    @property
    def next_page_token(self) -> str:
        return self.token_after(self.payments[-1]) if self.has_more else ""


def _encode_page_token(state: PaymentState | None, last: PaymentRecord) -> str:
    cursor = {"s": None if state is None else state.value, "t": last.created_at.isoformat(), "i": str(last.id)}
    return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode()


def _decode_page_token(token: str, state: PaymentState | None) -> tuple[datetime, uuid.UUID]:
    invalid = InvalidArgument([FieldViolation("page_token", "is not a token from a previous ListPayments response")])
    if len(token) > PAGE_TOKEN_LENGTH_MAX:
        raise invalid
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
        after_time = datetime.fromisoformat(cursor["t"])
        if after_time.tzinfo is None:
            raise invalid
        if not _UUID.fullmatch(cursor["i"]):
            raise invalid
        after = (after_time.astimezone(UTC), uuid.UUID(cursor["i"]))
        cursor_state = cursor["s"]
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError, binascii.Error):
        raise invalid from None  # ValueError covers UnicodeDecodeError and json.JSONDecodeError
    if cursor_state != (None if state is None else state.value):
        raise InvalidArgument([FieldViolation("page_token", "was issued for a different state filter")])
    return after


async def list_payments(
    database: Database,
    principal: Principal,
    *,
    page_size: int,
    page_token: str,
    state: PaymentState | None,
    budget: Budget,
) -> PaymentPage:
    if page_size < 0 or page_size > PAGE_SIZE_MAX:
        raise InvalidArgument(
            [FieldViolation("page_size", f"must be from 0 to {PAGE_SIZE_MAX}; 0 means {PAGE_SIZE_DEFAULT}")]
        )
    limit = page_size or PAGE_SIZE_DEFAULT
    after = _decode_page_token(page_token, state) if page_token else None
    async with database.connection(budget) as connection:
        # One row more than asked tells whether another page exists without a count query.
        rows = await payments_repository.list_payments(
            connection, principal.client_id, state=state, after=after, limit=limit + 1, timeout_s=budget.remaining_s()
        )
    return PaymentPage(rows[:limit], has_more=len(rows) > limit, state=state)
