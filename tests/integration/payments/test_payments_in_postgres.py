"""PostgreSQL itself refuses what the Python code never writes: raw SQL must hit the same walls."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from tests.support import insert_idempotency_key


async def _insert_payment(
    connection: asyncpg.Connection,
    client_id: str,
    key: str,
    payment_id: uuid.UUID,
    *,
    amount: str = "10.00",
    currency: str = "EUR",
    state: str = "RECORDED",
) -> None:
    await connection.execute(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency_code, state)"
        " VALUES ($1, $2, $3, $4::numeric, $5, $6)",
        payment_id,
        client_id,
        key,
        amount,
        currency,
        state,
    )


@pytest.fixture
def client_id() -> str:
    return f"raw-{uuid.uuid4().hex[:12]}"


async def test_a_payment_without_its_idempotency_record_is_refused(pool: asyncpg.Pool, client_id: str) -> None:
    async with pool.acquire() as connection:
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await _insert_payment(connection, client_id, "no-such-key", uuid.uuid4())


async def test_a_second_payment_for_one_key_is_refused(pool: asyncpg.Pool, client_id: str) -> None:
    async with pool.acquire() as connection:
        first = uuid.uuid4()
        await insert_idempotency_key(connection, client_id, "k", first)
        await _insert_payment(connection, client_id, "k", first)
        with pytest.raises(asyncpg.UniqueViolationError):
            await _insert_payment(connection, client_id, "k", uuid.uuid4())


async def test_a_second_record_for_one_key_is_refused_even_when_racing(pool: asyncpg.Pool, client_id: str) -> None:
    async def insert() -> None:
        async with pool.acquire() as connection:
            await insert_idempotency_key(connection, client_id, "raced", uuid.uuid4())

    outcomes = await asyncio.gather(*(insert() for _ in range(20)), return_exceptions=True)
    assert sum(outcome is None for outcome in outcomes) == 1
    assert all(isinstance(o, asyncpg.UniqueViolationError) for o in outcomes if o is not None)


@pytest.mark.parametrize(
    ("column_values", "constraint"),
    [
        ({"amount": "0"}, "ck_payments_amount_range"),
        ({"amount": "-1.00"}, "ck_payments_amount_range"),
        ({"amount": "1.00001"}, "ck_payments_amount_scale"),
        ({"amount": "10000000000000000"}, "ck_payments_amount_range"),
        ({"currency": "eur"}, "ck_payments_currency_code_iso4217"),
        ({"state": "PAID"}, "payments_initial_state"),
        ({"state": "SUCCEEDED"}, "payments_initial_state"),
    ],
)
async def test_impossible_values_are_refused(
    pool: asyncpg.Pool, client_id: str, column_values: dict[str, str], constraint: str
) -> None:
    async with pool.acquire() as connection:
        payment_id = uuid.uuid4()
        await insert_idempotency_key(connection, client_id, "k", payment_id)
        with pytest.raises(asyncpg.CheckViolationError) as caught:
            await _insert_payment(connection, client_id, "k", payment_id, **column_values)
    assert caught.value.constraint_name == constraint


async def test_an_over_long_idempotency_key_is_refused(pool: asyncpg.Pool, client_id: str) -> None:
    async with pool.acquire() as connection:
        with pytest.raises(asyncpg.CheckViolationError):
            await insert_idempotency_key(connection, client_id, "k" * 256, uuid.uuid4())
