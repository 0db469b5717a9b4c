"""SQL for a payment's timeline: its provider statuses, its transitions (its creation first) and its
ledger lines, merged in the order they happened by one statement (one snapshot, so a transition never
shows without the lines it posted).

Rows written by one transaction share its timestamp; they are then ordered by TimelineKind, the order
in which a transaction writes them: the evidence, the transition it led to, the money it moved.
Within a kind, rows keep the order of their ids.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from server.domain.payment_states import INITIAL_PAYMENT_STATE, PaymentState
from server.domain.refund_states import INITIAL_REFUND_STATE, RefundState


class TimelineKind(enum.IntEnum):
    """The kinds of timeline entries, in the order they are listed when their times are equal."""

    PROVIDER_STATUS = 0
    TRANSITION = 1
    LEDGER_LINE = 2
    #: a step of one of the payment's refunds (its creation, then each transition); last among equals,
    #: as page tokens keep the numbers above
    REFUND_STEP = 3


@dataclass(frozen=True)
class Transition:
    #: None for the payment's creation, the transition into its initial state
    from_state: PaymentState | None
    to_state: PaymentState
    cause: str
    evidence_ref: str
    #: the internal event ("CORRECTION" for a correction); empty for the creation
    event: str = ""
    #: who approved a correction that needed a person
    approved_by: str | None = None


@dataclass(frozen=True)
class ProviderStatus:
    provider: str
    #: verbatim, as the provider said it
    status: str
    evidence_ref: str


@dataclass(frozen=True)
class LedgerLine:
    entry_id: uuid.UUID
    account: str
    #: signed: debits positive, credits negative
    amount: Decimal
    currency_code: str


@dataclass(frozen=True)
class RefundStep:
    """A refund of the payment recorded (from_state None) or moved."""

    refund_id: uuid.UUID
    from_state: RefundState | None
    to_state: RefundState
    cause: str
    evidence_ref: str
    event: str
    amount: Decimal
    currency_code: str


#: Where an entry stands in the timeline's order: (occurred_at, kind, row id, ledger entry id, line number).
Position = tuple[datetime, int, int, uuid.UUID, int]


@dataclass(frozen=True)
class TimelineEntry:
    occurred_at: datetime
    event: Transition | ProviderStatus | LedgerLine | RefundStep
    position: Position


_NO_ENTRY = uuid.UUID(int=0)

_TIMELINE = f"""
SELECT kind, occurred_at, coalesce(row_id, 0) AS row_key, coalesce(entry_id, '{_NO_ENTRY}'::uuid) AS entry_key,
       line_number, from_state, to_state, cause, evidence_ref, provider, status,
       entry_id, account, amount, currency_code, event, approved_by
FROM (
    SELECT {TimelineKind.PROVIDER_STATUS.value} AS kind, observed_at AS occurred_at, id AS row_id,
           NULL::uuid AS entry_id, 0::smallint AS line_number,
           NULL::text AS from_state, NULL::text AS to_state, NULL::text AS cause, evidence_ref,
           provider, status, NULL::text AS account, NULL::numeric AS amount, NULL::text AS currency_code,
           NULL::text AS event, NULL::text AS approved_by
    FROM provider_statuses WHERE payment_id = $1
    UNION ALL
    SELECT {TimelineKind.TRANSITION.value}, created_at, 0, NULL, 0,
           NULL, '{INITIAL_PAYMENT_STATE.value}', 'api.create_payment', 'idempotency_key:' || idempotency_key,
           NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM payments WHERE id = $1
    UNION ALL
    SELECT {TimelineKind.TRANSITION.value}, occurred_at, id, NULL, 0,
           from_state, to_state, cause, evidence_ref, NULL, NULL, NULL, NULL, NULL, event, approved_by
    FROM payment_transitions WHERE payment_id = $1
    UNION ALL
    SELECT {TimelineKind.LEDGER_LINE.value}, e.posted_at, NULL, e.id, l.line_number,
           NULL, NULL, NULL, NULL, NULL, NULL, l.account, l.amount, l.currency_code, NULL, NULL
    FROM ledger_entries e JOIN ledger_lines l ON l.entry_id = e.id WHERE e.payment_id = $1
    UNION ALL
    SELECT {TimelineKind.REFUND_STEP.value}, created_at, 0, id, 0,
           NULL, '{INITIAL_REFUND_STATE.value}', 'api.refund_payment', 'idempotency_key:' || idempotency_key,
           NULL, NULL, NULL, amount, currency_code, NULL, NULL
    FROM refunds WHERE payment_id = $1
    UNION ALL
    SELECT {TimelineKind.REFUND_STEP.value}, t.occurred_at, t.id, r.id, 0,
           t.from_state, t.to_state, t.cause, t.evidence_ref, NULL, t.provider_status, NULL, r.amount,
           r.currency_code, t.event, NULL
    FROM refund_transitions t JOIN refunds r ON r.id = t.refund_id WHERE r.payment_id = $1
) AS timeline
WHERE $2::timestamptz IS NULL
   OR (occurred_at, kind, coalesce(row_id, 0), coalesce(entry_id, '{_NO_ENTRY}'::uuid), line_number)
      > ($2, $3, $4, $5, $6)
ORDER BY occurred_at, kind, row_key, entry_key, line_number
LIMIT $7
"""


def _event(row: asyncpg.Record) -> Transition | ProviderStatus | LedgerLine | RefundStep:
    kind = TimelineKind(row["kind"])
    if kind is TimelineKind.REFUND_STEP:
        return RefundStep(
            row["entry_id"],
            None if row["from_state"] is None else RefundState(row["from_state"]),
            RefundState(row["to_state"]),
            row["cause"],
            row["evidence_ref"],
            row["event"] or "",
            row["amount"],
            row["currency_code"],
        )
    if kind is TimelineKind.TRANSITION:
        return Transition(
            None if row["from_state"] is None else PaymentState(row["from_state"]),
            PaymentState(row["to_state"]),
            row["cause"],
            row["evidence_ref"],
            row["event"] or "",
            row["approved_by"],
        )
    if kind is TimelineKind.PROVIDER_STATUS:
        return ProviderStatus(row["provider"], row["status"], row["evidence_ref"])
    return LedgerLine(row["entry_id"], row["account"], row["amount"], row["currency_code"])


async def read_entries(
    connection: asyncpg.Connection, payment_id: uuid.UUID, after: Position | None, limit: int, *, timeout_s: float
) -> list[TimelineEntry]:
    """At most `limit` entries of the payment's timeline, from the first one after `after` (None: from its start)."""
    rows = await connection.fetch(
        _TIMELINE, payment_id, *(after or (None, None, None, None, None)), limit, timeout=timeout_s
    )
    return [
        TimelineEntry(
            row["occurred_at"],
            _event(row),
            (row["occurred_at"], row["kind"], row["row_key"], row["entry_key"], row["line_number"]),
        )
        for row in rows
    ]
