"""The ledger and the audit chain, attacked with raw SQL and with concurrent writers.

Tampering with a leg's audit chain, in any way, is found.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import pytest

from server.db.database import Database
from server.domain.ledger import LedgerLine, Posting
from server.services.audit import find_broken_links
from tests.support.legs import (
    close_leg,
    fill_leg,
    leg_trail,
    working_leg,
)
from tests.support.probes import broken_links
from tests.support.servers import World

# A posting written straight to PostgreSQL, as no production path does (Ballast posts through the
# set-wise moves of payment_events_repository): what the database's own walls refuse is the subject.
_INSERT_ENTRY_WITH_LINES = """
WITH entry AS (
    INSERT INTO ledger_entries (id, event_key, payment_id, description) VALUES ($1, $6, $7, $8) RETURNING id
)
INSERT INTO ledger_lines (entry_id, line_number, account, currency_code, amount)
SELECT entry.id, line_number, account, currency_code, amount
FROM entry,
     unnest($2::smallint[], $3::text[], $4::text[], $5::numeric[]) AS line(line_number, account, currency_code, amount)
"""


async def insert_posting(connection: asyncpg.Connection, posting: Posting) -> uuid.UUID:
    """Write the entry and its lines in the caller's transaction; PostgreSQL checks the balance at commit."""
    entry_id = uuid.uuid4()
    await connection.execute(
        _INSERT_ENTRY_WITH_LINES,
        entry_id,
        list(range(1, len(posting.lines) + 1)),
        [line.account for line in posting.lines],
        [line.currency_code for line in posting.lines],
        [line.amount for line in posting.lines],
        posting.event_key,
        posting.payment_id,
        posting.description,
    )
    return entry_id


def _posting(event_key: str, amount: str = "5.00") -> Posting:
    return Posting(
        event_key,
        (LedgerLine("test_cash", Decimal(amount), "EUR"), LedgerLine("test_equity", -Decimal(amount), "EUR")),
    )


async def _raw_entry(connection: asyncpg.Connection, lines: list[tuple[str, str]]) -> None:
    entry_id = uuid.uuid4()
    await connection.execute(
        "INSERT INTO ledger_entries (id, event_key) VALUES ($1, $2)", entry_id, f"raw:{uuid.uuid4()}"
    )
    for number, (account, amount) in enumerate(lines, start=1):
        await connection.execute(
            "INSERT INTO ledger_lines (entry_id, line_number, account, currency_code, amount)"
            " VALUES ($1, $2, $3, 'EUR', $4::numeric)",
            entry_id,
            number,
            account,
            amount,
        )


async def test_a_business_event_posts_once_even_when_fifty_writers_race(pool: asyncpg.Pool) -> None:
    event_key = f"race:{uuid.uuid4()}"

    async def post() -> None:
        async with pool.acquire() as connection, connection.transaction():
            await insert_posting(connection, _posting(event_key))

    outcomes = await asyncio.gather(*(post() for _ in range(50)), return_exceptions=True)
    assert sum(outcome is None for outcome in outcomes) == 1
    assert all(isinstance(o, asyncpg.UniqueViolationError) for o in outcomes if o is not None)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id WHERE e.event_key = $1",
            event_key,
        )
        == 2
    )


async def test_a_duplicate_line_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as connection:
        with pytest.raises(asyncpg.UniqueViolationError):
            async with connection.transaction():
                entry_id = await insert_posting(connection, _posting(f"dup:{uuid.uuid4()}"))
                await connection.execute(
                    "INSERT INTO ledger_lines (entry_id, line_number, account, currency_code, amount)"
                    " VALUES ($1, 1, 'test_cash', 'EUR', 5.00)",
                    entry_id,
                )


@pytest.mark.parametrize(
    ("lines", "constraint"),
    [
        ([("test_cash", "5.00"), ("test_equity", "-4.99")], "ledger_entry_balanced"),
        ([("test_cash", "5.00")], "ledger_entry_lines"),
        ([], "ledger_entry_lines"),
    ],
)
async def test_an_unbalanced_entry_is_refused_at_commit(
    pool: asyncpg.Pool, lines: list[tuple[str, str]], constraint: str
) -> None:
    async with pool.acquire() as connection:
        with pytest.raises(asyncpg.CheckViolationError) as caught:
            async with connection.transaction():
                await _raw_entry(connection, lines)
    assert caught.value.constraint_name == constraint


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_lines SET amount = amount * 2 WHERE entry_id = $1",
        "DELETE FROM ledger_lines WHERE entry_id = $1",
        "UPDATE ledger_entries SET description = 'edited' WHERE id = $1",
        "DELETE FROM ledger_entries WHERE id = $1",
    ],
)
async def test_ledger_rows_cannot_be_changed_or_removed(pool: asyncpg.Pool, statement: str) -> None:
    async with pool.acquire() as connection:
        async with connection.transaction():
            entry_id = await insert_posting(connection, _posting(f"fixed:{uuid.uuid4()}"))
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await connection.execute(statement, entry_id)


@pytest.mark.parametrize("table", ["ledger_lines", "ledger_entries", "audit_log", "payment_transitions"])
async def test_append_only_tables_cannot_be_truncated(pool: asyncpg.Pool, table: str) -> None:
    async with pool.acquire() as connection:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            async with connection.transaction():
                await connection.execute(f"TRUNCATE {table} CASCADE")


async def _audit(connection: asyncpg.Connection, aggregate_id: str, action: str) -> None:
    await connection.execute(
        "INSERT INTO audit_log (aggregate_type, aggregate_id, action, actor, payload)"
        " VALUES ('test', $1, $2, 'tester', $3)",
        aggregate_id,
        action,
        {"action": action},
    )


async def test_tampering_with_an_audit_entry_is_found_at_its_first_broken_link(pool: asyncpg.Pool) -> None:
    aggregate_id = str(uuid.uuid4())
    async with pool.acquire() as connection:
        for action in ("created", "approved", "paid", "closed"):
            await _audit(connection, aggregate_id, action)
        assert [link for link in await find_broken_links(connection) if link.aggregate_id == aggregate_id] == []
        # Someone with the power to switch the guard off edits history.
        async with connection.transaction():
            await connection.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
            await connection.execute(
                'UPDATE audit_log SET payload = \'{"action": "refunded"}\' WHERE aggregate_id = $1 AND sequence = 2',
                aggregate_id,
            )
            await connection.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
        broken = [link for link in await find_broken_links(connection) if link.aggregate_id == aggregate_id]
    assert [(link.sequence, link.reason) for link in broken] == [(2, "content does not match its hash")]


async def test_audit_chains_of_different_aggregates_grow_concurrently(pool: asyncpg.Pool) -> None:
    """No global lock: fifty aggregates append at once, each chain stays whole."""
    aggregate_ids = [str(uuid.uuid4()) for _ in range(50)]

    async def append(aggregate_id: str) -> None:
        async with pool.acquire() as connection:
            for step in range(3):
                await _audit(connection, aggregate_id, f"step-{step}")

    await asyncio.gather(*(append(aggregate_id) for aggregate_id in aggregate_ids))
    async with pool.acquire() as connection:
        broken = [link for link in await find_broken_links(connection) if link.aggregate_id in set(aggregate_ids)]
        lengths = await connection.fetch(
            "SELECT max(sequence) AS length FROM audit_log WHERE aggregate_id = ANY($1) GROUP BY aggregate_id",
            aggregate_ids,
        )
    assert broken == []
    assert {row["length"] for row in lengths} == {3}


# --------------------------------------------------------------------------------------------- the audit chain


TAMPERING = {
    "edit the actor of an entry": "UPDATE audit_log SET actor = 'someone else' WHERE {entry} AND sequence = 2",
    "edit a payload": 'UPDATE audit_log SET payload = payload || \'{{"cause": "x"}}\' WHERE {entry} AND sequence = 3',
    "re-time an entry": "UPDATE audit_log SET created_at = created_at - interval '1h' WHERE {entry} AND sequence = 3",
    "delete an entry in the middle": "DELETE FROM audit_log WHERE {entry} AND sequence = 2",
    "renumber an entry": "UPDATE audit_log SET sequence = 9 WHERE {entry} AND sequence = 3",
    "delete the newest entry": "DELETE FROM audit_log WHERE {entry} AND sequence = 4",
}


class TestAuditChain:
    @pytest.mark.parametrize("tampering", list(TAMPERING), ids=list(TAMPERING))
    async def test_tampering_with_a_legs_audit_chain_is_found(
        self, world: World, database: Database, pool: asyncpg.Pool, tampering: str
    ) -> None:
        order_id, leg_id = await working_leg(world, database)
        await fill_leg(database, leg_id, "x-1", "4")
        await fill_leg(database, leg_id, "x-2", "6")
        await close_leg(world, order_id, leg_id)
        assert await broken_links(pool, leg_id) == []
        assert (await leg_trail(pool, leg_id))[2] == 4
        entry = "aggregate_type = 'leg' AND aggregate_id = $1"
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
            await connection.execute(TAMPERING[tampering].format(entry=entry), leg_id)
            await connection.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
        assert await broken_links(pool, leg_id) != []
