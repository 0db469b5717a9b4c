"""Orders and legs of a world's merchant (tests.support.servers.World), moved as production moves them:
placed over gRPC, acknowledged and filled by the venue's reports (apply_venue_report), modified and
closed over gRPC; and what they left in the database."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from decimal import Decimal
from typing import Any

import asyncpg

from ballast.execution.v1 import execution_pb2
from server.db.database import Database
from server.domain.order_legs import Fill
from server.domain.provider_status import VenueReport
from tests.support.evidence import report_to_leg
from tests.support.requests import close_leg_request, leg_spec, modify_leg_request, submit_order_request
from tests.support.servers import Caller, World


async def place_order(
    world: World, legs: list[execution_pb2.LegSpec] | None = None, caller: Caller | None = None
) -> execution_pb2.Order:
    """A new order of the merchant's (or the caller's), of one LIMIT leg unless `legs` are given."""
    response = await world.orders.SubmitOrder(
        submit_order_request(legs=legs), metadata=(caller or world.merchant).metadata, timeout=5
    )
    return response.order


async def read_order(world: World, order_id: str, caller: Caller | None = None) -> execution_pb2.Order:
    response = await world.orders.GetOrder(
        execution_pb2.GetOrderRequest(order_id=order_id), metadata=(caller or world.merchant).metadata, timeout=10
    )
    return response.order


async def acknowledge_leg(database: Database, leg_id: str | uuid.UUID) -> None:
    """The venue acknowledges the leg: it works there now (PENDING)."""
    assert await report_to_leg(database, leg_id, VenueReport.ACKNOWLEDGED, "venue:ack") == "applied"


async def fill_leg(
    database: Database,
    leg_id: str | uuid.UUID,
    execution_id: str,
    quantity: str,
    price: str = "100",
    expect: str | None = "applied",
) -> str:
    """The venue's execution reported for the leg; what became of it, which must be `expect` unless None."""
    fill = Fill(execution_id, Decimal(quantity), Decimal(price))
    outcome = await report_to_leg(database, leg_id, VenueReport.FILL, f"venue:{execution_id}", fill=fill)
    assert expect is None or outcome == expect, outcome
    return outcome


async def filled_leg(
    world: World, database: Database, quantity: str = "10", order_type: str = "ORDER_TYPE_LIMIT"
) -> tuple[str, str]:
    """An order of the merchant whose one leg the venue acknowledged and filled; (order id, leg id)."""
    order = await place_order(world, [leg_spec(quantity, order_type)])
    leg_id = order.legs[0].id
    await acknowledge_leg(database, leg_id)
    await fill_leg(database, leg_id, "x-full", quantity)
    return order.id, leg_id


async def working_leg(world: World, database: Database, quantity: str = "10") -> tuple[str, str]:
    """An acknowledged, unfilled LIMIT leg of the merchant; (order id, leg id)."""
    order = await place_order(world, [leg_spec(quantity)])
    await acknowledge_leg(database, order.legs[0].id)
    return order.id, order.legs[0].id


def modify_leg(world: World, order_id: str, leg_id: str, key: str | None = None, **fields: str) -> Awaitable[Any]:
    """The merchant's ModifyLeg call; `fields` are new_quantity and new_limit_price."""
    request = modify_leg_request(order_id, leg_id, key, **fields)
    return world.orders.ModifyLeg(request, metadata=world.merchant.metadata, timeout=10)


def close_leg(world: World, order_id: str, leg_id: str, key: str | None = None, reason: str = "done") -> Awaitable[Any]:
    """The merchant's CloseLeg call."""
    request = close_leg_request(order_id, leg_id, key, reason)
    return world.orders.CloseLeg(request, metadata=world.merchant.metadata, timeout=10)


async def leg_row(pool: asyncpg.Pool, leg_id: str | uuid.UUID) -> asyncpg.Record:
    """Everything a move, a fill or a modification may change on the leg's row."""
    return await pool.fetchrow(
        "SELECT state, state_reason, quantity, limit_price, filled_quantity, fill_notional, requested_quantity,"
        " requested_limit_price FROM legs WHERE id = $1",
        uuid.UUID(str(leg_id)),
    )


async def leg_trail(pool: asyncpg.Pool, leg_id: str | uuid.UUID) -> tuple[int, int, int, int]:
    """(transitions, outbox events, audit entries, fills) recorded for a leg's moves (a case a refused
    report opened for a person is not one of them: leg_refusals reads it)."""
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM leg_transitions WHERE leg_id = $1) AS transitions,"
        " (SELECT count(*) FROM outbox WHERE message_key = $2 AND topic <> 'cases.opened') AS events,"
        " (SELECT count(*) FROM audit_log WHERE aggregate_type = 'leg' AND aggregate_id = $2) AS audits,"
        " (SELECT count(*) FROM leg_fills WHERE leg_id = $1) AS fills",
        uuid.UUID(str(leg_id)),
        str(leg_id),
    )
    return row["transitions"], row["events"], row["audits"], row["fills"]


async def leg_refusals(pool: asyncpg.Pool, leg_id: str | uuid.UUID) -> list[str]:
    """Why the venue's reports about the leg were refused, oldest first (its contradiction case's evidence)."""
    evidence = await pool.fetchval(
        "SELECT evidence FROM cases WHERE leg_id = $1 AND kind = 'CONTRADICTORY_VENUE_EVIDENCE'",
        uuid.UUID(str(leg_id)),
    )
    return [piece["refused_because"] for piece in evidence or []]
