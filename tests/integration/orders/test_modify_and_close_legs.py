"""ModifyLeg and CloseLeg over gRPC (in-process server, real PostgreSQL): what a leg in each state takes,
what it refuses (naming the field or both states) and that a refusal writes nothing; racing fills,
closes and modifications on one leg have one winner per conflict and lose nothing.

Every spec uses clients of its own (the `world` fixture starts an in-process server for brand-new
callers, or a fresh Principal is used with the use cases directly), so nothing here reads or moves
the shared `alpha` and `beta`.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
import pytest

from ballast.execution.v1 import execution_pb2
from server.db.database import Database
from server.domain.order_legs import LEG_MACHINE, LegState
from server.domain.provider_status import VenueReport
from tests.support import field_violations, report_to_leg, rpc_error
from tests.support.legs import (
    close_leg,
    fill_leg,
    filled_leg,
    leg_refusals,
    leg_row,
    leg_trail,
    modify_leg,
    read_order,
    working_leg,
)
from tests.support.probes import broken_links, key_exists
from tests.support.servers import World

L = LegState
Code = grpc.StatusCode


# --------------------------------------------------------------------------------------------- ModifyLeg


class TestModifyLeg:
    async def test_a_market_legs_limit_price_cannot_be_modified_and_the_key_stays_free(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        order_id, leg_id = await filled_leg(world, database, order_type="ORDER_TYPE_MARKET")
        trail = await leg_trail(pool, leg_id)
        key = f"market-{uuid.uuid4()}"
        for fields in ({"new_limit_price": "5"}, {"new_limit_price": "5", "new_quantity": "10"}):
            error = await rpc_error(modify_leg(world, order_id, leg_id, key, **fields))
            assert error.code() == Code.INVALID_ARGUMENT
            assert "new_limit_price" in field_violations(error)
        row = await leg_row(pool, leg_id)
        assert (row["state"], row["limit_price"], row["requested_limit_price"]) == ("FILLED", None, None)
        assert await leg_trail(pool, leg_id) == trail
        assert not await key_exists(pool, world.merchant.client_id, key)
        modified = await modify_leg(world, order_id, leg_id, key, new_quantity="12")
        assert (modified.replayed, modified.leg.state) == (False, execution_pb2.LEG_STATE_MODIFYING)

    async def test_every_bad_field_of_a_modification_is_named_at_once(self, world: World) -> None:
        error = await rpc_error(
            world.orders.ModifyLeg(
                execution_pb2.ModifyLegRequest(
                    idempotency_key="", order_id="not-an-order", leg_id="not-a-leg", new_quantity="-1"
                ),
                metadata=world.merchant.metadata,
                timeout=5,
            )
        )
        assert error.code() == Code.INVALID_ARGUMENT
        assert {"idempotency_key", "order_id", "leg_id", "new_quantity"} <= field_violations(error)

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({}, "new_quantity"),
            ({"new_quantity": "0"}, "new_quantity"),
            ({"new_quantity": "1e2"}, "new_quantity"),
            ({"new_quantity": "1.0000000000001"}, "new_quantity"),
            ({"new_limit_price": "-5"}, "new_limit_price"),
            ({"new_limit_price": "1" + "0" * 18}, "new_limit_price"),
        ],
    )
    async def test_a_bad_new_value_is_invalid_argument_naming_it_and_writes_nothing(
        self, world: World, database: Database, pool: asyncpg.Pool, fields: dict[str, str], field: str
    ) -> None:
        order_id, leg_id = await filled_leg(world, database)
        trail = await leg_trail(pool, leg_id)
        key = f"bad-{uuid.uuid4()}"
        error = await rpc_error(modify_leg(world, order_id, leg_id, key, **fields))
        assert error.code() == Code.INVALID_ARGUMENT
        assert field in field_violations(error)
        assert await leg_trail(pool, leg_id) == trail
        assert not await key_exists(pool, world.merchant.client_id, key)

    async def test_a_leg_named_with_another_order_or_by_another_client_is_not_found(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        order_id, leg_id = await filled_leg(world, database)
        other_order, _ = await filled_leg(world, database)
        trail = await leg_trail(pool, leg_id)
        calls = [
            modify_leg(world, other_order, leg_id, new_limit_price="99"),
            close_leg(world, other_order, leg_id),
            world.orders.CloseLeg(
                execution_pb2.CloseLegRequest(
                    idempotency_key=f"c-{uuid.uuid4()}", order_id=order_id, leg_id=leg_id.upper(), reason="mine"
                ),
                metadata=world.other.metadata,
                timeout=5,
            ),
            world.orders.ModifyLeg(
                execution_pb2.ModifyLegRequest(
                    idempotency_key=f"m-{uuid.uuid4()}", order_id=order_id, leg_id=leg_id, new_quantity="1"
                ),
                metadata=world.other.metadata,
                timeout=5,
            ),
        ]
        for call in calls:
            assert (await rpc_error(call)).code() == Code.NOT_FOUND
        assert await leg_trail(pool, leg_id) == trail

    async def test_a_quantity_below_what_is_already_filled_is_refused_and_writes_nothing(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        order_id, leg_id = await filled_leg(world, database, quantity="10")
        trail = await leg_trail(pool, leg_id)
        key = f"shrink-{uuid.uuid4()}"
        error = await rpc_error(modify_leg(world, order_id, leg_id, key, new_quantity="4"))
        assert error.code() in (Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION), error.details()
        row = await leg_row(pool, leg_id)
        assert (row["state"], row["requested_quantity"]) == ("FILLED", None)
        assert await leg_trail(pool, leg_id) == trail
        assert not await key_exists(pool, world.merchant.client_id, key)

    async def test_the_venue_confirming_a_quantity_below_the_filled_one_is_a_named_refusal_and_changes_nothing(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        """Amended down to 6 with 4 filled, the venue fills 3 more under the old terms, then confirms 6."""
        order_id, leg_id = await working_leg(world, database, quantity="10")
        await fill_leg(database, leg_id, "x-1", "4")
        await modify_leg(world, order_id, leg_id, new_quantity="6")
        await fill_leg(database, leg_id, "x-2", "3")  # under the old terms, while the venue had not answered
        row, trail = await leg_row(pool, leg_id), await leg_trail(pool, leg_id)
        assert (row["state"], row["filled_quantity"]) == ("MODIFYING", Decimal("7"))
        assert await report_to_leg(database, leg_id, VenueReport.MODIFIED, "venue:replaced") == "contradiction"
        assert "below the 7 filled" in (await leg_refusals(pool, leg_id))[-1]
        assert await leg_row(pool, leg_id) == row
        assert await leg_trail(pool, leg_id) == trail

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"new_quantity": "9"}, "new_quantity"),  # below what filled
            ({"new_quantity": "10.000"}, "new_quantity"),  # what is in force: changes nothing
            ({"new_limit_price": "99"}, "new_limit_price"),  # nothing of a filled leg works to reprice
            ({"new_quantity": "10", "new_limit_price": "99"}, "new_quantity"),
        ],
    )
    async def test_a_filled_leg_is_modified_only_by_a_larger_quantity_which_re_opens_it(
        self, world: World, database: Database, pool: asyncpg.Pool, fields: dict[str, str], field: str
    ) -> None:
        """A FILLED leg has nothing working at the venue: a smaller quantity is below what filled, the
        same one or a new price alone would change nothing there. A larger one re-opens it."""
        order_id, leg_id = await filled_leg(world, database, quantity="10")
        row, trail = await leg_row(pool, leg_id), await leg_trail(pool, leg_id)
        error = await rpc_error(modify_leg(world, order_id, leg_id, **fields))
        # what the leg, as it stands, cannot take: a precondition (its fills move on), naming the field
        assert error.code() == Code.FAILED_PRECONDITION
        assert (error.details() or "").startswith(field), error.details()
        assert await leg_row(pool, leg_id) == row
        assert await leg_trail(pool, leg_id) == trail
        grown = await modify_leg(world, order_id, leg_id, new_quantity="10.5", new_limit_price="99")
        assert (grown.leg.state, grown.leg.quantity, grown.leg.modification.new_quantity) == (
            execution_pb2.LEG_STATE_MODIFYING,
            "10",
            "10.5",
        )

    async def test_a_refused_modification_keeps_the_terms_in_force_and_the_leg_filled(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        order_id, leg_id = await filled_leg(world, database, quantity="10")
        modifying = await modify_leg(world, order_id, leg_id, new_quantity="12", new_limit_price="99")
        assert (modifying.leg.quantity, modifying.leg.limit_price) == ("10", "101.25")
        refused = await report_to_leg(database, leg_id, VenueReport.MODIFY_REFUSED, "venue:refused", reason="too late")
        assert refused == "applied"
        leg = (await read_order(world, order_id)).legs[0]
        assert (leg.state, leg.state_reason, leg.quantity, leg.limit_price, leg.filled_quantity) == (
            execution_pb2.LEG_STATE_FILLED,
            "",
            "10",
            "101.25",
            "10",
        )
        assert (leg.modification.status, leg.modification.reason) == (
            execution_pb2.MODIFICATION_STATUS_REFUSED,
            "too late",
        )
        closed = await close_leg(world, order_id, leg_id, reason="given up")
        assert closed.leg.state == execution_pb2.LEG_STATE_CLOSED
        assert (await leg_trail(pool, leg_id))[:3] == (5, 5, 5)


class TestCloseLeg:
    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"reason": ""}, "reason"),
            ({"reason": "r" * 1001}, "reason"),
            ({"reason": "bye\x00"}, "reason"),
            ({"reason": "r" * 2**20}, "reason"),
            ({"idempotency_key": "k" * 256}, "idempotency_key"),
            ({"idempotency_key": "key\t"}, "idempotency_key"),
            ({"leg_id": "not-a-leg"}, "leg_id"),
            ({"order_id": "{not-an-order}"}, "order_id"),
        ],
        ids=["empty", "1001", "NUL", "megabyte", "long key", "tab in key", "leg_id", "order_id"],
    )
    async def test_bad_input_is_invalid_argument_naming_the_field_and_writes_nothing(
        self, world: World, database: Database, pool: asyncpg.Pool, fields: dict[str, str], field: str
    ) -> None:
        order_id, leg_id = await filled_leg(world, database)
        row, trail = await leg_row(pool, leg_id), await leg_trail(pool, leg_id)
        request = {"idempotency_key": f"c-{uuid.uuid4()}", "order_id": order_id, "leg_id": leg_id, "reason": "done"}
        request |= fields
        error = await rpc_error(
            world.orders.CloseLeg(
                execution_pb2.CloseLegRequest(**request), metadata=world.merchant.metadata, timeout=10
            )
        )
        assert error.code() == Code.INVALID_ARGUMENT, error.details()
        assert field in field_violations(error)
        assert await leg_row(pool, leg_id) == row
        assert await leg_trail(pool, leg_id) == trail

    async def test_a_reason_of_a_thousand_astral_characters_is_kept_exactly(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        order_id, leg_id = await filled_leg(world, database)
        reason = "🧾" * 999 + "\u202e"
        closed = await close_leg(world, order_id, leg_id, reason=reason)
        assert closed.leg.state_reason == reason
        assert (await read_order(world, order_id)).legs[0].state_reason == reason
        assert (
            await pool.fetchval(
                "SELECT payload->>'reason' FROM outbox WHERE message_key = $1 AND payload->>'to_state' = 'CLOSED'",
                leg_id,
            )
            == reason
        )

    @pytest.mark.parametrize("operation", ["CloseLeg", "ModifyLeg"])
    async def test_twenty_concurrent_calls_with_one_key_move_the_leg_once(
        self, world: World, database: Database, pool: asyncpg.Pool, operation: str
    ) -> None:
        order_id, leg_id = await filled_leg(world, database)
        key = f"same-{uuid.uuid4()}"

        def call() -> Awaitable[Any]:
            if operation == "CloseLeg":
                return close_leg(world, order_id, leg_id, key, reason="once")
            return modify_leg(world, order_id, leg_id, key, new_quantity="12")

        outcomes = await asyncio.gather(*(call() for _ in range(20)), return_exceptions=True)
        answers = [o for o in outcomes if not isinstance(o, BaseException)]
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == Code.ABORTED for e in errors), errors
        assert sum(not answer.replayed for answer in answers) == 1
        moves = await pool.fetchval(
            "SELECT count(*) FROM leg_transitions WHERE leg_id = $1 AND cause LIKE 'api.%'", uuid.UUID(leg_id)
        )
        assert moves == 1
        expected = "CLOSED" if operation == "CloseLeg" else "MODIFYING"
        assert (await leg_row(pool, leg_id))["state"] == expected


# --------------------------------------------------------------------------------------------- racing on one leg


class TestRacingOnOneLeg:
    async def test_racing_fills_closes_and_modifications_have_one_winner_per_conflict_and_lose_nothing(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        order_id, leg_id = await working_leg(world, database, quantity="10")
        # 24 executions of 0.5 (12 > 10 ordered), each reported twice, against 6 closes and 6 modifications.
        calls: list[tuple[str, str, Awaitable[Any]]] = []
        for index in range(48):
            execution_id = f"x-{index % 24}"
            price = format(Decimal("100") + Decimal(index % 24) / 100, "f")
            calls.append(("fill", execution_id, fill_leg(database, leg_id, execution_id, "0.5", price, expect=None)))
        for index in range(6):
            calls.append(("close", "", close_leg(world, order_id, leg_id, reason=f"close {index}")))
            calls.append(("modify", "", modify_leg(world, order_id, leg_id, new_limit_price="99")))
        random.Random(7).shuffle(calls)  # noqa: S311 (a fixed, repeatable order)
        outcomes = await asyncio.gather(*(call for _, _, call in calls), return_exceptions=True)

        applied: set[str] = set()
        winners = {"close": 0, "modify": 0}
        for (kind, execution_id, _), outcome in zip(calls, outcomes, strict=True):
            if kind == "fill":
                assert outcome in ("applied", "contradiction"), outcome  # a refused fill is a case for a person
                if outcome == "applied":
                    applied.add(execution_id)
            elif isinstance(outcome, BaseException):
                assert isinstance(outcome, grpc.aio.AioRpcError), outcome
                assert outcome.code() in (Code.FAILED_PRECONDITION, Code.ABORTED), outcome.details()
            else:
                assert not outcome.replayed
                winners[kind] += 1
        assert winners["close"] == 1 and winners["modify"] <= 1

        fills = await pool.fetch(
            "SELECT execution_id, quantity, price FROM leg_fills WHERE leg_id = $1", uuid.UUID(leg_id)
        )
        assert {row["execution_id"] for row in fills} == applied  # every accepted fill is recorded, no other
        row = await leg_row(pool, leg_id)
        assert row["state"] == "CLOSED"
        assert row["filled_quantity"] == sum(f["quantity"] for f in fills) <= Decimal(10)
        assert row["fill_notional"] == sum(f["quantity"] * f["price"] for f in fills)
        transitions = await pool.fetch(
            "SELECT from_state, to_state, cause, evidence_ref FROM leg_transitions WHERE leg_id = $1 ORDER BY id",
            uuid.UUID(leg_id),
        )
        state = "SUBMITTED"
        for transition in transitions:
            assert transition["from_state"] == state
            assert LEG_MACHINE.allows(L(transition["from_state"]), L(transition["to_state"]))
            state = transition["to_state"]
        assert state == "CLOSED"
        assert sorted(t["evidence_ref"] for t in transitions if t["cause"] == "venue.fill") == sorted(
            f"venue:{execution_id}" for execution_id in applied
        )
        assert sum(t["cause"] == "api.close_leg" for t in transitions) == 1
        assert sum(t["cause"] == "api.modify_leg" for t in transitions) == winners["modify"]
        assert await leg_trail(pool, leg_id) == (len(transitions), len(transitions), len(transitions), len(fills))
        assert await broken_links(pool, leg_id) == []
        leg = (await read_order(world, order_id)).legs[0]
        assert (Decimal(leg.filled_quantity), len(leg.fills)) == (row["filled_quantity"], len(fills))
