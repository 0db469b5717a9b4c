"""Claiming an idempotency key inside a transaction (orders and legs; payments do it in one statement)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from server.domain.errors import IdempotencyKeyReused


@dataclass(frozen=True)
class ClaimedKey:
    #: the resource the key stands for: new if `replayed` is False, the first request's otherwise
    resource_id: uuid.UUID
    replayed: bool


async def claim_key(
    connection: asyncpg.Connection,
    client_id: str,
    idempotency_key: str,
    operation: str,
    fingerprint: bytes,
    resource_id: uuid.UUID,
) -> ClaimedKey:
    """Record the key for `resource_id`, or return what it already stands for.

    A concurrent claim of the same key waits on the unique index until the first commits. The same
    key with another operation or other parameters raises IdempotencyKeyReused.
    """
    inserted = await connection.fetchval(
        "INSERT INTO idempotency_keys (client_id, idempotency_key, operation, request_fingerprint, resource_id)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (client_id, idempotency_key) DO NOTHING RETURNING resource_id",
        client_id,
        idempotency_key,
        operation,
        fingerprint,
        resource_id,
    )
    if inserted is not None:
        return ClaimedKey(inserted, replayed=False)
    existing = await connection.fetchrow(
        "SELECT operation, request_fingerprint, resource_id FROM idempotency_keys"
        " WHERE client_id = $1 AND idempotency_key = $2",
        client_id,
        idempotency_key,
    )
    if existing is None or existing["operation"] != operation or existing["request_fingerprint"] != fingerprint:
        raise IdempotencyKeyReused(idempotency_key, existing["operation"] if existing else operation)
    return ClaimedKey(existing["resource_id"], replayed=True)
