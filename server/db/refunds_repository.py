"""SQL for refunds: recording one with its idempotency key, reading them, and writing their moves.

RefundPayment costs one round trip to read the payment and one to record the refund when the key is
new: a single statement inserts the key, the refund (whose trigger counts its amount against the
payment under the payment's row lock, refused past the payment's amount), its outbox event and its
audit entry, so all exist or none does.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from server.db.ledger_repository import posting_rows
from server.domain import events
from server.domain.ledger import Posting
from server.domain.money import Money, quantize
from server.domain.payment_states import PaymentState
from server.domain.refund_states import INITIAL_REFUND_STATE, RefundState
from server.domain.refunds import REFUND_PAYMENT_OPERATION, RefundablePayment, RefundPayment


@dataclass(frozen=True)
class RefundRecord:
    id: uuid.UUID
    payment_id: uuid.UUID
    client_id: str
    idempotency_key: str
    amount: Money
    state: RefundState
    reason: str
    metadata: dict[str, str]
    provider_refund_id: str | None
    provider_status: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ExistingRefundKey:
    """What an idempotency key already stands for (a refund, or another operation's resource)."""

    operation: str
    request_fingerprint: bytes
    refund: RefundRecord | None


_REFUND_COLUMNS = (
    "id, payment_id, client_id, idempotency_key, amount, currency_code, state, reason, metadata,"
    " provider_refund_id, provider_status, created_at, updated_at"
)

_INSERT_KEY_AND_REFUND = f"""
WITH new_key AS (
    INSERT INTO idempotency_keys (client_id, idempotency_key, operation, request_fingerprint, resource_id)
    VALUES ($1, $2, '{REFUND_PAYMENT_OPERATION}', $3, $4)
    ON CONFLICT (client_id, idempotency_key) DO NOTHING
    RETURNING resource_id
), new_refund AS (
    INSERT INTO refunds (id, payment_id, client_id, idempotency_key, amount, currency_code, state, reason, metadata)
    SELECT resource_id, $5, $1, $2, $6, $7, $8, $9, $10 FROM new_key
    RETURNING {_REFUND_COLUMNS}
), announced AS (
    INSERT INTO outbox (id, topic, message_key, payload)
    SELECT $11, '{events.REFUND_RECORDED}', id::text, $12 FROM new_refund
), audited AS (
    INSERT INTO audit_log (aggregate_type, aggregate_id, action, actor, payload)
    SELECT 'refund', id::text, '{events.REFUND_RECORDED}', $1, $13 FROM new_refund
)
SELECT * FROM new_refund
"""

_SELECT_KEY_WITH_REFUND = """
SELECT k.operation, k.request_fingerprint,
       r.id, r.payment_id, r.client_id, r.idempotency_key, r.amount, r.currency_code, r.state, r.reason,
       r.metadata, r.provider_refund_id, r.provider_status, r.created_at, r.updated_at
FROM idempotency_keys k
LEFT JOIN refunds r ON r.id = k.resource_id
WHERE k.client_id = $1 AND k.idempotency_key = $2
"""

# $2 NULL: whoever the refund's client (a reader of every client's refunds)
_SELECT_REFUND = f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE id = $1 AND ($2::text IS NULL OR client_id = $2)"

# Keyset pagination, oldest first: (created_at, id) strictly after the cursor.
_LIST_REFUNDS = f"""
SELECT {_REFUND_COLUMNS} FROM refunds
WHERE payment_id = $1
  AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
ORDER BY created_at, id
LIMIT $4
"""

_SELECT_REFUNDABLE = """
SELECT id, state, amount, currency_code, refund_held FROM payments
WHERE id = $1 AND ($2::text IS NULL OR client_id = $2)
"""

_STAMP_SUBMISSION = "UPDATE refunds SET submitted_at = now() WHERE id = $1 AND state = 'RECORDED' RETURNING id"


def _refund_from_row(row: asyncpg.Record | dict[str, Any]) -> RefundRecord:
    return RefundRecord(
        id=row["id"],
        payment_id=row["payment_id"],
        client_id=row["client_id"],
        idempotency_key=row["idempotency_key"],
        amount=quantize(row["amount"], row["currency_code"]),
        state=RefundState(row["state"]),
        reason=row["reason"],
        metadata=row["metadata"],
        provider_refund_id=row["provider_refund_id"],
        provider_status=row["provider_status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def refundable_payment(
    connection: asyncpg.Connection, client_id: str | None, payment_id: uuid.UUID, *, timeout_s: float
) -> RefundablePayment | None:
    """The payment as a refund is checked against, if it is `client_id`'s (None: whoever's it is)."""
    row = await connection.fetchrow(_SELECT_REFUNDABLE, payment_id, client_id, timeout=timeout_s)
    if row is None:
        return None
    return RefundablePayment(
        row["id"], PaymentState(row["state"]), quantize(row["amount"], row["currency_code"]), row["refund_held"]
    )


async def insert_refund_with_key(
    connection: asyncpg.Connection, client_id: str, request: RefundPayment, amount: Money, *, timeout_s: float
) -> RefundRecord | None:
    """Insert the key and the refund atomically; None if the key already exists (nothing written).

    PostgreSQL refuses the refund (asyncpg.CheckViolationError, constraint `ck_payments_refunds_within_amount`
    or `refunds_of_captured_payment`) when the payment no longer has `amount` left to refund or is no
    longer captured: another refund got there first.
    """
    refund_id, event_id = uuid.uuid4(), uuid.uuid4()
    event = events.refund_recorded(
        refund_id, request.payment_id, client_id, amount.amount, amount.currency_code, INITIAL_REFUND_STATE.value
    )
    row = await connection.fetchrow(
        _INSERT_KEY_AND_REFUND,
        client_id,
        request.idempotency_key,
        request.fingerprint(),
        refund_id,
        request.payment_id,
        amount.amount,
        amount.currency_code,
        INITIAL_REFUND_STATE.value,
        request.reason,
        request.metadata,
        event_id,
        event | {"event_id": str(event_id)},
        event | {"idempotency_key": request.idempotency_key, "reason": request.reason, "metadata": request.metadata},
        timeout=timeout_s,
    )
    return None if row is None else _refund_from_row(row)


async def find_key(
    connection: asyncpg.Connection, client_id: str, idempotency_key: str, *, timeout_s: float
) -> ExistingRefundKey | None:
    row = await connection.fetchrow(_SELECT_KEY_WITH_REFUND, client_id, idempotency_key, timeout=timeout_s)
    if row is None:
        return None
    refund = None if row["id"] is None else _refund_from_row(row)
    return ExistingRefundKey(operation=row["operation"], request_fingerprint=row["request_fingerprint"], refund=refund)


async def get_refund(
    connection: asyncpg.Connection, client_id: str | None, refund_id: uuid.UUID, *, timeout_s: float
) -> RefundRecord | None:
    row = await connection.fetchrow(_SELECT_REFUND, refund_id, client_id, timeout=timeout_s)
    return None if row is None else _refund_from_row(row)


async def list_refunds(
    connection: asyncpg.Connection,
    payment_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
    timeout_s: float,
) -> list[RefundRecord]:
    created_at, refund_id = after if after is not None else (None, None)
    rows = await connection.fetch(_LIST_REFUNDS, payment_id, created_at, refund_id, limit, timeout=timeout_s)
    return [_refund_from_row(row) for row in rows]


async def stamp_submission(
    connection: asyncpg.Connection, refund_id: uuid.UUID, *, timeout_s: float
) -> RefundRecord | None:
    """Stamp an attempt to send the refund; None if stamped (send it), else the refund as it is now."""
    if await connection.fetchval(_STAMP_SUBMISSION, refund_id, timeout=timeout_s) is not None:
        return None
    row = await connection.fetchrow(
        f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE id = $1", refund_id, timeout=timeout_s
    )
    return None if row is None else _refund_from_row(row)


@dataclass(frozen=True)
class LockedRefund:
    """A refund as it was when its row lock was granted, with what its payment says about it."""

    id: uuid.UUID
    payment_id: uuid.UUID
    client_id: str
    state: RefundState
    amount: Decimal
    currency_code: str
    provider_refund_id: str | None
    #: the provider's id of the refund's payment (None until the provider named one)
    provider_payment_id: str | None


_LOCK_REFUND = """
SELECT r.id, r.payment_id, r.client_id, r.state, r.amount, r.currency_code, r.provider_refund_id,
       p.provider_payment_id
FROM refunds r JOIN payments p ON p.id = r.payment_id
WHERE r.id = $1
FOR UPDATE OF r
"""


# A refund's payment is locked before the refund: the order every writer keeps (a payment's evidence
# locks the payment; a refund's move changes its payment's totals), so none waits for another in the
# opposite order. A refund's payment never changes, so it is read unlocked first.
_LOCK_PAYMENT_OF_REFUND = """
SELECT 1 FROM payments WHERE id = (SELECT payment_id FROM refunds WHERE id = $1) FOR UPDATE
"""


async def lock_refund(connection: asyncpg.Connection, refund_id: uuid.UUID) -> LockedRefund | None:
    """The refund, locked with its payment until the caller's transaction ends (the payment first)."""
    await connection.execute(_LOCK_PAYMENT_OF_REFUND, refund_id)
    row = await connection.fetchrow(_LOCK_REFUND, refund_id)
    if row is None:
        return None
    return LockedRefund(
        row["id"],
        row["payment_id"],
        row["client_id"],
        RefundState(row["state"]),
        row["amount"],
        row["currency_code"],
        row["provider_refund_id"],
        row["provider_payment_id"],
    )


# The provider's latest word beside the refund and its id for the refund (kept the first time it is
# named), and the refund made due for a check now when a webhook claimed news.
_NOTE = """
UPDATE refunds
SET provider_status = coalesce($2, provider_status),
    provider_refund_id = coalesce(provider_refund_id, $3),
    next_check_at = CASE WHEN $4 THEN now() ELSE next_check_at END
WHERE id = $1
"""


async def note(
    connection: asyncpg.Connection,
    refund_id: uuid.UUID,
    *,
    status: str | None,
    provider_refund_id: str | None,
    confirm: bool,
) -> None:
    await connection.execute(_NOTE, refund_id, status, provider_refund_id, confirm)


@dataclass(frozen=True)
class RefundMove:
    """A refund's transition with everything it writes: its ledger entries (a succeeded refund's
    reversal), their outbox events, its own outbox event and its audit entry."""

    refund: LockedRefund
    to_state: RefundState
    event: str
    cause: str
    evidence_ref: str
    provider_status: str | None
    postings: tuple[Posting, ...]

    def state_changed(self) -> dict[str, Any]:
        refund = self.refund
        return events.refund_state_changed(
            refund.id,
            refund.payment_id,
            refund.state.value,
            self.to_state.value,
            self.event,
            self.cause,
            self.evidence_ref,
            client_id=refund.client_id,
            amount=refund.amount,
            currency_code=refund.currency_code,
        )


_INSERT_REFUND_MOVE = """
WITH moved AS (
    INSERT INTO refund_transitions (refund_id, from_state, to_state, event, cause, evidence_ref, provider_status)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
), entries AS (
    INSERT INTO ledger_entries (id, event_key, payment_id, description)
    SELECT * FROM unnest($8::uuid[], $9::text[], $10::uuid[], $11::text[])
), lines AS (
    INSERT INTO ledger_lines (entry_id, line_number, account, currency_code, amount)
    SELECT * FROM unnest($12::uuid[], $13::smallint[], $14::text[], $15::text[], $16::numeric[])
), announced AS (
    INSERT INTO outbox (id, topic, message_key, payload)
    SELECT * FROM unnest($17::uuid[], $18::text[], $19::text[], $20::jsonb[])
)
INSERT INTO audit_log (aggregate_type, aggregate_id, action, actor, payload)
VALUES ('refund', $1::text, $21, $5, $22)
"""


async def insert_refund_move(connection: asyncpg.Connection, move: RefundMove) -> tuple[uuid.UUID, ...]:
    """Write the move in the caller's transaction, in one round trip; the ledger entries' ids.

    The transition's trigger moves the refund and the payment's totals with it. A posting whose event
    key was posted before makes the whole statement fail (ledger_entries.event_key is unique): a
    refund posts once, whatever happens.
    """
    entry_ids = tuple(uuid.uuid4() for _ in move.postings)
    rows = posting_rows(list(zip(entry_ids, move.postings, strict=True)))
    change = move.state_changed()
    announced = [*rows.announced, (events.REFUND_STATE_CHANGED, str(move.refund.id), change)]
    event_ids = [uuid.uuid4() for _ in announced]
    await connection.execute(
        _INSERT_REFUND_MOVE,
        move.refund.id,
        move.refund.state.value,
        move.to_state.value,
        move.event,
        move.cause,
        move.evidence_ref,
        move.provider_status,
        *rows.arguments,
        event_ids,
        [topic for topic, _, _ in announced],
        [key for _, key, _ in announced],
        [payload | {"event_id": str(event_id)} for event_id, (_, _, payload) in zip(event_ids, announced, strict=True)],
        events.REFUND_STATE_CHANGED,
        change,
    )
    return entry_ids


# Called under the payments' row locks, while refund evidence takes a refund's lock and then its
# payment's: refunds locked elsewhere are skipped (they are being moved, and their own check follows),
# so the two never wait for each other in opposite orders.
_CONFIRM_UNDECIDED_OF = """
UPDATE refunds SET next_check_at = now()
WHERE id IN (SELECT id FROM refunds WHERE payment_id = ANY($1::uuid[]) AND state IN ('RECORDED', 'PENDING', 'UNKNOWN')
             FOR UPDATE SKIP LOCKED)
"""


async def confirm_undecided_of(connection: asyncpg.Connection, payment_ids: Sequence[uuid.UUID]) -> None:
    """Make the payments' undecided refunds due for a check with the provider now (the provider said
    something about their payment that their own answers settle); no round trip for no payments."""
    if payment_ids:
        await connection.execute(_CONFIRM_UNDECIDED_OF, list(payment_ids))


async def provider_payment_id_of(
    connection: asyncpg.Connection, payment_id: uuid.UUID, *, timeout_s: float
) -> str | None:
    """The provider's id for the payment, as Ballast noted it from the provider's API (None: not yet)."""
    noted: str | None = await connection.fetchval(
        "SELECT provider_payment_id FROM payments WHERE id = $1", payment_id, timeout=timeout_s
    )
    return noted


async def payment_of_provider_id(connection: asyncpg.Connection, provider_payment_id: str) -> uuid.UUID | None:
    """Ballast's payment the provider knows by this id (as noted from its API), if any."""
    payment_id: uuid.UUID | None = await connection.fetchval(
        "SELECT id FROM payments WHERE provider_payment_id = $1 LIMIT 1", provider_payment_id
    )
    return payment_id
