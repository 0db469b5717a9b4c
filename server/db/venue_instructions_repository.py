"""SQL for the instructions queued for the venue (modify, cancel): queued in the transaction that decides
them, sent under their own id as the venue's idempotency key."""

from __future__ import annotations

import uuid

import asyncpg


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
