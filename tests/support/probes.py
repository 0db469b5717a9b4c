"""What a spec reads back from the database to see what happened (never how it happened)."""

from __future__ import annotations

import uuid

import asyncpg


async def count_rows(pool: asyncpg.Pool, sql: str, *arguments: object) -> int:
    """The count a `SELECT count(*) ...` statement answers."""
    return int(await pool.fetchval(sql, *arguments))


async def payment_state(pool: asyncpg.Pool, payment_id: uuid.UUID) -> str:
    return str(await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id))


async def ledger_entries_of(pool: asyncpg.Pool, payment_id: uuid.UUID) -> int:
    """How many ledger entries the payment has posted."""
    return await count_rows(pool, "SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id)


async def due_for_check(pool: asyncpg.Pool, payment_id: uuid.UUID) -> bool:
    """Whether the payment waits for a check with the provider's API now (a webhook claimed news)."""
    return bool(
        await pool.fetchval("SELECT coalesce(next_check_at <= now(), false) FROM payments WHERE id = $1", payment_id)
    )
