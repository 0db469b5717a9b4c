"""SQL for applying evidence to payments, set-wise: a few round trips whatever the number of payments.

Applying a batch of evidence (server/services/payment_events.py) takes at most four statements: lock
the payments and keep each provider's word as evidence (lock_and_observe); count the corrections of
those the evidence would correct (corrections_so_far); note the provider's words beside their payments
and make due those a webhook's claim needs checked (note_and_confirm); write every move with all it
implies (insert_moves). Each statement binds column arrays that its function builds from typed records.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from server.db.ledger_repository import posting_rows
from server.domain import events
from server.domain.corrections import CORRECTION_EVENT
from server.domain.ledger import Posting
from server.domain.payment_states import PaymentState


@dataclass(frozen=True)
class Observation:
    """A piece of evidence about a payment: the provider's word in it, kept as evidence when there is one."""

    payment_id: uuid.UUID
    #: the provider and its verbatim status; None when the evidence is not a provider's word
    provider: str | None = None
    status: str | None = None
    evidence_ref: str | None = None


@dataclass(frozen=True)
class LockedPayment:
    """A payment as it was when its row lock was granted."""

    id: uuid.UUID
    state: PaymentState
    client_id: str
    amount: Decimal
    currency_code: str
    provider_payment_id: str | None
    #: what its own refunds count against it (succeeded, or may still succeed)
    refund_held: Decimal = Decimal(0)
    #: what its own refunds returned
    refunded: Decimal = Decimal(0)


# The payments locked (in id order, so that two set-wise appliers never deadlock) and each provider's
# word kept as evidence, fitting or not, in one round trip; the payments as they were. A payment that
# does not exist is not returned, and nothing is written for it.
_LOCK_AND_OBSERVE = """
WITH given AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])
        AS g(payment_id, provider, status, evidence_ref)
), locked AS (
    SELECT id, state, client_id, amount, currency_code, provider_payment_id, refund_held, refunded FROM payments
    WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
), observed AS (
    INSERT INTO provider_statuses (payment_id, provider, status, evidence_ref)
    SELECT g.payment_id, g.provider, g.status, g.evidence_ref FROM given g JOIN locked l ON l.id = g.payment_id
    WHERE g.status IS NOT NULL
)
SELECT id, state, client_id, amount, currency_code, provider_payment_id, refund_held, refunded FROM locked
"""


async def lock_and_observe(
    connection: asyncpg.Connection, observations: Sequence[Observation]
) -> dict[uuid.UUID, LockedPayment]:
    """The payments observed, locked until the caller's transaction ends, by id; each provider's word kept."""
    rows = await connection.fetch(
        _LOCK_AND_OBSERVE,
        [observation.payment_id for observation in observations],
        [observation.provider for observation in observations],
        [observation.status for observation in observations],
        [observation.evidence_ref for observation in observations],
    )
    return {
        row["id"]: LockedPayment(
            row["id"],
            PaymentState(row["state"]),
            row["client_id"],
            row["amount"],
            row["currency_code"],
            row["provider_payment_id"],
            row["refund_held"],
            row["refunded"],
        )
        for row in rows
    }


_CORRECTIONS_SO_FAR = (
    "SELECT payment_id, count(*) AS corrections FROM payment_transitions"
    f" WHERE payment_id = ANY($1::uuid[]) AND event = '{CORRECTION_EVENT}' GROUP BY payment_id"
)


async def corrections_so_far(connection: asyncpg.Connection, payment_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """How many times each payment was corrected (a payment never corrected is not listed); no round
    trip for no payments."""
    if not payment_ids:
        return {}
    rows = await connection.fetch(_CORRECTIONS_SO_FAR, list(payment_ids))
    return {row["payment_id"]: int(row["corrections"]) for row in rows}


@dataclass(frozen=True)
class Note:
    """What to note beside a payment: the provider's latest status and its id for the payment (each
    None to keep the one noted), and whether a webhook's claim makes the payment due for a check now."""

    payment_id: uuid.UUID
    status: str | None
    provider_payment_id: str | None
    confirm: bool


# Fitting provider words noted beside their payments (the latest status; the provider's id, kept the
# first time it is named), and the payments whose webhooks claimed news made due for a check with the
# provider's API now. One UPDATE, so a payment is written once.
_NOTE_AND_CONFIRM = """
UPDATE payments p
SET provider_status = coalesce(n.status, p.provider_status),
    provider_payment_id = coalesce(p.provider_payment_id, n.provider_payment_id),
    next_check_at = CASE WHEN n.confirm THEN now() ELSE p.next_check_at END
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bool[]) AS n(id, status, provider_payment_id, confirm)
WHERE p.id = n.id
"""


async def note_and_confirm(connection: asyncpg.Connection, notes: Sequence[Note]) -> None:
    """Write the notes, each payment at most once; no round trip for no notes."""
    if not notes:
        return
    await connection.execute(
        _NOTE_AND_CONFIRM,
        [note.payment_id for note in notes],
        [note.status for note in notes],
        [note.provider_payment_id for note in notes],
        [note.confirm for note in notes],
    )


@dataclass(frozen=True)
class Move:
    """A payment's transition with everything it writes: the ledger entries its postings make (one per
    posting, under `entry_ids`), their outbox events, its own outbox event and its audit entry."""

    payment: LockedPayment
    to_state: PaymentState
    #: the internal event (a PaymentEvent's value, or CORRECTION_EVENT)
    event: str
    cause: str
    evidence_ref: str
    postings: tuple[Posting, ...]
    entry_ids: tuple[uuid.UUID, ...]
    #: the person who approved a correction that needs one
    approved_by: str | None = None

    @classmethod
    def of(
        cls,
        payment: LockedPayment,
        to_state: PaymentState,
        event: str,
        cause: str,
        evidence_ref: str,
        postings: Sequence[Posting],
        approved_by: str | None = None,
    ) -> Move:
        """The move, its ledger entries given new ids."""
        entry_ids = tuple(uuid.uuid4() for _ in postings)
        return cls(payment, to_state, event, cause, evidence_ref, tuple(postings), entry_ids, approved_by)

    def state_changed(self) -> dict[str, Any]:
        """Its outbox event's payload, which is its audit entry's too."""
        payment = self.payment
        return events.payment_state_changed(
            payment.id,
            payment.state.value,
            self.to_state.value,
            self.event,
            self.cause,
            self.evidence_ref,
            client_id=payment.client_id,
            amount=payment.amount,
            currency_code=payment.currency_code,
        )


# Moves, in one round trip: the transitions (whose trigger moves each payment), the ledger entries and
# lines they imply (balanced per entry, checked at commit), their outbox events and the audit entries.
_INSERT_MOVES = """
WITH moved AS (
    INSERT INTO payment_transitions (payment_id, from_state, to_state, event, cause, evidence_ref, approved_by)
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
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
SELECT 'payment', a.payment_id::text, a.action, a.actor, a.payload
FROM unnest($1::uuid[], $21::text[], $5::text[], $22::jsonb[]) AS a(payment_id, action, actor, payload)
"""


async def insert_moves(connection: asyncpg.Connection, moves: Sequence[Move]) -> None:
    """Write the moves, each payment at most once, in the caller's transaction; no round trip for none.

    Each posting is checked to balance first; PostgreSQL checks again at commit. A move's outbox
    events are its postings' (ledger.posted) and then its own (payments.state_changed), in that order.
    """
    if not moves:
        return
    changes = [move.state_changed() for move in moves]
    announced: list[tuple[str, str, dict[str, Any]]] = []
    every_entry: list[tuple[uuid.UUID, Posting]] = []
    for move, change in zip(moves, changes, strict=True):
        entries = list(zip(move.entry_ids, move.postings, strict=True))
        every_entry += entries
        announced += posting_rows(entries).announced
        announced.append((events.PAYMENT_STATE_CHANGED, str(move.payment.id), change))
    event_ids = [uuid.uuid4() for _ in announced]
    await connection.execute(
        _INSERT_MOVES,
        [move.payment.id for move in moves],
        [move.payment.state.value for move in moves],
        [move.to_state.value for move in moves],
        [move.event for move in moves],
        [move.cause for move in moves],
        [move.evidence_ref for move in moves],
        [move.approved_by for move in moves],
        *posting_rows(every_entry).arguments,
        event_ids,
        [topic for topic, _, _ in announced],
        [key for _, key, _ in announced],
        [payload | {"event_id": str(event_id)} for event_id, (_, _, payload) in zip(event_ids, announced, strict=True)],
        [events.PAYMENT_STATE_CHANGED] * len(moves),
        changes,
    )
