"""SQL for payments and their idempotency keys, run through asyncpg (the hot path: no ORM).

CreatePayment costs one round trip when the key is new: a single statement inserts the key and
the payment together, so both exist or neither does. A repeated key costs a second round trip
to read what the first request created.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from server.domain import events
from server.domain.events import PAYMENT_RECORDED
from server.domain.money import Money, quantize
from server.domain.payment_states import INITIAL_PAYMENT_STATE, PaymentState
from server.domain.payments import CREATE_PAYMENT_OPERATION, CreatePayment


@dataclass(frozen=True)
class PaymentRecord:
    id: uuid.UUID
    client_id: str
    idempotency_key: str
    amount: Money
    state: PaymentState
    description: str
    merchant_reference: str
    metadata: dict[str, str]
    provider_payment_id: str | None
    provider_status: str | None
    created_at: datetime
    updated_at: datetime
    #: what its own refunds returned so far
    refunded: Decimal = Decimal(0)


@dataclass(frozen=True)
class ExistingKey:
    """What an idempotency key already stands for."""

    operation: str
    request_fingerprint: bytes
    payment: PaymentRecord | None


_PAYMENT_COLUMNS = (
    "id, client_id, idempotency_key, amount, currency_code, state, description, merchant_reference,"
    " metadata, provider_payment_id, provider_status, created_at, updated_at, refunded"
)

# One statement, one round trip: the key, the payment, its outbox event and its first audit entry
# are written together or not at all. A key that exists already makes every part insert nothing.
_INSERT_KEY_AND_PAYMENT = f"""
WITH new_key AS (
    INSERT INTO idempotency_keys (client_id, idempotency_key, operation, request_fingerprint, resource_id)
    VALUES ($1, $2, '{CREATE_PAYMENT_OPERATION}', $3, $4)
    ON CONFLICT (client_id, idempotency_key) DO NOTHING
    RETURNING resource_id
), new_payment AS (
    INSERT INTO payments (id, client_id, idempotency_key, amount, currency_code, state,
                          description, merchant_reference, metadata)
    SELECT resource_id, $1, $2, $5, $6, $7, $8, $9, $10 FROM new_key
    RETURNING {_PAYMENT_COLUMNS}
), announced AS (
    INSERT INTO outbox (id, topic, message_key, payload)
    SELECT $11, '{PAYMENT_RECORDED}', id::text, $12 FROM new_payment
), audited AS (
    INSERT INTO audit_log (aggregate_type, aggregate_id, action, actor, payload)
    SELECT 'payment', id::text, '{PAYMENT_RECORDED}', $1, $13 FROM new_payment
)
SELECT * FROM new_payment
"""

_SELECT_KEY_WITH_PAYMENT = """
SELECT k.operation, k.request_fingerprint,
       p.id, p.client_id, p.idempotency_key, p.amount, p.currency_code, p.state, p.description,
       p.merchant_reference, p.metadata, p.provider_payment_id, p.provider_status, p.created_at, p.updated_at,
       p.refunded
FROM idempotency_keys k
LEFT JOIN payments p ON p.id = k.resource_id
WHERE k.client_id = $1 AND k.idempotency_key = $2
"""

# $2 NULL: whoever the payment's client (a reader of every client's payments)
_SELECT_PAYMENT = f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = $1 AND ($2::text IS NULL OR client_id = $2)"


def _list_payments_sql(whose: str) -> str:
    """Keyset pagination, newest first: (created_at, id) strictly after the cursor. One statement per
    scope (`whose`: one client's payments, or every client's with $1 NULL), each keeping its own plan."""
    return f"""
SELECT {_PAYMENT_COLUMNS} FROM payments
WHERE {whose}
  AND ($2::text IS NULL OR state = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $5
"""


_LIST_PAYMENTS = _list_payments_sql("client_id = $1")
_LIST_EVERY_CLIENTS_PAYMENTS = _list_payments_sql("$1::text IS NULL")


def _payment_from_row(row: asyncpg.Record | dict[str, Any]) -> PaymentRecord:
    return PaymentRecord(
        id=row["id"],
        client_id=row["client_id"],
        idempotency_key=row["idempotency_key"],
        amount=quantize(row["amount"], row["currency_code"]),
        state=PaymentState(row["state"]),
        description=row["description"],
        merchant_reference=row["merchant_reference"],
        metadata=row["metadata"],
        provider_payment_id=row["provider_payment_id"],
        provider_status=row["provider_status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        refunded=row["refunded"],
    )


async def insert_payment_with_key(
    connection: asyncpg.Connection, client_id: str, request: CreatePayment, *, timeout_s: float
) -> PaymentRecord | None:
    """Insert the key and the payment atomically; None if the key already exists (nothing written)."""
    payment_id, event_id = uuid.uuid4(), uuid.uuid4()
    event = events.payment_recorded(
        payment_id, client_id, request.amount.amount, request.amount.currency_code, INITIAL_PAYMENT_STATE.value
    )
    row = await connection.fetchrow(
        _INSERT_KEY_AND_PAYMENT,
        client_id,
        request.idempotency_key,
        request.fingerprint(),
        payment_id,
        request.amount.amount,
        request.amount.currency_code,
        INITIAL_PAYMENT_STATE.value,
        request.description,
        request.merchant_reference,
        request.metadata,
        event_id,
        event | {"event_id": str(event_id)},
        event
        | {
            "idempotency_key": request.idempotency_key,
            "description": request.description,
            "merchant_reference": request.merchant_reference,
            "metadata": request.metadata,
        },
        timeout=timeout_s,
    )
    return None if row is None else _payment_from_row(row)


# A retry's attempt to send a RECORDED payment, stamped under its row lock; no row when it is no longer
# RECORDED (expired or sent meanwhile).
_STAMP_SUBMISSION = "UPDATE payments SET submitted_at = now() WHERE id = $1 AND state = 'RECORDED' RETURNING id"


async def stamp_submission(
    connection: asyncpg.Connection, payment_id: uuid.UUID, *, timeout_s: float
) -> PaymentRecord | None:
    """Stamp an attempt to send the payment; None if stamped (send it), else the payment as it is now.

    The re-read is a statement of its own: it sees what the transaction that moved the payment committed
    (one statement would answer from the snapshot it began with, before the lock was granted).
    """
    if await connection.fetchval(_STAMP_SUBMISSION, payment_id, timeout=timeout_s) is not None:
        return None
    row = await connection.fetchrow(
        f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = $1", payment_id, timeout=timeout_s
    )
    return None if row is None else _payment_from_row(row)


async def find_key(
    connection: asyncpg.Connection, client_id: str, idempotency_key: str, *, timeout_s: float
) -> ExistingKey | None:
    row = await connection.fetchrow(_SELECT_KEY_WITH_PAYMENT, client_id, idempotency_key, timeout=timeout_s)
    if row is None:
        return None
    payment = None if row["id"] is None else _payment_from_row(row)
    return ExistingKey(operation=row["operation"], request_fingerprint=row["request_fingerprint"], payment=payment)


async def get_payment(
    connection: asyncpg.Connection, client_id: str | None, payment_id: uuid.UUID, *, timeout_s: float
) -> PaymentRecord | None:
    """The payment, if it is `client_id`'s (None: whoever's it is)."""
    row = await connection.fetchrow(_SELECT_PAYMENT, payment_id, client_id, timeout=timeout_s)
    return None if row is None else _payment_from_row(row)


async def list_payments(
    connection: asyncpg.Connection,
    client_id: str | None,
    *,
    state: PaymentState | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
    timeout_s: float,
) -> list[PaymentRecord]:
    created_at, payment_id = after if after is not None else (None, None)
    rows = await connection.fetch(
        _LIST_PAYMENTS if client_id is not None else _LIST_EVERY_CLIENTS_PAYMENTS,
        client_id,
        None if state is None else state.value,
        created_at,
        payment_id,
        limit,
        timeout=timeout_s,
    )
    return [_payment_from_row(row) for row in rows]


async def lock_state(connection: asyncpg.Connection, payment_id: uuid.UUID) -> PaymentState | None:
    """The payment's state, its row locked until the caller's transaction ends; None if there is none."""
    state = await connection.fetchval("SELECT state FROM payments WHERE id = $1 FOR UPDATE", payment_id)
    return None if state is None else PaymentState(state)
