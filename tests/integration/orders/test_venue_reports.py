"""A venue's reports applied to legs (apply_venue_report, real PostgreSQL): a status word alone never makes
a leg look filled, a fill a leg cannot take is a named refusal that changes nothing, and fill totals and
average prices are exact.

Every spec uses clients of its own (the `world` fixture starts an in-process server for brand-new
callers, or a fresh Principal is used with the use cases directly), so nothing here reads or moves
the shared `alpha` and `beta`.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

import asyncpg
import pytest

from ballast.execution.v1 import execution_pb2
from server.db.database import Database
from server.domain.provider_status import VenueReport, venue_report_for
from tests.support import report_to_leg
from tests.support.legs import (
    acknowledge_leg,
    close_leg,
    fill_leg,
    leg_refusals,
    leg_row,
    leg_trail,
    place_order,
    read_order,
    working_leg,
)
from tests.support.requests import (
    THIRTY_DIGITS,
    leg_spec,
)
from tests.support.servers import World

# --------------------------------------------------------------------------------------------- venue evidence and fills


class TestVenueEvidence:
    @pytest.mark.parametrize("status", ["filled", "partially_filled"])
    async def test_a_venue_status_alone_never_makes_a_leg_look_filled_and_the_fills_still_apply(
        self, world: World, database: Database, status: str
    ) -> None:
        """The proto: PARTIALLY_FILLED is 0 < filled_quantity < quantity, FILLED is filled_quantity == quantity.
        A venue's status message that outruns its execution reports must not break that, nor lose the fills."""
        order_id, leg_id = await working_leg(world, database)
        # the venue's status word without its executions: refusing the bare status is one correct answer
        await report_to_leg(database, leg_id, venue_report_for("simulator", status), "venue:status")
        leg = (await read_order(world, order_id)).legs[0]
        filled, quantity = Decimal(leg.filled_quantity), Decimal(leg.quantity)
        if leg.state == execution_pb2.LEG_STATE_FILLED:
            assert filled == quantity
        if leg.state == execution_pb2.LEG_STATE_PARTIALLY_FILLED:
            assert 0 < filled < quantity
        await fill_leg(database, leg_id, "x-1", "4")
        await fill_leg(database, leg_id, "x-2", "6")
        leg = (await read_order(world, order_id)).legs[0]
        assert (leg.state, leg.filled_quantity) == (execution_pb2.LEG_STATE_FILLED, "10")

    # (A fill for a leg still SUBMITTED proves the acknowledgement it overtook, and is applied: see
    # test_a_fill_that_overtakes_the_acknowledgement_is_applied_not_sent_to_a_person in webhooks/.)
    @pytest.mark.parametrize("path", ["rejected", "closed", "closed after a partial fill"])
    async def test_a_fill_for_a_leg_not_working_at_the_venue_is_refused_and_changes_nothing(
        self, world: World, database: Database, pool: asyncpg.Pool, path: str
    ) -> None:
        order = await place_order(world, [leg_spec("10")])
        leg_id = order.legs[0].id
        if path == "rejected":
            assert await report_to_leg(database, leg_id, VenueReport.REJECTED, "venue:no") == "applied"
        elif path == "closed":
            await close_leg(world, order.id, leg_id)
        elif path == "closed after a partial fill":
            await acknowledge_leg(database, leg_id)
            await fill_leg(database, leg_id, "x-early", "3")
            await close_leg(world, order.id, leg_id)
        before, trail = await leg_row(pool, leg_id), await leg_trail(pool, leg_id)
        await fill_leg(database, leg_id, "x-late", "2", expect="contradiction")
        assert "-> " in (await leg_refusals(pool, leg_id))[-1]  # the machine's refusal, naming both states
        assert await leg_row(pool, leg_id) == before
        assert await leg_trail(pool, leg_id) == trail
        if path == "closed after a partial fill":  # the venue repeating an execution already applied is harmless
            await fill_leg(database, leg_id, "x-early", "3")
            assert await leg_trail(pool, leg_id) == trail

    @pytest.mark.parametrize(
        ("execution_id", "quantity", "price"),
        [
            ("", "1", "100"),
            ("x-zero", "0", "100"),
            ("x-negative", "-1", "100"),
            ("x-free", "1", "0"),
            ("x-over", "10.000000000001", "100"),
            ("x-nan", "NaN", "100"),
            ("x-fine-quantity", "0.0000000000001", "100"),
            ("x-huge-price", "1", "1" + "0" * 18),
            ("x" * 129, "1", "100"),
        ],
        ids=lambda value: value[:24],
    )
    async def test_a_fill_the_leg_cannot_hold_is_a_named_refusal_and_changes_nothing(
        self, world: World, database: Database, pool: asyncpg.Pool, execution_id: str, quantity: str, price: str
    ) -> None:
        _, leg_id = await working_leg(world, database)
        before, trail = await leg_row(pool, leg_id), await leg_trail(pool, leg_id)
        await fill_leg(database, leg_id, execution_id, quantity, price, expect="contradiction")
        assert (await leg_refusals(pool, leg_id))[-1]  # named
        assert await leg_row(pool, leg_id) == before
        assert await leg_trail(pool, leg_id) == trail

    @pytest.mark.parametrize(
        ("fills", "average"),
        [
            ([("1", "123456789012345678.123456789012")], "123456789012345678.123456789012"),
            ([("1", THIRTY_DIGITS)], THIRTY_DIGITS),
            ([("1", "1"), ("2", "2")], "1.666666666667"),  # 5/3, half to even at 12 digits
            ([("1", "0.000000000001"), ("1", "0.000000000002")], "0.000000000002"),  # 1.5e-12 -> even
            ([("3", "100.10"), ("1", "100.30")], "100.15"),
        ],
    )
    async def test_the_average_fill_price_is_exact_rounded_half_even_at_twelve_digits(
        self, world: World, database: Database, fills: list[tuple[str, str]], average: str
    ) -> None:
        total = sum(Decimal(quantity) for quantity, _ in fills)
        order = await place_order(world, [leg_spec(format(total, "f"))])
        await acknowledge_leg(database, order.legs[0].id)
        for index, (quantity, price) in enumerate(fills):
            await fill_leg(database, order.legs[0].id, f"x-{index}", quantity, price)
        leg = (await read_order(world, order.id)).legs[0]
        assert Decimal(leg.average_fill_price) == Decimal(average), leg.average_fill_price
        assert [(fill.quantity, fill.price) for fill in leg.fills] == fills

    async def test_the_largest_fills_keep_exact_totals(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        big, rest = "999999999999999999.999999999998", "0.000000000001"
        order = await place_order(world, [leg_spec(THIRTY_DIGITS)])
        leg_id = order.legs[0].id
        await acknowledge_leg(database, leg_id)
        await fill_leg(database, leg_id, "x-big", big, THIRTY_DIGITS)
        await fill_leg(database, leg_id, "x-rest", rest, THIRTY_DIGITS)
        row = await leg_row(pool, leg_id)
        assert row["filled_quantity"] == Decimal(THIRTY_DIGITS)
        with decimal.localcontext(decimal.Context(prec=100)):
            notional = Decimal(big) * Decimal(THIRTY_DIGITS) + Decimal(rest) * Decimal(THIRTY_DIGITS)
        assert row["fill_notional"] == notional
        leg = (await read_order(world, order.id)).legs[0]
        assert (leg.state, Decimal(leg.filled_quantity)) == (execution_pb2.LEG_STATE_FILLED, Decimal(THIRTY_DIGITS))
