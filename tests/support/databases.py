"""Databases of a test's own, and rows written behind the server's back."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from sqlalchemy.engine import make_url

from server.db.engine import asyncpg_dsn


async def _admin(url: str, sql: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the server of `server_url`, dropped on exit; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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
