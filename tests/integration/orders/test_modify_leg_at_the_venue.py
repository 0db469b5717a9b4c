"""ModifyLeg over gRPC against the simulator's venue as a real process: a cancel/replace of the leg's
order, applied by the venue and reported back as evidence.

A working leg is amended in place and keeps working; a filled leg grown by a larger quantity works
again and fills to it; the venue's refusal leaves the leg as it was, its modification REFUSED; an
answer whose webhook was dropped is recovered by the leg resolver. The leg's terms in force change
only on the venue's confirmation.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest

from ballast.execution.v1 import execution_pb2, execution_pb2_grpc
from server.api.grpc_server import build_server, set_serving
from server.db.database import Database
from server.providers.breaker import Breaker, BreakerSettings
from server.providers.venue import VenueClient
from server.services.leg_resolver import LegResolver, LegResolverSettings
from server.settings import load_settings
from tests.support.requests import leg_spec, modify_leg_request, submit_order_request
from tests.support.servers import Caller
from tests.support.simulator import simulated_provider, simulator_truth

Stub = execution_pb2_grpc.ExecutionServiceStub
LegView = execution_pb2.Leg
FAST = {"settle_min_ms": 5, "settle_max_ms": 30, "webhook_retry_base_ms": 20, "order_reject_rate": 0.0}
#: How long a spec waits for the venue's answer (and the fills it brings) to reach the leg.
ANSWER_TIMEOUT_S = 20.0
STATE = execution_pb2.LegState.Name
MODIFICATION = execution_pb2.ModificationStatus.Name


@asynccontextmanager
async def _trading(
    pool: asyncpg.Pool, tmp_path: Path, database: Database, **venue_settings: Any
) -> AsyncIterator[tuple[Stub, Caller, str, VenueClient]]:
    """The simulator's venue (its webhooks into Ballast's intake) and an in-process gRPC server trading
    on it, for one caller of this spec's own: (stub, caller, the venue's URL, the venue client)."""
    caller = Caller(f"amend-{uuid.uuid4().hex[:12]}", f"amend-token-{uuid.uuid4().hex}")
    async with (
        simulated_provider(tmp_path, database, "calm", **(FAST | venue_settings)) as url,
        aiohttp.ClientSession() as http,
    ):
        venue = VenueClient("simulator", url, http, Breaker("simulator.orders", BreakerSettings()))
        settings = load_settings(
            {
                "BALLAST_GRPC_PORT": "0",
                "BALLAST_API_TOKENS": f"{caller.token}={caller.client_id}:{caller.role}",
                "BALLAST_DATA_DIR": str(tmp_path),
                "DATABASE_URL": "postgresql://unused/unused",
            }
        )
        server, health, port = build_server(settings, Database(pool), venue=venue)
        await server.start()
        await set_serving(health, True)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield Stub(channel), caller, url, venue
        finally:
            await server.stop(None)


def _limit_leg(quantity: str, limit_price: str) -> execution_pb2.LegSpec:
    return leg_spec(quantity, "ORDER_TYPE_LIMIT", limit_price, symbol="EURUSD", side="SIDE_SELL")


async def _submit(stub: Stub, caller: Caller, leg: execution_pb2.LegSpec) -> tuple[str, str]:
    order = (
        await stub.SubmitOrder(
            submit_order_request(legs=[leg]),
            metadata=caller.metadata,
            timeout=5,
        )
    ).order
    return order.id, order.legs[0].id


def _modify(order_id: str, leg_id: str, quantity: str = "", limit_price: str = "") -> execution_pb2.ModifyLegRequest:
    return modify_leg_request(order_id, leg_id, new_quantity=quantity, new_limit_price=limit_price)


async def _leg(stub: Stub, caller: Caller, order_id: str) -> LegView:
    request = execution_pb2.GetOrderRequest(order_id=order_id)
    return (await stub.GetOrder(request, metadata=caller.metadata, timeout=5)).order.legs[0]


async def _until(
    stub: Stub,
    caller: Caller,
    order_id: str,
    done: Callable[[LegView], bool],
    what: str,
    between: Callable[[], Awaitable[None]] | None = None,
) -> LegView:
    """Poll the leg over gRPC until `done`, under a deadline; `between` runs before each look."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while True:
        if between is not None:
            await between()
        leg = await _leg(stub, caller, order_id)
        if done(leg):
            return leg
        assert time.monotonic() < deadline, f"{what}: the leg is {STATE(leg.state)} {leg}"
        await asyncio.sleep(0.05)


def _venue_order(truth: dict[str, Any], leg_id: str) -> dict[str, Any]:
    """The venue's own record of the leg's order: sent under the leg's id as its idempotency key."""
    (order,) = [order for order in truth["orders"] if order["idempotency_key"] == leg_id]
    return order


async def _moves(pool: asyncpg.Pool, leg_id: str) -> list[tuple[str, str, str]]:
    rows = await pool.fetch(
        "SELECT from_state, to_state, cause FROM leg_transitions WHERE leg_id = $1 ORDER BY id", uuid.UUID(leg_id)
    )
    return [(row["from_state"], row["to_state"], row["cause"]) for row in rows]


async def test_a_filled_leg_grown_by_a_larger_quantity_works_again_and_fills_to_it_at_the_new_price(
    tmp_path: Path, database: Database, pool: asyncpg.Pool
) -> None:
    async with _trading(pool, tmp_path, database, order_fill_parts_max=2, modify_reject_rate=0.0) as (
        stub,
        caller,
        url,
        _,
    ):
        order_id, leg_id = await _submit(stub, caller, _limit_leg("7.5", "1.08345"))
        await _until(stub, caller, order_id, lambda leg: leg.state == execution_pb2.LEG_STATE_FILLED, "the fill")

        request = _modify(order_id, leg_id, quantity="10", limit_price="1.09")
        modifying = (await stub.ModifyLeg(request, metadata=caller.metadata, timeout=5)).leg
        assert (STATE(modifying.state), modifying.quantity, modifying.limit_price) == (
            "LEG_STATE_MODIFYING",
            "7.5",  # the old terms stay in force until the venue confirms
            "1.08345",
        )
        assert (MODIFICATION(modifying.modification.status), modifying.modification.new_quantity) == (
            "MODIFICATION_STATUS_PENDING",
            "10",
        )

        leg = await _until(
            stub,
            caller,
            order_id,
            lambda leg: leg.state == execution_pb2.LEG_STATE_FILLED and Decimal(leg.filled_quantity) == 10,
            "the venue's confirmation and the fills of the re-opened 2.5",
        )
        venue_order = _venue_order(await simulator_truth(url), leg_id)
    assert (leg.quantity, leg.limit_price) == ("10", "1.09")
    assert (MODIFICATION(leg.modification.status), leg.modification.idempotency_key) == (
        "MODIFICATION_STATUS_CONFIRMED",
        request.idempotency_key,
    )
    # the venue applied the amendment: the same terms, and fills up to the new quantity at or above the new limit
    assert (venue_order["quantity"], venue_order["limit_price"], venue_order["final_status"]) == (
        "10",
        "1.09",
        "filled",
    )
    assert sorted(fill.execution_id for fill in leg.fills) == sorted(e["id"] for e in venue_order["executions"])
    refilled = [e for e in venue_order["executions"] if Decimal(e["cumulative_quantity"]) > Decimal("7.5")]
    assert refilled and all(Decimal(e["price"]) >= Decimal("1.09") for e in refilled)
    # the venue named the amendment by the key Ballast sent it under
    modification_id = await pool.fetchval("SELECT modification_id FROM legs WHERE id = $1", uuid.UUID(leg_id))
    assert venue_order["modification"]["idempotency_key"] == str(modification_id)
    moves = [(a, b) for a, b, _ in await _moves(pool, leg_id)]
    assert moves[moves.index(("FILLED", "MODIFYING")) :][:2] == [
        ("FILLED", "MODIFYING"),
        ("MODIFYING", "PARTIALLY_FILLED"),
    ]
    assert moves[-1] == ("PARTIALLY_FILLED", "FILLED")


async def test_a_working_leg_is_amended_in_place_and_keeps_working_under_its_new_terms(
    tmp_path: Path, database: Database, pool: asyncpg.Pool
) -> None:
    # the venue rests the order: it works until canceled and never fills
    async with _trading(pool, tmp_path, database, order_rest_rate=1.0, modify_reject_rate=0.0) as (
        stub,
        caller,
        url,
        _,
    ):
        order_id, leg_id = await _submit(stub, caller, _limit_leg("100", "10.00"))
        assert STATE((await _leg(stub, caller, order_id)).state) == "LEG_STATE_PENDING"
        for quantity, limit_price in (("60", "10.25"), ("80", "")):
            request = _modify(order_id, leg_id, quantity, limit_price)
            modifying = (await stub.ModifyLeg(request, metadata=caller.metadata, timeout=5)).leg
            assert STATE(modifying.state) == "LEG_STATE_MODIFYING"
            leg = await _until(
                stub,
                caller,
                order_id,
                lambda leg: leg.state == execution_pb2.LEG_STATE_PENDING,
                "the venue's confirmation",
            )
            assert MODIFICATION(leg.modification.status) == "MODIFICATION_STATUS_CONFIRMED"
        venue_order = _venue_order(await simulator_truth(url), leg_id)
    assert (leg.quantity, leg.limit_price, leg.filled_quantity) == ("80", "10.25", "0")
    assert (venue_order["quantity"], venue_order["limit_price"], venue_order["status"]) == ("80", "10.25", "new")
    assert [(a, b, cause) for a, b, cause in await _moves(pool, leg_id)][1:] == [
        ("PENDING", "MODIFYING", "api.modify_leg"),
        ("MODIFYING", "PENDING", "venue.modification_confirmed"),
        ("PENDING", "MODIFYING", "api.modify_leg"),
        ("MODIFYING", "PENDING", "venue.modification_confirmed"),
    ]


async def test_an_amendment_the_venue_refuses_leaves_the_leg_as_it_was_and_says_why(
    tmp_path: Path, database: Database, pool: asyncpg.Pool
) -> None:
    async with _trading(pool, tmp_path, database, order_rest_rate=1.0, modify_reject_rate=1.0) as (
        stub,
        caller,
        url,
        _,
    ):
        order_id, leg_id = await _submit(stub, caller, _limit_leg("100", "10.00"))
        request = _modify(order_id, leg_id, "60", "10.25")
        await stub.ModifyLeg(request, metadata=caller.metadata, timeout=5)
        leg = await _until(
            stub,
            caller,
            order_id,
            lambda leg: leg.modification.status == execution_pb2.MODIFICATION_STATUS_REFUSED,
            "the venue's refusal",
        )
        venue_order = _venue_order(await simulator_truth(url), leg_id)
    assert (STATE(leg.state), leg.state_reason, leg.quantity, leg.limit_price) == (
        "LEG_STATE_PENDING",  # still working: a refused amendment never rejects the leg
        "",
        "100",
        "10.00",
    )
    assert (leg.modification.reason, leg.modification.new_quantity) == (
        "the venue refused the change: the order book moved",
        "60",
    )
    assert (venue_order["quantity"], venue_order["limit_price"], venue_order["modification"]["status"]) == (
        "100",
        "10.00",
        "rejected",
    )
    assert (await _moves(pool, leg_id))[-1] == ("MODIFYING", "PENDING", "venue.modification_refused")


async def test_an_answer_whose_webhook_was_dropped_is_recovered_by_asking_the_venue(
    tmp_path: Path, database: Database, pool: asyncpg.Pool
) -> None:
    # every webhook dropped: only the venue's API, asked by the leg's id, can tell Ballast the answer
    async with _trading(
        pool, tmp_path, database, order_rest_rate=1.0, modify_reject_rate=0.0, webhook_drop_rate=1.0
    ) as (stub, caller, url, venue):
        order_id, leg_id = await _submit(stub, caller, _limit_leg("100", "10.00"))  # acknowledged in its answer
        await stub.ModifyLeg(_modify(order_id, leg_id, "40"), metadata=caller.metadata, timeout=5)
        resolver = LegResolver(database, venue, LegResolverSettings(working_check_s=0, backoff_base_s=0))

        async def check() -> None:
            # due now: the shared test database holds many other legs, due as well
            await pool.execute("UPDATE legs SET next_check_at = '-infinity' WHERE id = $1", uuid.UUID(leg_id))
            await resolver.run_once()

        leg = await _until(
            stub,
            caller,
            order_id,
            lambda leg: (
                leg.state == execution_pb2.LEG_STATE_PENDING
                and leg.modification.status == execution_pb2.MODIFICATION_STATUS_CONFIRMED
            ),
            "the answer, by asking the venue",
            between=check,
        )
        venue_order = _venue_order(await simulator_truth(url), leg_id)
    assert all(event["dropped"] for event in venue_order["webhooks"])
    assert (leg.quantity, venue_order["quantity"]) == ("40", "40")
    assert (await _moves(pool, leg_id))[-1] == ("MODIFYING", "PENDING", "venue.modification_confirmed")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"quantity": "7"}, "new_quantity"),
        ({"quantity": "7.5"}, "new_quantity"),
        ({"limit_price": "1.2"}, "new_limit_price"),
    ],
)
async def test_a_filled_leg_refuses_what_would_change_nothing_at_the_venue_and_sends_nothing(
    tmp_path: Path, database: Database, pool: asyncpg.Pool, fields: dict[str, str], field: str
) -> None:
    async with _trading(pool, tmp_path, database, order_fill_parts_max=1) as (stub, caller, url, _):
        order_id, leg_id = await _submit(stub, caller, _limit_leg("7.5", "1.08345"))
        await _until(stub, caller, order_id, lambda leg: leg.state == execution_pb2.LEG_STATE_FILLED, "the fill")
        request = _modify(order_id, leg_id, fields.get("quantity", ""), fields.get("limit_price", ""))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModifyLeg(request, metadata=caller.metadata, timeout=5)
        venue_order = _venue_order(await simulator_truth(url), leg_id)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert field in (caught.value.details() or "")
    assert venue_order["modification"] is None  # nothing reached the venue
    assert not await pool.fetchval("SELECT count(*) FROM venue_instructions WHERE leg_id = $1", uuid.UUID(leg_id))
