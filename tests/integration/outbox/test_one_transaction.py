"""A change, its outbox event and its audit entry are one transaction (real PostgreSQL): a failure injected
into the event or the entry leaves no part of the change; an illegal move, by a caller or by a venue's
report, leaves no trace; every move of a leg has one event and one entry, in order.

Every spec uses clients of its own (the `world` fixture starts an in-process server for brand-new
callers, or a fresh Principal is used with the use cases directly), so nothing here reads or moves
the shared `alpha` and `beta`.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
import pytest

from server.db.database import Budget, Database
from server.domain.order_legs import Fill
from server.domain.orders import CloseLeg
from server.domain.payment_states import PaymentEvent
from server.domain.provider_status import VenueReport
from server.services import execution
from tests.support import precondition_subjects, report_to_leg, rpc_error
from tests.support.evidence import conclude
from tests.support.faults import DatabaseFailingOn, Injected
from tests.support.legs import (
    acknowledge_leg,
    close_leg,
    fill_leg,
    filled_leg,
    leg_refusals,
    leg_row,
    leg_trail,
    modify_leg,
    place_order,
    working_leg,
)
from tests.support.probes import broken_links, key_exists, payment_trail
from tests.support.requests import (
    leg_terms,
    new_payment,
    new_principal,
    submit_order_command,
)
from tests.support.servers import World

E = PaymentEvent
Code = grpc.StatusCode


# --------------------------------------------------------------------------------------------- one transaction


async def _client_trail(pool: asyncpg.Pool, client_id: str) -> tuple[int, int, int, int]:
    """(orders, idempotency keys, outbox events, audit entries) that mention a client."""
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM orders WHERE client_id = $1) AS orders,"
        " (SELECT count(*) FROM idempotency_keys WHERE client_id = $1) AS keys,"
        " (SELECT count(*) FROM outbox WHERE payload->>'client_id' = $1) AS events,"
        " (SELECT count(*) FROM audit_log WHERE actor = $1) AS audits",
        client_id,
    )
    return row["orders"], row["keys"], row["events"], row["audits"]


class TestOneTransaction:
    @pytest.mark.parametrize("failing", ["INSERT INTO audit_log", "INSERT INTO outbox"])
    @pytest.mark.parametrize("operation", ["submit", "acknowledge", "fill", "close", "capture"])
    async def test_a_change_whose_outbox_event_or_audit_entry_fails_leaves_no_part_of_itself(
        self, database: Database, pool: asyncpg.Pool, failing: str, operation: str
    ) -> None:
        principal = new_principal("atomic")
        broken = DatabaseFailingOn(pool, failing)
        budget = Budget.within(10)
        if operation == "submit":
            request = submit_order_command([leg_terms("10", "AAPL")], reference="ref")
            with pytest.raises(Injected):
                await execution.submit_order(broken, principal, request, budget)
            assert await _client_trail(pool, principal.client_id) == (0, 0, 0, 0)
            return
        if operation == "capture":
            payment_id = await new_payment(database, principal)
            before = await payment_trail(pool, payment_id)
            with pytest.raises(Injected):
                await conclude(broken, payment_id, E.SUCCEEDED)
            assert await payment_trail(pool, payment_id) == before == ("RECORDED", 0, 0, 1, 1)
            return
        order = (
            await execution.submit_order(
                database, principal, submit_order_command([leg_terms("10", "AAPL")], reference=""), budget
            )
        ).order
        order_id, leg_id = order.id, order.legs[0].id
        if operation != "acknowledge":
            await acknowledge_leg(database, leg_id)
        row, trail = await leg_row(pool, leg_id), await leg_trail(pool, leg_id)
        with pytest.raises(Injected):
            if operation == "acknowledge":
                await report_to_leg(broken, leg_id, VenueReport.ACKNOWLEDGED, "venue:ack")
            elif operation == "fill":
                await report_to_leg(broken, leg_id, VenueReport.FILL, "v", fill=Fill("x-1", Decimal(4), Decimal(9)))
            else:
                key = f"close-{uuid.uuid4()}"
                await execution.close_leg(broken, principal, CloseLeg(key, str(order_id), str(leg_id), "bye"), budget)
                assert not await key_exists(pool, principal.client_id, key)
        assert await leg_row(pool, leg_id) == row
        assert await leg_trail(pool, leg_id) == trail

    @pytest.mark.parametrize("case", ["modify a submitted leg", "close a closed leg", "modify a modifying leg"])
    async def test_an_illegal_move_is_failed_precondition_naming_both_states_and_leaves_no_trace(
        self, world: World, database: Database, pool: asyncpg.Pool, case: str
    ) -> None:
        if case == "modify a submitted leg":
            order = await place_order(world)
            order_id, leg_id, states = order.id, order.legs[0].id, ("SUBMITTED", "MODIFYING")
        elif case == "close a closed leg":
            order_id, leg_id = await filled_leg(world, database)
            await close_leg(world, order_id, leg_id, reason="first reason")
            states = ("CLOSED", "CLOSED")
        else:
            order_id, leg_id = await filled_leg(world, database)
            await modify_leg(world, order_id, leg_id, new_quantity="12")
            states = ("MODIFYING", "MODIFYING")
        row, trail = await leg_row(pool, leg_id), await leg_trail(pool, leg_id)
        key = f"illegal-{uuid.uuid4()}"
        if case == "close a closed leg":
            call = close_leg(world, order_id, leg_id, key, reason="second reason")
        else:
            call = modify_leg(world, order_id, leg_id, key, new_limit_price="98")
        error = await rpc_error(call)
        assert error.code() == Code.FAILED_PRECONDITION
        assert f"{states[0]} -> {states[1]}" in (error.details() or "")
        assert f"order leg:{states[0]}->{states[1]}" in precondition_subjects(error)
        assert await leg_row(pool, leg_id) == row  # not even state_reason or the requested terms
        assert await leg_trail(pool, leg_id) == trail
        assert not await key_exists(pool, world.merchant.client_id, key)

    async def test_illegal_venue_evidence_moves_nothing_and_leaves_no_trace_on_the_leg(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        """A closed leg takes no more news from the venue: a late acknowledgement or answer to a modification
        is stale, a rejection or a fill contradicts what the venue said before (a case names the refusal)."""
        order_id, leg_id = await filled_leg(world, database)
        await close_leg(world, order_id, leg_id)
        row, trail = await leg_row(pool, leg_id), await leg_trail(pool, leg_id)
        late = [
            (VenueReport.ACKNOWLEDGED, None, "stale"),
            (VenueReport.REJECTED, None, "contradiction"),
            (VenueReport.FILL, Fill("x-late", Decimal(1), Decimal(100)), "contradiction"),
            (VenueReport.MODIFIED, None, "stale"),
            (VenueReport.MODIFY_REFUSED, None, "stale"),
        ]
        for report, fill, outcome in late:
            assert await report_to_leg(database, leg_id, report, "venue:late", fill=fill, reason="late news") == outcome
        refusals = await leg_refusals(pool, leg_id)
        assert len(refusals) == 2 and "CLOSED -> REJECTED" in refusals[0]
        assert await leg_row(pool, leg_id) == row
        assert await leg_trail(pool, leg_id) == trail

    async def test_every_move_of_a_leg_has_one_outbox_event_and_one_audit_entry_in_order(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        order_id, leg_id = await working_leg(world, database)
        await fill_leg(database, leg_id, "x-1", "2.5", "99")
        await fill_leg(database, leg_id, "x-2", "7.5", "101")
        await modify_leg(world, order_id, leg_id, new_quantity="12", new_limit_price="102")
        assert await report_to_leg(database, leg_id, VenueReport.MODIFIED, "venue:replaced") == "applied"
        await close_leg(world, order_id, leg_id, reason="flat")
        moves = [
            (row["from_state"], row["to_state"])
            for row in await pool.fetch(
                "SELECT from_state, to_state FROM leg_transitions WHERE leg_id = $1 ORDER BY id", uuid.UUID(leg_id)
            )
        ]
        assert moves == [
            ("SUBMITTED", "PENDING"),
            ("PENDING", "PARTIALLY_FILLED"),
            ("PARTIALLY_FILLED", "FILLED"),
            ("FILLED", "MODIFYING"),
            ("MODIFYING", "PARTIALLY_FILLED"),
            ("PARTIALLY_FILLED", "CLOSED"),
        ]
        events = await pool.fetch("SELECT payload FROM outbox WHERE message_key = $1 ORDER BY created_at", leg_id)
        audits = await pool.fetch(
            "SELECT payload FROM audit_log WHERE aggregate_type = 'leg' AND aggregate_id = $1 ORDER BY sequence", leg_id
        )

        def loaded(payload: Any) -> dict[str, Any]:
            return json.loads(payload) if isinstance(payload, str) else payload

        assert [(loaded(e["payload"])["from_state"], loaded(e["payload"])["to_state"]) for e in events] == moves
        assert [(loaded(a["payload"])["from_state"], loaded(a["payload"])["to_state"]) for a in audits] == moves
        assert await broken_links(pool, leg_id) == []
