"""PostgreSQL refuses impossible legs whatever writes them: raw SQL meets the same walls as the API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from server.db import orders_repository
from server.domain.order_legs import LEG_MACHINE
from server.domain.orders import LegSpec, OrderType, Side
from server.domain.payment_states import PAYMENT_MACHINE
from server.domain.state_machine import StateMachine
from tests.support import insert_idempotency_key


async def _leg(pool: asyncpg.Pool, quantity: str = "10") -> uuid.UUID:
    client_id, key, order_id = f"raw-{uuid.uuid4().hex[:8]}", "k", uuid.uuid4()
    async with pool.acquire() as connection, connection.transaction():
        await insert_idempotency_key(connection, client_id, key, order_id)
        spec = LegSpec("AAPL", Side.BUY, Decimal(quantity), OrderType.MARKET, None, "USD")
        await orders_repository.insert_order(connection, order_id, client_id, key, "", (spec,))
    return await pool.fetchval("SELECT id FROM legs WHERE order_id = $1", order_id)


async def _transition(pool: asyncpg.Pool, leg_id: uuid.UUID, from_state: str, to_state: str) -> None:
    await pool.execute(
        "INSERT INTO leg_transitions (leg_id, from_state, to_state, cause, evidence_ref)"
        " VALUES ($1, $2, $3, 'sql', 'raw')",
        leg_id,
        from_state,
        to_state,
    )


async def _fill(pool: asyncpg.Pool, leg_id: uuid.UUID, execution_id: str, quantity: str, price: str = "10") -> None:
    await pool.execute(
        "INSERT INTO leg_fills (leg_id, execution_id, quantity, price, fill_time, evidence_ref)"
        " VALUES ($1, $2, $3::numeric, $4::numeric, $5, 'raw')",
        leg_id,
        execution_id,
        quantity,
        price,
        datetime.now(UTC),
    )


@pytest.mark.parametrize(
    ("table", "machine"), [("payment_state_transitions", PAYMENT_MACHINE), ("leg_state_transitions", LEG_MACHINE)]
)
async def test_the_database_allows_exactly_the_domain_transitions(
    pool: asyncpg.Pool,
    table: str,
    machine: StateMachine,  # type: ignore[type-arg]
) -> None:
    rows = await pool.fetch(f"SELECT from_state, to_state FROM {table}")
    assert {(row["from_state"], row["to_state"]) for row in rows} == set(machine.pairs())


async def test_an_illegal_leg_transition_is_refused(pool: asyncpg.Pool) -> None:
    leg_id = await _leg(pool)
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await _transition(pool, leg_id, "SUBMITTED", "FILLED")
    assert caught.value.constraint_name == "leg_transition_allowed"
    assert await pool.fetchval("SELECT state FROM legs WHERE id = $1", leg_id) == "SUBMITTED"


@pytest.mark.parametrize("assignment", ["state = 'FILLED'", "filled_quantity = 1", "fill_notional = 5"])
async def test_a_leg_changes_state_and_fills_only_through_evidence(pool: asyncpg.Pool, assignment: str) -> None:
    leg_id = await _leg(pool)
    with pytest.raises(asyncpg.CheckViolationError, match="leg_transitions and leg_fills"):
        await pool.execute(f"UPDATE legs SET {assignment} WHERE id = $1", leg_id)


async def test_a_leg_is_born_submitted_and_unfilled(pool: asyncpg.Pool) -> None:
    leg_id = await _leg(pool)
    order_id = await pool.fetchval("SELECT order_id FROM legs WHERE id = $1", leg_id)
    with pytest.raises(asyncpg.CheckViolationError, match="starts SUBMITTED"):
        await pool.execute(
            "INSERT INTO legs (id, order_id, position, instrument_symbol, side, order_type, quantity,"
            " currency_code, state) VALUES ($1, $2, 2, 'AAPL', 'BUY', 'MARKET', 1, 'USD', 'FILLED')",
            uuid.uuid4(),
            order_id,
        )


async def test_only_a_working_leg_takes_fills(pool: asyncpg.Pool) -> None:
    leg_id = await _leg(pool)
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await _fill(pool, leg_id, "early", "1")
    assert caught.value.constraint_name == "leg_fills_working_leg"


async def test_fills_add_up_exactly_apply_once_and_never_overfill(pool: asyncpg.Pool) -> None:
    leg_id = await _leg(pool, quantity="10")
    await _transition(pool, leg_id, "SUBMITTED", "PENDING")
    await _fill(pool, leg_id, "a", "3.333333333333", "101.000000000001")
    await _fill(pool, leg_id, "b", "6.666666666667", "99.5")
    row = await pool.fetchrow("SELECT filled_quantity, fill_notional FROM legs WHERE id = $1", leg_id)
    assert row["filled_quantity"] == Decimal("10.000000000000")
    assert row["fill_notional"] == Decimal("3.333333333333") * Decimal("101.000000000001") + Decimal(
        "6.666666666667"
    ) * Decimal("99.5")
    with pytest.raises(asyncpg.UniqueViolationError):
        await _fill(pool, leg_id, "a", "0.000000000001")
    with pytest.raises(asyncpg.CheckViolationError, match="ck_legs_filled_within_quantity"):
        await _fill(pool, leg_id, "c", "0.000000000001")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute("DELETE FROM leg_fills WHERE leg_id = $1", leg_id)


@pytest.mark.parametrize(
    ("assignment", "constraint"),
    [
        ("side = 'SELL'", "legs_terms_immutable"),
        ("instrument_symbol = 'MSFT'", "legs_terms_immutable"),
        ("currency_code = 'EUR'", "legs_terms_immutable"),
        ("quantity = 11", "legs_terms_by_modification"),
    ],
)
async def test_a_legs_terms_do_not_change_behind_its_back(pool: asyncpg.Pool, assignment: str, constraint: str) -> None:
    leg_id = await _leg(pool)
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await pool.execute(f"UPDATE legs SET {assignment} WHERE id = $1", leg_id)
    assert caught.value.constraint_name == constraint
