"""Writing to the outbox and the audit chain, always inside the caller's transaction.

An event is stored in the same transaction as the change it announces, so there is never a change
without its event nor an event without its change. Relaying them is the relay's job.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

INSERT_OUTBOX = "INSERT INTO outbox (id, topic, message_key, payload) VALUES ($1, $2, $3, $4)"
# sequence, prev_hash, hash and created_at are set by the audit_log_chain trigger.
INSERT_AUDIT = (
    "INSERT INTO audit_log (aggregate_type, aggregate_id, action, actor, payload) VALUES ($1, $2, $3, $4, $5)"
)


async def write_event(
    connection: asyncpg.Connection, topic: str, message_key: str, payload: dict[str, Any]
) -> uuid.UUID:
    """Queue an event; its id is the message id a publisher de-duplicates on."""
    event_id = uuid.uuid4()
    await connection.execute(INSERT_OUTBOX, event_id, topic, message_key, payload | {"event_id": str(event_id)})
    return event_id


async def append_audit(
    connection: asyncpg.Connection,
    aggregate_type: str,
    aggregate_id: str,
    action: str,
    actor: str,
    payload: dict[str, Any],
) -> None:
    """Append to the aggregate's chain. Callers hold the aggregate's row lock, so chains never race."""
    await connection.execute(INSERT_AUDIT, aggregate_type, aggregate_id, action, actor, payload)
