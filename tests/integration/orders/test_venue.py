"""Orders against the simulator's venue as a real process: legs sent under their own ids, fills by
webhook applied once per execution id, and a venue contradicting itself sent to a person."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from server.db.database import Budget, Database
from server.domain.identity import Principal
from server.domain.orders import validate_close_leg, validate_modify_leg
from server.providers.breaker import Breaker, BreakerSettings
from server.providers.venue import VenueClient
from server.services.leg_resolver import LegResolver, LegResolverSettings
from server.services.order_submission import close_and_send, modify_and_send, submit_and_send
from tests.support.requests import leg_terms, submit_order_command
from tests.support.simulator import simulated_provider, simulator_truth

FAST = {"settle_min_ms": 5, "settle_max_ms": 30, "webhook_retry_base_ms": 20, "order_reject_rate": 0.0}


def _legs() -> list[dict[str, str]]:
    return [
        leg_terms("100", "ACME"),
        leg_terms("7.5", "EURUSD", side="SELL", order_type="LIMIT", limit_price="1.08345"),
    ]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _settle(pool: asyncpg.Pool, order_id: uuid.UUID, states: set[str], timeout_s: float = 20) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        legs = await pool.fetch(
            "SELECT id, state, filled_quantity, fill_notional FROM legs WHERE order_id = $1 ORDER BY position", order_id
        )
        if all(leg["state"] in states for leg in legs):
            return list(legs)
        assert time.monotonic() < deadline, [dict(leg) for leg in legs]
        await asyncio.sleep(0.05)


async def test_legs_go_to_the_venue_and_fill_by_webhook_once_per_execution(
    tmp_path: Path, database: Database, principal: Principal, pool: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    # every webhook delivered twice, the acknowledgement held back until after the first fill
    settings = FAST | {"order_fill_parts_max": 4, "webhook_duplicate_rate": 1.0, "webhook_reorder_rate": 1.0}
    async with simulated_provider(tmp_path, database, "calm", **settings) as url:
        venue = VenueClient("simulator", url, http, Breaker("simulator.orders", BreakerSettings()))
        request = submit_order_command(_legs(), reference="ref")
        result = await submit_and_send(database, venue, principal, request, Budget.within(5))
        assert [leg.state.value for leg in result.order.legs] in (
            ["PENDING", "PENDING"],  # the venue's answer; fills may follow at once
            *[
                [a, b]
                for a in ("PENDING", "PARTIALLY_FILLED", "FILLED")
                for b in ("PENDING", "PARTIALLY_FILLED", "FILLED")
            ],
        )
        legs = await _settle(pool, result.order.id, {"FILLED"})
        truth = {order["idempotency_key"]: order for order in (await simulator_truth(url))["orders"]}

    for leg in legs:
        venue_order = truth[str(leg["id"])]  # sent once, under the leg's own id
        executions = venue_order["executions"]
        fills = await pool.fetch("SELECT execution_id, quantity, price FROM leg_fills WHERE leg_id = $1", leg["id"])
        assert sorted(fill["execution_id"] for fill in fills) == sorted(e["id"] for e in executions)
        assert leg["filled_quantity"] == Decimal(venue_order["quantity"])
        assert leg["fill_notional"] == sum(Decimal(e["quantity"]) * Decimal(e["price"]) for e in executions)


async def test_a_fill_after_a_claimed_rejection_opens_one_case_for_the_leg(
    tmp_path: Path, database: Database, principal: Principal, pool: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    # before its fill, the venue first claims the order was rejected
    settings = FAST | {"order_fill_parts_max": 1, "webhook_contradict_rate": 1.0}
    async with simulated_provider(tmp_path, database, "calm", **settings) as url:
        venue = VenueClient("simulator", url, http, Breaker("simulator.orders", BreakerSettings()))
        request = submit_order_command(_legs()[:1], reference="ref")
        result = await submit_and_send(database, venue, principal, request, Budget.within(5))
        leg_id = result.order.legs[0].id
        deadline = time.monotonic() + 20
        while not await pool.fetchval("SELECT count(*) FROM cases WHERE leg_id = $1", leg_id):
            assert time.monotonic() < deadline, "no case opened"
            await asyncio.sleep(0.05)
        truth = {order["idempotency_key"]: order for order in (await simulator_truth(url))["orders"]}
    assert truth[str(leg_id)]["final_status"] == "filled"
    # the first decided claim stands; the contradicting fill changed nothing and waits for a person
    assert await pool.fetchval("SELECT state FROM legs WHERE id = $1", leg_id) == "REJECTED"
    assert await pool.fetchval("SELECT count(*) FROM leg_fills WHERE leg_id = $1", leg_id) == 0
    case = await pool.fetchrow("SELECT kind, status, evidence FROM cases WHERE leg_id = $1", leg_id)
    assert (case["kind"], case["status"], [piece["claim"] for piece in case["evidence"]]) == (
        "CONTRADICTORY_VENUE_EVIDENCE",
        "OPEN",
        ["FILL"],
    )


async def _run_until(pool: asyncpg.Pool, resolver: Any, order_id: uuid.UUID, states: set[str]) -> list[Any]:
    deadline = time.monotonic() + 20
    while True:
        # due first: the shared test database holds many other tests' legs, due as well
        await pool.execute("UPDATE legs SET next_check_at = '-infinity' WHERE order_id = $1", order_id)
        await resolver.run_once()
        legs = await pool.fetch("SELECT id, state, filled_quantity FROM legs WHERE order_id = $1", order_id)
        if all(leg["state"] in states for leg in legs):
            return list(legs)
        assert time.monotonic() < deadline, [dict(leg) for leg in legs]
        await asyncio.sleep(0.05)


async def test_the_resolver_sends_a_lost_leg_and_recovers_fills_whose_webhooks_were_dropped(
    tmp_path: Path, database: Database, principal: Principal, pool: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    # the venue answers, but drops every webhook: fills can only be learnt by asking
    settings = FAST | {"order_fill_parts_max": 3, "webhook_drop_rate": 1.0}
    async with simulated_provider(tmp_path, database, "calm", **settings) as url:
        venue = VenueClient("simulator", url, http, Breaker("simulator.orders", BreakerSettings()))
        # recorded while the venue was not asked (as if the send had been lost): the legs are SUBMITTED
        request = submit_order_command(_legs(), reference="ref")
        order = (await submit_and_send(database, None, principal, request, Budget.within(5))).order
        resolver = LegResolver(
            database, venue, LegResolverSettings(submitted_grace_s=0, working_check_s=0, backoff_base_s=0)
        )
        legs = await _run_until(pool, resolver, order.id, {"FILLED"})
        truth = {o["idempotency_key"]: o for o in (await simulator_truth(url))["orders"]}
    for leg in legs:
        venue_order = truth[str(leg["id"])]  # sent once, by the resolver, under the leg's id
        assert all(event["dropped"] for event in venue_order["webhooks"])
        fills = await pool.fetch("SELECT execution_id FROM leg_fills WHERE leg_id = $1", leg["id"])
        assert sorted(fill["execution_id"] for fill in fills) == sorted(e["id"] for e in venue_order["executions"])
        assert leg["filled_quantity"] == Decimal(venue_order["quantity"])


async def test_a_modification_and_a_close_reach_the_venue_and_its_answers_come_back(
    tmp_path: Path, database: Database, principal: Principal, pool: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    settings = FAST | {"order_fill_parts_max": 1, "modify_reject_rate": 0.0}
    async with simulated_provider(tmp_path, database, "calm", **settings) as url:
        venue = VenueClient("simulator", url, http, Breaker("simulator.orders", BreakerSettings()))
        legs = [_legs()[1], _legs()[1] | {"limit_price": "1.1"}]
        order = (
            await submit_and_send(
                database, venue, principal, submit_order_command(legs, reference=""), Budget.within(5)
            )
        ).order
        await _settle(pool, order.id, {"FILLED"})
        first, second = (leg.id for leg in order.legs)

        modify = validate_modify_leg(f"m-{uuid.uuid4()}", str(order.id), str(first), "9", "1.2")  # re-opened
        assert (
            await modify_and_send(database, venue, principal, modify, Budget.within(5))
        ).leg.state.value == "MODIFYING"
        close = validate_close_leg(f"c-{uuid.uuid4()}", str(order.id), str(second), "done")
        assert (await close_and_send(database, venue, principal, close, Budget.within(5))).leg.state.value == "CLOSED"

        deadline = time.monotonic() + 20
        while await pool.fetchval("SELECT filled_quantity FROM legs WHERE id = $1", first) != Decimal("9"):
            assert time.monotonic() < deadline, "the venue's confirmation, or the fills it re-opened, never came"
            await asyncio.sleep(0.05)
        truth = {o["idempotency_key"]: o for o in (await simulator_truth(url))["orders"]}
    row = await pool.fetchrow("SELECT state, quantity, limit_price FROM legs WHERE id = $1", first)
    assert (row["state"], row["quantity"], row["limit_price"]) == ("FILLED", Decimal("9"), Decimal("1.2"))
    assert (truth[str(first)]["quantity"], truth[str(first)]["limit_price"]) == ("9", "1.2")
    assert truth[str(second)]["final_status"] == "closed"  # the position closed at the venue too
    sent = await pool.fetch(
        "SELECT kind, outcome FROM venue_instructions WHERE leg_id = ANY($1) ORDER BY kind", [first, second]
    )
    assert [(row["kind"], row["outcome"]) for row in sent] == [("cancel", "sent"), ("modify", "sent")]


async def test_a_modification_the_venue_refuses_leaves_the_leg_filled_under_its_old_terms(
    tmp_path: Path, database: Database, principal: Principal, pool: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    settings = FAST | {"order_fill_parts_max": 1, "modify_reject_rate": 1.0}
    async with simulated_provider(tmp_path, database, "calm", **settings) as url:
        venue = VenueClient("simulator", url, http, Breaker("simulator.orders", BreakerSettings()))
        request = submit_order_command([_legs()[1]], reference="")
        order = (await submit_and_send(database, venue, principal, request, Budget.within(5))).order
        await _settle(pool, order.id, {"FILLED"})
        leg_id = order.legs[0].id
        modify = validate_modify_leg(f"m-{uuid.uuid4()}", str(order.id), str(leg_id), "9", "1.3")
        await modify_and_send(database, venue, principal, modify, Budget.within(5))
        deadline = time.monotonic() + 20
        while await pool.fetchval("SELECT modification_status FROM legs WHERE id = $1", leg_id) != "REFUSED":
            assert time.monotonic() < deadline, "the venue's refusal never came"
            await asyncio.sleep(0.05)
    row = await pool.fetchrow(
        "SELECT state, quantity, limit_price, modification_reason FROM legs WHERE id = $1", leg_id
    )
    assert (row["state"], row["quantity"], row["limit_price"]) == ("FILLED", Decimal("7.5"), Decimal("1.08345"))
    assert row["modification_reason"] == "the venue refused the change: the order book moved"
