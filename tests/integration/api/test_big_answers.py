"""Answers too big to send (in-process server, real PostgreSQL): nothing bounds how many fills a venue
reports for a leg, or how many webhooks a payment collects; GetOrder and GetPaymentTimeline still answer.

Every spec uses clients of its own (the `world` fixture starts an in-process server for brand-new
callers, or a fresh Principal is used with the use cases directly), so nothing here reads or moves
the shared `alpha` and `beta`.
"""

from __future__ import annotations

import uuid

import asyncpg

from ballast.payments.v1 import payments_pb2
from server.db.database import Database
from tests.support.legs import (
    place_order,
    read_order,
)
from tests.support.requests import (
    THIRTY_DIGITS,
    create_payment_request,
    leg_spec,
)
from tests.support.servers import World

# --------------------------------------------------------------------------------------------- big answers


class TestBigAnswers:
    async def test_an_order_whose_legs_carry_many_fills_can_still_be_read(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        """Nothing bounds how many fills a venue reports for a leg; GetOrder must still answer. The rows are
        what record_fill would write for 24,000 executions, inserted in one statement to keep the test fast."""
        order = await place_order(world, [leg_spec("1000000", symbol=f"S{index}") for index in range(20)])
        await pool.execute(  # the venue acknowledges every leg: only working legs take fills
            "INSERT INTO leg_transitions (leg_id, from_state, to_state, cause, evidence_ref)"
            " SELECT id, 'SUBMITTED', 'PENDING', 'venue', 'ack' FROM legs WHERE order_id = $1",
            uuid.UUID(order.id),
        )
        await pool.execute(
            "INSERT INTO leg_fills (leg_id, execution_id, quantity, price, fill_time, evidence_ref)"
            " SELECT l.id, lpad(g::text, 128, 'x'), ('1.' || lpad(g::text, 12, '0'))::numeric,"
            f" {THIRTY_DIGITS}, now(), 'raw'"
            " FROM legs l CROSS JOIN generate_series(1, 1200) AS g WHERE l.order_id = $1",
            uuid.UUID(order.id),
        )
        fetched = await read_order(world, order.id)
        # Each leg lists its latest 500 fills and counts them all; its totals cover every one.
        assert [(len(leg.fills), leg.fill_count) for leg in fetched.legs] == [(500, 1200)] * 20

    async def test_a_payment_with_nine_thousand_provider_webhooks_still_has_a_readable_timeline(
        self, world: World, pool: asyncpg.Pool
    ) -> None:
        """Providers send webhooks twice and more; nothing bounds how many a payment collects."""
        created = await world.payments.CreatePayment(
            create_payment_request(value="5.00", currency="EUR"),
            metadata=world.merchant.metadata,
            timeout=5,
        )
        await pool.execute(
            "INSERT INTO provider_statuses (payment_id, provider, status, evidence_ref)"
            " SELECT $1, 'simulator', 'processing', lpad(g::text, 500, 'e') FROM generate_series(1, 9000) AS g",
            uuid.UUID(created.payment.id),
        )
        timeline = await world.payments.GetPaymentTimeline(
            payments_pb2.GetPaymentTimelineRequest(payment_id=created.payment.id),
            metadata=world.merchant.metadata,
            timeout=10,
        )
        assert len(timeline.entries) >= 1
