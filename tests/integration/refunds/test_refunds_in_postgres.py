"""PostgreSQL itself keeps a payment's refunds within what it captured, whatever SQL is written: raw
statements, racing or not, hit the same walls as the Python code (server/db/invariants.sql, section 8)."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import pytest

from tests.support import insert_idempotency_key


async def _captured(connection: asyncpg.Connection, client_id: str, amount: str = "10.00") -> uuid.UUID:
    """A payment written raw and moved RECORDED -> SUCCEEDED by an appended transition."""
    payment_id = uuid.uuid4()
    await insert_idempotency_key(connection, client_id, f"pay-{payment_id}", payment_id)
    await connection.execute(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency_code, state)"
        " VALUES ($1, $2, $3, $4::numeric, 'EUR', 'RECORDED')",
        payment_id,
        client_id,
        f"pay-{payment_id}",
        amount,
    )
    await _move_payment(connection, payment_id, "RECORDED", "SUCCEEDED", "SUCCEEDED")
    return payment_id


async def _move_payment(
    connection: asyncpg.Connection, payment_id: uuid.UUID, from_state: str, to_state: str, event: str
) -> None:
    await connection.execute(
        "INSERT INTO payment_transitions (payment_id, from_state, to_state, event, cause, evidence_ref)"
        " VALUES ($1, $2, $3, $4, 'raw', 'raw')",
        payment_id,
        from_state,
        to_state,
        event,
    )


async def _refund(
    connection: asyncpg.Connection,
    client_id: str,
    payment_id: uuid.UUID,
    amount: str,
    *,
    currency: str = "EUR",
    state: str = "RECORDED",
) -> uuid.UUID:
    refund_id = uuid.uuid4()
    await insert_idempotency_key(connection, client_id, f"refund-{refund_id}", refund_id)
    await connection.execute(
        "INSERT INTO refunds (id, payment_id, client_id, idempotency_key, amount, currency_code, state)"
        " VALUES ($1, $2, $3, $4, $5::numeric, $6, $7)",
        refund_id,
        payment_id,
        client_id,
        f"refund-{refund_id}",
        amount,
        currency,
        state,
    )
    return refund_id


async def _move_refund(connection: asyncpg.Connection, refund_id: uuid.UUID, from_state: str, to_state: str) -> None:
    await connection.execute(
        "INSERT INTO refund_transitions (refund_id, from_state, to_state, event, cause, evidence_ref)"
        " VALUES ($1, $2, $3, $3, 'raw', 'raw')",
        refund_id,
        from_state,
        to_state,
    )


async def _totals(connection: asyncpg.Connection, payment_id: uuid.UUID) -> tuple[Decimal, Decimal]:
    row = await connection.fetchrow("SELECT refund_held, refunded FROM payments WHERE id = $1", payment_id)
    assert row is not None
    return row["refund_held"], row["refunded"]


@pytest.fixture
def client_id() -> str:
    return f"raw-{uuid.uuid4().hex[:12]}"


async def test_refunds_never_hold_more_than_the_payment_captured(pool: asyncpg.Pool, client_id: str) -> None:
    async with pool.acquire() as connection:
        payment_id = await _captured(connection, client_id)
        await _refund(connection, client_id, payment_id, "6.00")
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await _refund(connection, client_id, payment_id, "4.01")
        assert refused.value.constraint_name == "ck_payments_refunds_within_amount"
        await _refund(connection, client_id, payment_id, "4.00")
        assert await _totals(connection, payment_id) == (Decimal("10.00"), Decimal(0))


async def test_fifty_racing_raw_refunds_never_hold_more_than_the_payment_captured(
    pool: asyncpg.Pool, client_id: str
) -> None:
    async with pool.acquire() as connection:
        payment_id = await _captured(connection, client_id, "10.00")

    async def one() -> bool:
        async with pool.acquire() as connection, connection.transaction():
            try:
                await _refund(connection, client_id, payment_id, "0.30")
            except asyncpg.CheckViolationError:
                return False
            return True

    taken = await asyncio.gather(*(one() for _ in range(50)))
    assert sum(taken) == 33  # 33 x 0.30 = 9.90; a 34th would make 10.20
    async with pool.acquire() as connection:
        assert await _totals(connection, payment_id) == (Decimal("9.90"), Decimal(0))


@pytest.mark.parametrize("case", ["not captured", "another currency", "another client"])
async def test_a_refund_of_money_the_payment_did_not_capture_for_its_client_is_refused(
    pool: asyncpg.Pool, client_id: str, case: str
) -> None:
    async with pool.acquire() as connection:
        payment_id = await _captured(connection, client_id)
        if case == "not captured":
            payment_id = uuid.uuid4()
            await insert_idempotency_key(connection, client_id, f"pay-{payment_id}", payment_id)
            await connection.execute(
                "INSERT INTO payments (id, client_id, idempotency_key, amount, currency_code, state)"
                " VALUES ($1, $2, $3, 10, 'EUR', 'RECORDED')",
                payment_id,
                client_id,
                f"pay-{payment_id}",
            )
        owner = f"{client_id}-other" if case == "another client" else client_id
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await _refund(
                connection, owner, payment_id, "1.00", currency="USD" if case == "another currency" else "EUR"
            )
        assert refused.value.constraint_name == "refunds_of_captured_payment"


async def test_a_refund_starts_recorded_and_keeps_its_terms(pool: asyncpg.Pool, client_id: str) -> None:
    async with pool.acquire() as connection:
        payment_id = await _captured(connection, client_id)
        with pytest.raises(asyncpg.CheckViolationError) as born:
            await _refund(connection, client_id, payment_id, "1.00", state="SUCCEEDED")
        assert born.value.constraint_name == "refunds_initial_state"
        refund_id = await _refund(connection, client_id, payment_id, "1.00")
        with pytest.raises(asyncpg.CheckViolationError) as terms:
            await connection.execute("UPDATE refunds SET amount = 0.5 WHERE id = $1", refund_id)
        assert terms.value.constraint_name == "refunds_terms_immutable"
        with pytest.raises(asyncpg.CheckViolationError) as state:
            await connection.execute("UPDATE refunds SET state = 'SUCCEEDED' WHERE id = $1", refund_id)
        assert state.value.constraint_name == "refunds_state_by_transition"
        with pytest.raises(asyncpg.CheckViolationError) as totals:
            await connection.execute("UPDATE payments SET refunded = 1 WHERE id = $1", payment_id)
        assert totals.value.constraint_name == "payments_refunds_by_refund"


async def test_a_refund_moves_only_along_its_machine_and_its_payments_totals_move_with_it(
    pool: asyncpg.Pool, client_id: str
) -> None:
    async with pool.acquire() as connection:
        payment_id = await _captured(connection, client_id)
        failing = await _refund(connection, client_id, payment_id, "4.00")
        succeeding = await _refund(connection, client_id, payment_id, "6.00")
        await _move_refund(connection, failing, "RECORDED", "PENDING")
        await _move_refund(connection, failing, "PENDING", "FAILED")  # its hold is released
        assert await _totals(connection, payment_id) == (Decimal("6.00"), Decimal(0))
        await _move_refund(connection, succeeding, "RECORDED", "SUCCEEDED")
        assert await _totals(connection, payment_id) == (Decimal("6.00"), Decimal("6.00"))
        with pytest.raises(asyncpg.CheckViolationError) as backwards:
            await _move_refund(connection, succeeding, "SUCCEEDED", "FAILED")
        assert backwards.value.constraint_name == "refund_transition_allowed"
        with pytest.raises(asyncpg.SerializationError):
            await _move_refund(connection, failing, "PENDING", "SUCCEEDED")  # it is not PENDING any more
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute("DELETE FROM refund_transitions WHERE refund_id = $1", failing)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(
                "INSERT INTO refund_state_transitions (from_state, to_state) VALUES ('SUCCEEDED', 'FAILED')"
            )


async def test_a_payment_says_refunded_only_as_far_as_its_refunds_returned(pool: asyncpg.Pool, client_id: str) -> None:
    async with pool.acquire() as connection:
        payment_id = await _captured(connection, client_id)
        with pytest.raises(asyncpg.CheckViolationError) as unrefunded:
            await _move_payment(connection, payment_id, "SUCCEEDED", "REFUNDED", "REFUND_SUCCEEDED")
        assert unrefunded.value.constraint_name == "payment_refunded_as_refunds_say"
        first = await _refund(connection, client_id, payment_id, "3.00")
        await _move_refund(connection, first, "RECORDED", "SUCCEEDED")
        with pytest.raises(asyncpg.CheckViolationError):
            await _move_payment(connection, payment_id, "SUCCEEDED", "REFUNDED", "REFUND_SUCCEEDED")
        await _move_payment(connection, payment_id, "SUCCEEDED", "PARTIALLY_REFUNDED", "REFUNDED_IN_PART")
        rest = await _refund(connection, client_id, payment_id, "7.00")  # a partially refunded payment takes more
        await _move_refund(connection, rest, "RECORDED", "SUCCEEDED")
        await _move_payment(connection, payment_id, "PARTIALLY_REFUNDED", "REFUNDED", "REFUND_SUCCEEDED")
        assert await connection.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "REFUNDED"
