"""SQL for the instructions queued for the venue (modify, cancel): queued in the transaction that decides
them, claimed by the instruction sender with a lease, sent under their own id as the venue's
idempotency key, and done once the venue has them (or has refused them, or never took them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from server.domain.order_legs import INSTRUCTION_OUTCOME_LENGTH_MAX


async def queue(connection: asyncpg.Connection, leg_id: uuid.UUID, kind: str, body: dict[str, str]) -> uuid.UUID:
    """Queue an instruction in the caller's transaction; its id, the venue's idempotency key for it."""
    instruction_id = uuid.uuid4()
    await connection.execute(
        "INSERT INTO venue_instructions (id, leg_id, kind, body) VALUES ($1, $2, $3, $4)",
        instruction_id,
        leg_id,
        kind,
        body,
    )
    return instruction_id


@dataclass(frozen=True)
class DueInstruction:
    """An instruction claimed for sending, leased to the sender that claimed it."""

    id: uuid.UUID
    leg_id: uuid.UUID
    kind: str
    body: dict[str, Any]
    #: attempts so far, this one included
    attempts: int
    #: the venue's id for the leg's order, when the venue named one
    venue_order_id: str | None


_CLAIM = """
WITH due AS (
    SELECT id FROM venue_instructions
    WHERE done_at IS NULL AND next_attempt_at <= now() AND ($2::uuid[] IS NULL OR leg_id = ANY($2))
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE venue_instructions i SET next_attempt_at = now() + make_interval(secs => $3::float8), attempts = attempts + 1
FROM due, legs l
WHERE i.id = due.id AND l.id = i.leg_id
RETURNING i.id, i.leg_id, i.kind, i.body, i.attempts, l.venue_order_id
"""


async def claim_due(
    connection: asyncpg.Connection, limit: int, leg_ids: list[uuid.UUID] | None, lease_s: float
) -> list[DueInstruction]:
    """At most `limit` instructions due (of these legs only, unless None), each leased for `lease_s` and
    its attempts counted."""
    rows = await connection.fetch(_CLAIM, limit, leg_ids, lease_s)
    return [
        DueInstruction(row["id"], row["leg_id"], row["kind"], row["body"], row["attempts"], row["venue_order_id"])
        for row in rows
    ]


async def finish(connection: asyncpg.Connection | asyncpg.Pool, instruction_id: uuid.UUID, outcome: str) -> None:
    """The instruction is done: sent, refused, or never taken (`outcome` says which)."""
    await connection.execute(
        "UPDATE venue_instructions SET done_at = now(), outcome = $2 WHERE id = $1",
        instruction_id,
        outcome[:INSTRUCTION_OUTCOME_LENGTH_MAX],
    )


async def retry_in(connection: asyncpg.Connection, instruction_id: uuid.UUID, delay_s: float) -> None:
    """The instruction's next attempt, `delay_s` from now."""
    await connection.execute(
        "UPDATE venue_instructions SET next_attempt_at = now() + make_interval(secs => $2::float8) WHERE id = $1",
        instruction_id,
        delay_s,
    )
