"""Order and leg idempotency keys belong to the calling client, over gRPC (in-process server, real PostgreSQL).

Two clients that happen to choose the same key for different requests each get their own order or leg
change, and each one's repeat replays its own, never the other client's.
"""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest

from ballast.execution.v1 import execution_pb2, execution_pb2_grpc
from server.db.database import Database
from server.domain.provider_status import VenueReport
from tests.support import report_to_leg
from tests.support.requests import leg_spec, submit_order_request
from tests.support.servers import Caller

Stub = execution_pb2_grpc.ExecutionServiceStub


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Stub:
    return execution_pb2_grpc.ExecutionServiceStub(channel)


def _order(key: str, symbol: str, quantity: str) -> execution_pb2.SubmitOrderRequest:
    return submit_order_request(key, [leg_spec(quantity, symbol=symbol)], reference=f"ref-{symbol}")


async def _leg_of(stub: Stub, caller: Caller) -> tuple[str, str]:
    """A new order of the caller with one LIMIT leg; (order id, leg id)."""
    request = _order(f"order-{uuid.uuid4()}", "AAPL", "10")
    order = (await stub.SubmitOrder(request, metadata=caller.metadata, timeout=5)).order
    return order.id, order.legs[0].id


async def _working_leg_of(stub: Stub, caller: Caller, database: Database) -> tuple[str, str]:
    """A new order of the caller whose one leg the venue acknowledged and has not filled; (order id, leg id)."""
    order_id, leg_id = await _leg_of(stub, caller)
    assert await report_to_leg(database, leg_id, VenueReport.ACKNOWLEDGED, "venue:ack") == "applied"
    return order_id, leg_id


async def _key_owners(pool: asyncpg.Pool, key: str, *callers: Caller) -> list[str]:
    rows = await pool.fetch(
        "SELECT client_id FROM idempotency_keys WHERE idempotency_key = $1 AND client_id = ANY($2) ORDER BY client_id",
        key,
        [caller.client_id for caller in callers],
    )
    return [row["client_id"] for row in rows]


async def test_two_clients_submitting_other_orders_under_one_key_get_two_orders_and_each_repeat_its_own(
    stub: Stub, alpha: Caller, beta: Caller, pool: asyncpg.Pool
) -> None:
    key = f"shared-order-{uuid.uuid4()}"
    alphas = await stub.SubmitOrder(_order(key, "AAPL", "10"), metadata=alpha.metadata, timeout=5)
    betas = await stub.SubmitOrder(_order(key, "MSFT", "7"), metadata=beta.metadata, timeout=5)
    assert not alphas.replayed and not betas.replayed
    assert alphas.order.id != betas.order.id
    assert (alphas.order.client_id, alphas.order.legs[0].instrument_symbol) == (alpha.client_id, "AAPL")
    assert (betas.order.client_id, betas.order.legs[0].instrument_symbol) == (beta.client_id, "MSFT")

    alpha_again = await stub.SubmitOrder(_order(key, "AAPL", "10"), metadata=alpha.metadata, timeout=5)
    beta_again = await stub.SubmitOrder(_order(key, "MSFT", "7"), metadata=beta.metadata, timeout=5)
    assert alpha_again.replayed and alpha_again.order.id == alphas.order.id
    assert beta_again.replayed and beta_again.order.id == betas.order.id
    orders = await pool.fetch("SELECT client_id FROM orders WHERE idempotency_key = $1 ORDER BY client_id", key)
    assert [row["client_id"] for row in orders] == sorted([alpha.client_id, beta.client_id])


async def test_two_clients_closing_their_legs_under_one_key_each_close_their_own_and_each_repeat_replays_its_own(
    stub: Stub, alpha: Caller, beta: Caller, pool: asyncpg.Pool
) -> None:
    key = f"shared-close-{uuid.uuid4()}"
    (alpha_order, alpha_leg), (beta_order, beta_leg) = await _leg_of(stub, alpha), await _leg_of(stub, beta)

    def close(order_id: str, leg_id: str, reason: str) -> execution_pb2.CloseLegRequest:
        return execution_pb2.CloseLegRequest(idempotency_key=key, order_id=order_id, leg_id=leg_id, reason=reason)

    alphas = await stub.CloseLeg(close(alpha_order, alpha_leg, "alpha's"), metadata=alpha.metadata, timeout=5)
    betas = await stub.CloseLeg(close(beta_order, beta_leg, "beta's"), metadata=beta.metadata, timeout=5)
    assert not alphas.replayed and not betas.replayed
    assert (alphas.leg.id, betas.leg.id) == (alpha_leg, beta_leg)

    alpha_again = await stub.CloseLeg(close(alpha_order, alpha_leg, "alpha's"), metadata=alpha.metadata, timeout=5)
    beta_again = await stub.CloseLeg(close(beta_order, beta_leg, "beta's"), metadata=beta.metadata, timeout=5)
    assert alpha_again.replayed and alpha_again.leg.id == alpha_leg
    assert beta_again.replayed and beta_again.leg.id == beta_leg
    assert await _key_owners(pool, key, alpha, beta) == sorted([alpha.client_id, beta.client_id])


async def test_two_clients_modifying_their_legs_under_one_key_each_modify_their_own_and_each_repeat_replays_its_own(
    stub: Stub, alpha: Caller, beta: Caller, database: Database, pool: asyncpg.Pool
) -> None:
    key = f"shared-modify-{uuid.uuid4()}"
    alpha_order, alpha_leg = await _working_leg_of(stub, alpha, database)
    beta_order, beta_leg = await _working_leg_of(stub, beta, database)

    def modify(order_id: str, leg_id: str, price: str) -> execution_pb2.ModifyLegRequest:
        """A new limit price for a working leg: the plainest modification there is."""
        return execution_pb2.ModifyLegRequest(
            idempotency_key=key, order_id=order_id, leg_id=leg_id, new_limit_price=price
        )

    alphas = await stub.ModifyLeg(modify(alpha_order, alpha_leg, "99.5"), metadata=alpha.metadata, timeout=5)
    betas = await stub.ModifyLeg(modify(beta_order, beta_leg, "98"), metadata=beta.metadata, timeout=5)
    assert not alphas.replayed and not betas.replayed
    assert (alphas.leg.id, betas.leg.id) == (alpha_leg, beta_leg)

    alpha_again = await stub.ModifyLeg(modify(alpha_order, alpha_leg, "99.5"), metadata=alpha.metadata, timeout=5)
    beta_again = await stub.ModifyLeg(modify(beta_order, beta_leg, "98"), metadata=beta.metadata, timeout=5)
    assert alpha_again.replayed and alpha_again.leg.id == alpha_leg
    assert beta_again.replayed and beta_again.leg.id == beta_leg
    assert await _key_owners(pool, key, alpha, beta) == sorted([alpha.client_id, beta.client_id])
