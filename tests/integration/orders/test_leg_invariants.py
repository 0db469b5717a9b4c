"""PostgreSQL refuses impossible legs whatever writes them: raw SQL meets the same walls as the API.

Raw SQL hits the same walls as the service: the allowed transitions cannot be extended, a leg's
history and fills cannot be rewritten or truncated, and a leg no longer working takes no fill.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from server.db import orders_repository
from server.db.database import Database
from server.domain.corrections import CORRECTIONS
from server.domain.order_legs import LEG_MACHINE
from server.domain.orders import LegSpec, OrderType, Side
from server.domain.payment_states import PAYMENT_MACHINE
from server.domain.provider_status import VenueReport
from server.domain.state_machine import StateMachine
from tests.support import insert_idempotency_key, report_to_leg
from tests.support.legs import (
    close_leg,
    filled_leg,
    leg_row,
    leg_trail,
    place_order,
)
from tests.support.servers import World


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


async def test_the_database_corrects_exactly_along_the_domain_correction_table(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch("SELECT from_state, to_state, approval FROM payment_corrections")
    assert {(row["from_state"], row["to_state"], row["approval"]) for row in rows} == {
        (current.value, correction.to_state.value, correction.approval.value)
        for (current, _), correction in CORRECTIONS.items()
    }


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


# --------------------------------------------------------------------------------------------- PostgreSQL's walls


async def _raw_fill(pool: asyncpg.Pool, leg_id: str, execution_id: str, quantity: str) -> None:
    await pool.execute(
        "INSERT INTO leg_fills (leg_id, execution_id, quantity, price, fill_time, evidence_ref)"
        " VALUES ($1, $2, $3::numeric, 10, now(), 'raw')",
        uuid.UUID(leg_id),
        execution_id,
        quantity,
    )


class TestPostgresWalls:
    @pytest.mark.parametrize(
        ("table", "pair"),
        [
            ("leg_state_transitions", ("CLOSED", "PENDING")),
            ("payment_state_transitions", ("FAILED", "SUCCEEDED")),
        ],
    )
    async def test_the_allowed_transitions_cannot_be_extended_by_sql(
        self, pool: asyncpg.Pool, table: str, pair: tuple[str, str]
    ) -> None:
        """Else one INSERT re-opens closed legs or un-fails payments for everyone; rolled back whatever happens."""
        async with pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:
                with pytest.raises(asyncpg.PostgresError):
                    await connection.execute(f"INSERT INTO {table} (from_state, to_state) VALUES ($1, $2)", *pair)
            finally:
                await transaction.rollback()

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE leg_transitions SET to_state = 'PENDING' WHERE leg_id = $1",
            "DELETE FROM leg_transitions WHERE leg_id = $1",
            "UPDATE leg_fills SET quantity = 1 WHERE leg_id = $1",
            "DELETE FROM leg_fills WHERE leg_id = $1",
            "UPDATE legs SET state = 'PENDING' WHERE id = $1",
            "UPDATE legs SET filled_quantity = 1 WHERE id = $1",
            "UPDATE legs SET fill_notional = fill_notional + 1 WHERE id = $1",
            "UPDATE legs SET quantity = 4 WHERE id = $1",
            "DELETE FROM legs WHERE id = $1",
        ],
    )
    async def test_a_legs_history_and_fills_cannot_be_rewritten(
        self, world: World, database: Database, pool: asyncpg.Pool, statement: str
    ) -> None:
        _, leg_id = await filled_leg(world, database, quantity="10")
        row, trail = await leg_row(pool, leg_id), await leg_trail(pool, leg_id)
        with pytest.raises(asyncpg.PostgresError):
            await pool.execute(statement, uuid.UUID(leg_id))
        assert await leg_row(pool, leg_id) == row
        assert await leg_trail(pool, leg_id) == trail

    @pytest.mark.parametrize(
        "table", ["leg_transitions", "leg_fills", "leg_state_transitions", "payment_state_transitions"]
    )
    async def test_leg_tables_cannot_be_truncated(self, pool: asyncpg.Pool, table: str) -> None:
        async with pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:
                with pytest.raises(asyncpg.PostgresError, match="append-only"):
                    await connection.execute(f"TRUNCATE {table} CASCADE")
            finally:
                await transaction.rollback()

    @pytest.mark.parametrize("ending", ["closed", "rejected"])
    async def test_postgres_refuses_a_fill_on_a_leg_that_is_no_longer_working_as_the_service_does(
        self, world: World, database: Database, pool: asyncpg.Pool, ending: str
    ) -> None:
        order = await place_order(world)
        leg_id = order.legs[0].id
        if ending == "closed":
            await close_leg(world, order.id, leg_id)
        else:
            assert await report_to_leg(database, leg_id, VenueReport.REJECTED, "venue:no") == "applied"
        with pytest.raises(asyncpg.PostgresError):
            await _raw_fill(pool, leg_id, "x-raw", "1")
        assert (await leg_row(pool, leg_id))["filled_quantity"] == 0

    async def test_a_transition_claiming_a_stale_state_or_an_unknown_leg_is_refused(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        _, leg_id = await filled_leg(world, database)
        trail = await leg_trail(pool, leg_id)
        for leg, from_state, to_state in (
            (uuid.UUID(leg_id), "PENDING", "CLOSED"),
            (uuid.UUID(leg_id), "FILLED", "PENDING"),
            (uuid.UUID(leg_id), "FILLED", "BOGUS"),
            (uuid.uuid4(), "SUBMITTED", "PENDING"),
        ):
            with pytest.raises(asyncpg.PostgresError):
                await pool.execute(
                    "INSERT INTO leg_transitions (leg_id, from_state, to_state, cause, evidence_ref)"
                    " VALUES ($1, $2, $3, 'sql', 'raw')",
                    leg,
                    from_state,
                    to_state,
                )
        assert await leg_trail(pool, leg_id) == trail
