"""What a spec reads back from the database to see what happened (never how it happened)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable

import asyncpg

from server.services.audit import find_broken_links


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


async def key_exists(pool: asyncpg.Pool, client_id: str, key: str) -> bool:
    """Whether the client's idempotency key is taken."""
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE client_id = $1 AND idempotency_key = $2", client_id, key
        )
    )


async def broken_links(pool: asyncpg.Pool, aggregate_id: str) -> list[tuple[int, str]]:
    """Where the aggregate's audit chain is broken: (sequence, reason) of each broken link."""
    async with pool.acquire() as connection:
        links = await find_broken_links(connection)
    return [(link.sequence, link.reason) for link in links if link.aggregate_id == aggregate_id]


async def payment_trail(pool: asyncpg.Pool, payment_id: uuid.UUID) -> tuple[str, int, int, int, int]:
    """(state, transitions, ledger entries, outbox events, audit entries) of a payment."""
    row = await pool.fetchrow(
        "SELECT (SELECT state FROM payments WHERE id = $1) AS state,"
        " (SELECT count(*) FROM payment_transitions WHERE payment_id = $1) AS transitions,"
        " (SELECT count(*) FROM ledger_entries WHERE payment_id = $1) AS entries,"
        " (SELECT count(*) FROM outbox WHERE message_key = $2 OR message_key LIKE 'payment:' || $2 || ':%') AS events,"
        " (SELECT count(*) FROM audit_log WHERE aggregate_type = 'payment' AND aggregate_id = $2) AS audits",
        payment_id,
        str(payment_id),
    )
    return row["state"], row["transitions"], row["entries"], row["events"], row["audits"]


async def payment_rows_of(pool: asyncpg.Pool, client_id: str) -> tuple[int, int]:
    """(payments, idempotency keys) the client has in the database."""
    payments = await count_rows(pool, "SELECT count(*) FROM payments WHERE client_id = $1", client_id)
    keys = await count_rows(pool, "SELECT count(*) FROM idempotency_keys WHERE client_id = $1", client_id)
    return payments, keys


async def payments_of(pool: asyncpg.Pool, client_id: str) -> int:
    """How many payments the client has."""
    return await count_rows(pool, "SELECT count(*) FROM payments WHERE client_id = $1", client_id)


async def payments_with_key(pool: asyncpg.Pool, client_id: str, key: str) -> int:
    """How many payments the client has under the idempotency key (one at most, whatever happened)."""
    return await count_rows(
        pool, "SELECT count(*) FROM payments WHERE client_id = $1 AND idempotency_key = $2", client_id, key
    )


async def payment_moves(pool: asyncpg.Pool, payment_id: uuid.UUID) -> list[tuple[str, str]]:
    """The payment's transitions, (from, to), in the order they were made."""
    rows = await pool.fetch(
        "SELECT from_state, to_state FROM payment_transitions WHERE payment_id = $1 ORDER BY id", payment_id
    )
    return [(row["from_state"], row["to_state"]) for row in rows]


async def allowed_payment_moves(pool: asyncpg.Pool) -> set[tuple[str, str]]:
    """The moves PostgreSQL lets a payment make (the table written from the domain's machine)."""
    rows = await pool.fetch("SELECT from_state, to_state FROM payment_state_transitions")
    return {(row["from_state"], row["to_state"]) for row in rows}


async def provider_statuses(pool: asyncpg.Pool, payment_id: uuid.UUID) -> list[str]:
    """The provider's statuses kept as evidence for the payment, in the order they were applied."""
    rows = await pool.fetch("SELECT status FROM provider_statuses WHERE payment_id = $1 ORDER BY id", payment_id)
    return [row["status"] for row in rows]


#: The simulator's words for a payment the provider has and has not decided (a webhook's `pending`).
STEP_WORDS = frozenset({"pending", "processing", "requires_action"})


async def claim_waits(pool: asyncpg.Pool, payment_id: uuid.UUID) -> bool:
    """Whether a webhook claimed an outcome after the webhook that moved the payment to PENDING (if one
    did): such a claim must leave the payment due for a check with the provider's API."""
    words = await provider_statuses(pool, payment_id)
    moved = next((n for n, word in enumerate(words) if word in STEP_WORDS), -1)
    return any(word not in STEP_WORDS and n > moved for n, word in enumerate(words))


async def processed_events(pool: asyncpg.Pool, consumer_group: str, event_ids: Iterable[str]) -> Counter[str]:
    """How many times each of the events was claimed by the consumer group (once at most, insert-first)."""
    rows = await pool.fetch(
        "SELECT event_id FROM processed_events WHERE consumer_group = $1 AND event_id = ANY($2::text[])",
        consumer_group,
        list(event_ids),
    )
    return Counter(row["event_id"] for row in rows)


async def kept_deliveries(pool: asyncpg.Pool, provider: str, event_ids: Iterable[str]) -> Counter[str]:
    """How many deliveries of each of the events the provider made are kept as evidence."""
    rows = await pool.fetch(
        "SELECT event_id FROM webhook_deliveries WHERE provider = $1 AND event_id = ANY($2::text[])",
        provider,
        list(event_ids),
    )
    return Counter(row["event_id"] for row in rows)


async def sessions_waiting_for(connection: asyncpg.Connection, pid: int) -> int:
    """How many sessions wait for a lock the session `pid` holds. Fresh even inside a transaction: PostgreSQL
    keeps the sessions pg_stat_activity lists as a transaction first read them, so a session that connected
    since would be missed unless it is told to forget them."""
    await connection.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await connection.fetchval("SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid)
    )
