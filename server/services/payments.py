"""Payment use cases: each takes a validated request and a time budget, and returns records or raises named errors."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from server.db import payments_repository
from server.db.database import Budget, Database
from server.db.payments_repository import PaymentRecord as PaymentRecord  # a result of these use cases
from server.domain.errors import (
    ConcurrencyConflict,
    IdempotencyKeyReused,
    NotFound,
)
from server.domain.identifiers import parse_uuid
from server.domain.identity import Principal, readable_client
from server.domain.payment_states import PaymentState
from server.domain.payments import CreatePayment
from server.services.paging import LIST_PAGE, decode_cursor, encode_cursor


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


def parse_payment_id(raw: str, field: str = "payment_id") -> uuid.UUID:
    return parse_uuid(raw, field)


async def get_payment(database: Database, principal: Principal, payment_id: uuid.UUID, budget: Budget) -> PaymentRecord:
    """A payment the caller may read (readable_client); another client's is NotFound, as if it did not exist."""
    async with database.connection(budget) as connection:
        payment = await payments_repository.get_payment(
            connection, readable_client(principal), payment_id, timeout_s=budget.remaining_s()
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
        return encode_cursor(last.created_at, last.id, None if self.state is None else self.state.value)

    @property
    def next_page_token(self) -> str:
        return self.token_after(self.payments[-1]) if self.has_more else ""


async def list_payments(
    database: Database,
    principal: Principal,
    *,
    page_size: int,
    page_token: str,
    state: PaymentState | None,
    budget: Budget,
) -> PaymentPage:
    limit = LIST_PAGE.limit(page_size)
    scope = None if state is None else state.value
    after = decode_cursor(page_token, "ListPayments", scope) if page_token else None
    async with database.connection(budget) as connection:
        # One row more than asked tells whether another page exists without a count query.
        rows = await payments_repository.list_payments(
            connection,
            readable_client(principal),
            state=state,
            after=after,
            limit=limit + 1,
            timeout_s=budget.remaining_s(),
        )
    return PaymentPage(rows[:limit], has_more=len(rows) > limit, state=state)
