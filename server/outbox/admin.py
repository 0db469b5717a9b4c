"""Operating the outbox: list the dead letters, and send them (or an aggregate's events) round again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

DEAD_LETTERS_LISTED_MAX = 1000


@dataclass(frozen=True)
class DeadLetter:
    id: str
    topic: str
    message_key: str
    attempts: int
    last_error: str
    dead_lettered_at: datetime


async def dead_letters(connection: asyncpg.Connection) -> list[DeadLetter]:
    rows = await connection.fetch(
        "SELECT id::text, topic, message_key, attempts, coalesce(last_error, '') AS last_error, dead_lettered_at"
        " FROM outbox WHERE dead_lettered_at IS NOT NULL ORDER BY position LIMIT $1",
        DEAD_LETTERS_LISTED_MAX,
    )
    return [DeadLetter(**dict(row)) for row in rows]


async def redrive_dead_letters(connection: asyncpg.Connection) -> int:
    """Make every dead letter due again with fresh attempts; the relays pick them up (in order)."""
    result: str = await connection.execute(
        "UPDATE outbox SET dead_lettered_at = NULL, attempts = 0, next_attempt_at = now()"
        " WHERE dead_lettered_at IS NOT NULL"
    )
    return int(result.split()[-1])


async def republish(connection: asyncpg.Connection, *, message_key: str | None, since: datetime | None) -> int:
    """Publish again the events of one aggregate and/or since a time (recovery after a broker lost data).

    Copies of ids the broker still remembers are dropped by it; older ones are delivered again, and
    consumers de-duplicate them by event id.
    """
    result: str = await connection.execute(
        "UPDATE outbox SET published_at = NULL, next_attempt_at = now()"
        " WHERE published_at IS NOT NULL AND ($1::text IS NULL OR message_key = $1)"
        " AND ($2::timestamptz IS NULL OR created_at >= $2)",
        message_key,
        since,
    )
    return int(result.split()[-1])
