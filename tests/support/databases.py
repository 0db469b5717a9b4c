"""Databases of a test's own, and rows written behind the server's back."""

from __future__ import annotations

import hashlib
import uuid

import asyncpg

from server.db.scratch import scratch_database as scratch_database


async def insert_idempotency_key(
    connection: asyncpg.Connection, client_id: str, key: str, resource_id: uuid.UUID | None = None
) -> None:
    """An idempotency record written directly; inside an open transaction it holds the key against the server."""
    await connection.execute(
        "INSERT INTO idempotency_keys (client_id, idempotency_key, operation, request_fingerprint, resource_id)"
        " VALUES ($1, $2, 'payments.create', $3, $4)",
        client_id,
        key,
        hashlib.sha256(key.encode()).digest(),
        resource_id or uuid.uuid4(),
    )
