"""ExecutionService over gRPC (in-process server, real PostgreSQL), and the venue's evidence applied to legs.

Reading orders: a client reads its own orders in every spelling of an id and nothing of another's (an
auditor reads every client's), page tokens continue only the listing they came from, forged ones are
INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import grpc
import pytest

from ballast.execution.v1 import execution_pb2, execution_pb2_grpc
from ballast.ledger.v1 import ledger_pb2
from server.db.database import Database
from server.domain.order_legs import Fill, LegState
from server.domain.provider_status import VenueReport
from tests.support import field_violations, report_to_leg, rpc_error
from tests.support.evidence import captured_payment
from tests.support.legs import (
    place_order,
    read_order,
)
from tests.support.requests import (
    leg_spec,
    page_token,
    submit_order_request,
)
from tests.support.servers import Caller, World

Stub = execution_pb2_grpc.ExecutionServiceStub
L = LegState

Code = grpc.StatusCode


#: Page tokens a client might forge or tamper with.
FORGED_TOKENS = [
    "garbage",
    "=" * 8,
    page_token({"s": None, "t": "2026-01-01T00:00:00", "i": str(uuid.uuid4())}),  # naive time
    page_token({"s": None, "t": "0001-01-01T00:00:00+14:00", "i": str(uuid.uuid4())}),  # before year 1 in UTC
    page_token({"s": None, "t": "2026-01-01T00:00:00+00:00", "i": "{" + str(uuid.uuid4()) + "}"}),
    page_token({"s": None, "t": "2026-01-01T00:00:00+00:00", "i": 5}),
    page_token({"s": "SUCCEEDED", "t": "2026-01-01T00:00:00+00:00", "i": str(uuid.uuid4())}),
    page_token({"s": None, "t": "2026-01-01T00:00:00+00:00"}),
    page_token([1, 2, 3]),
    page_token("x" * 200),
    "A" * 257,
]


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Stub:
    return execution_pb2_grpc.ExecutionServiceStub(channel)


def _submit(
    key: str | None = None, legs: list[execution_pb2.LegSpec] | None = None
) -> execution_pb2.SubmitOrderRequest:
    """An order of a LIMIT buy and a MARKET sell unless `legs` are given."""
    two_legs = [leg_spec(), leg_spec("5", "ORDER_TYPE_MARKET", side="SIDE_SELL")]
    return submit_order_request(key, legs if legs is not None else two_legs, reference="ref-1")


async def _filled_leg(stub: Stub, caller: Caller, database: Database, quantity: str = "10") -> tuple[str, str]:
    """An order whose one leg the venue acknowledged and filled completely; (order id, leg id)."""
    order = (await stub.SubmitOrder(_submit(legs=[leg_spec(quantity)]), metadata=caller.metadata, timeout=5)).order
    leg_id = uuid.UUID(order.legs[0].id)
    assert await report_to_leg(database, leg_id, VenueReport.ACKNOWLEDGED, "venue:ack") == "applied"
    fill = Fill("x-1", Decimal(quantity), Decimal("100"))
    assert await report_to_leg(database, leg_id, VenueReport.FILL, "venue:fill", fill=fill) == "applied"
    return order.id, order.legs[0].id


class TestSubmitOrder:
    async def test_an_order_is_recorded_with_its_legs_submitted(self, stub: Stub, alpha: Caller) -> None:
        response = await stub.SubmitOrder(_submit(), metadata=alpha.metadata, timeout=5)
        order = response.order
        assert not response.replayed
        assert order.client_id == alpha.client_id
        assert [leg.state for leg in order.legs] == [execution_pb2.LEG_STATE_SUBMITTED] * 2
        assert [(leg.quantity, leg.limit_price) for leg in order.legs] == [("10", "101.25"), ("5", "")]
        assert order.legs[0].filled_quantity == "0"

    async def test_the_same_key_replays_and_other_parameters_are_refused(self, stub: Stub, alpha: Caller) -> None:
        key = f"order-{uuid.uuid4()}"
        first = await stub.SubmitOrder(_submit(key), metadata=alpha.metadata, timeout=5)
        again = await stub.SubmitOrder(_submit(key), metadata=alpha.metadata, timeout=5)
        assert again.replayed and again.order == first.order
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitOrder(_submit(key, [leg_spec("11")]), metadata=alpha.metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert key in (caught.value.details() or "")

    async def test_fifty_concurrent_submissions_with_one_key_create_one_order(
        self, stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        key = f"order-{uuid.uuid4()}"
        outcomes = await asyncio.gather(
            *(stub.SubmitOrder(_submit(key), metadata=alpha.metadata, timeout=10) for _ in range(50)),
            return_exceptions=True,
        )
        ids = {o.order.id for o in outcomes if isinstance(o, execution_pb2.SubmitOrderResponse)}
        errors = [o for o in outcomes if not isinstance(o, execution_pb2.SubmitOrderResponse)]
        assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.ABORTED for e in errors), errors
        assert len(ids) == 1
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM orders WHERE client_id = $1 AND idempotency_key = $2", alpha.client_id, key
            )
            == 1
        )

    @pytest.mark.parametrize(
        ("legs", "field"),
        [
            ([], "legs"),
            ([leg_spec("0")], "legs[0].quantity"),
            ([leg_spec("-1")], "legs[0].quantity"),
            ([leg_spec("1.0000000000001")], "legs[0].quantity"),
            ([leg_spec(limit_price="")], "legs[0].limit_price"),
            ([leg_spec(order_type="ORDER_TYPE_MARKET", limit_price="5")], "legs[0].limit_price"),
            ([leg_spec(), leg_spec(side="SIDE_UNSPECIFIED")], "legs[1].side"),
            ([leg_spec(order_type="ORDER_TYPE_UNSPECIFIED")], "legs[0].order_type"),
            ([leg_spec(symbol="")], "legs[0].instrument_symbol"),
            ([leg_spec(currency="XYZ")], "legs[0].currency_code"),
            ([leg_spec()] * 21, "legs"),
        ],
    )
    async def test_bad_legs_are_invalid_argument_naming_the_field_and_write_nothing(
        self, stub: Stub, alpha: Caller, pool: asyncpg.Pool, legs: list[execution_pb2.LegSpec], field: str
    ) -> None:
        before = await pool.fetchval("SELECT count(*) FROM orders WHERE client_id = $1", alpha.client_id)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitOrder(_submit(legs=legs), metadata=alpha.metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)
        assert await pool.fetchval("SELECT count(*) FROM orders WHERE client_id = $1", alpha.client_id) == before

    async def test_an_auditor_may_read_but_not_trade(
        self, stub: Stub, auditor: Caller, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        before = await pool.fetchval("SELECT count(*) FROM orders")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitOrder(_submit(), metadata=auditor.metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await pool.fetchval("SELECT count(*) FROM orders") == before
        created = (await stub.SubmitOrder(_submit(), metadata=alpha.metadata, timeout=5)).order
        listed = await stub.ListOrders(execution_pb2.ListOrdersRequest(), metadata=auditor.metadata, timeout=5)
        assert created.id in {order.id for order in listed.orders}  # every client's orders, newest first


class TestReadingOrders:
    async def test_get_and_list_return_the_clients_orders_only(self, stub: Stub, alpha: Caller, beta: Caller) -> None:
        created = (await stub.SubmitOrder(_submit(), metadata=alpha.metadata, timeout=5)).order
        fetched = await stub.GetOrder(
            execution_pb2.GetOrderRequest(order_id=created.id), metadata=alpha.metadata, timeout=5
        )
        assert fetched.order == created
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetOrder(execution_pb2.GetOrderRequest(order_id=created.id), metadata=beta.metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_list_pages_through_every_order_once(self, stub: Stub, beta: Caller) -> None:
        for _ in range(5):
            await stub.SubmitOrder(_submit(), metadata=beta.metadata, timeout=5)
        seen: list[str] = []
        token = ""
        for _ in range(50):
            page = await stub.ListOrders(
                execution_pb2.ListOrdersRequest(page_size=2, page_token=token), metadata=beta.metadata, timeout=5
            )
            seen += [order.id for order in page.orders]
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen)) >= 5

    async def test_another_service_finds_no_order_by_any_spelling_of_its_id_while_an_auditor_reads_it(
        self, world: World
    ) -> None:
        order = await place_order(world)
        for spelling in (order.id, order.id.upper()):
            error = await rpc_error(
                world.orders.GetOrder(
                    execution_pb2.GetOrderRequest(order_id=spelling), metadata=world.other.metadata, timeout=5
                )
            )
            assert error.code() == Code.NOT_FOUND
            # auditors read every client's orders, as they read every account of the ledger
            read = await world.orders.GetOrder(
                execution_pb2.GetOrderRequest(order_id=spelling), metadata=world.auditor.metadata, timeout=5
            )
            assert read.order.id == order.id
        listed = await world.orders.ListOrders(
            execution_pb2.ListOrdersRequest(page_size=500), metadata=world.auditor.metadata, timeout=5
        )
        assert order.id in {listed_order.id for listed_order in listed.orders}
        assert not (
            await world.orders.ListOrders(execution_pb2.ListOrdersRequest(), metadata=world.other.metadata, timeout=5)
        ).orders
        assert (await read_order(world, order.id.upper())).id == order.id
        for malformed in (
            "",
            "{" + order.id + "}",
            "urn:uuid:" + order.id,
            order.id.replace("-", ""),
            order.id + "\x00",
        ):
            error = await rpc_error(
                world.orders.GetOrder(
                    execution_pb2.GetOrderRequest(order_id=malformed), metadata=world.merchant.metadata, timeout=5
                )
            )
            assert error.code() == Code.INVALID_ARGUMENT
            assert "order_id" in field_violations(error)

    @pytest.mark.parametrize("token", FORGED_TOKENS, ids=range(len(FORGED_TOKENS)))
    async def test_a_forged_list_orders_token_is_invalid_argument_naming_page_token(
        self, world: World, token: str
    ) -> None:
        error = await rpc_error(
            world.orders.ListOrders(
                execution_pb2.ListOrdersRequest(page_token=token), metadata=world.merchant.metadata, timeout=5
            )
        )
        assert error.code() == Code.INVALID_ARGUMENT, error.details()
        assert "page_token" in field_violations(error)

    async def test_a_page_token_continues_only_the_listing_it_came_from(self, world: World, database: Database) -> None:
        for _ in range(3):
            await place_order(world)
            await captured_payment(world, database, "1.00", "EUR")
        account = f"merchant_payable:{world.merchant.client_id}"
        orders_token = (
            await world.orders.ListOrders(
                execution_pb2.ListOrdersRequest(page_size=1), metadata=world.merchant.metadata, timeout=5
            )
        ).next_page_token
        entries_token = (
            await world.ledger.ListEntries(
                ledger_pb2.ListEntriesRequest(page_size=1), metadata=world.merchant.metadata, timeout=5
            )
        ).next_page_token
        account_token = (
            await world.ledger.ListEntries(
                ledger_pb2.ListEntriesRequest(page_size=1, account=account), metadata=world.merchant.metadata, timeout=5
            )
        ).next_page_token
        assert orders_token and entries_token and account_token
        misuses = [
            world.ledger.ListEntries(
                ledger_pb2.ListEntriesRequest(page_token=orders_token), metadata=world.merchant.metadata, timeout=5
            ),
            world.orders.ListOrders(
                execution_pb2.ListOrdersRequest(page_token=entries_token), metadata=world.merchant.metadata, timeout=5
            ),
            world.ledger.ListEntries(
                ledger_pb2.ListEntriesRequest(page_token=account_token), metadata=world.merchant.metadata, timeout=5
            ),
            world.ledger.ListEntries(
                ledger_pb2.ListEntriesRequest(page_token=entries_token, account=account),
                metadata=world.merchant.metadata,
                timeout=5,
            ),
        ]
        for call in misuses:
            error = await rpc_error(call)
            assert error.code() == Code.INVALID_ARGUMENT
            assert "page_token" in field_violations(error)
        # Another client may replay the token: it only ever sees its own orders.
        await place_order(world, caller=world.other)
        page = await world.orders.ListOrders(
            execution_pb2.ListOrdersRequest(page_token=orders_token), metadata=world.other.metadata, timeout=5
        )
        assert {order.client_id for order in page.orders} <= {world.other.client_id}

    async def test_every_order_is_listed_once_newest_first_whatever_the_page_size(self, world: World) -> None:
        created = [(await place_order(world)).id for _ in range(7)]
        for page_size in (1, 3, 7, 500):
            seen: list[str] = []
            token = ""
            for _ in range(20):
                page = await world.orders.ListOrders(
                    execution_pb2.ListOrdersRequest(page_size=page_size, page_token=token),
                    metadata=world.merchant.metadata,
                    timeout=5,
                )
                seen += [order.id for order in page.orders]
                token = page.next_page_token
                if not token:
                    break
            assert seen == created[::-1]
        for page_size in (-1, 501):
            error = await rpc_error(
                world.orders.ListOrders(
                    execution_pb2.ListOrdersRequest(page_size=page_size), metadata=world.merchant.metadata, timeout=5
                )
            )
            assert error.code() == Code.INVALID_ARGUMENT
            assert "page_size" in field_violations(error)


class TestLegChanges:
    async def test_modify_needs_a_leg_at_the_venue_and_names_both_states(self, stub: Stub, alpha: Caller) -> None:
        order = (await stub.SubmitOrder(_submit(), metadata=alpha.metadata, timeout=5)).order
        request = execution_pb2.ModifyLegRequest(
            idempotency_key=f"m-{uuid.uuid4()}", order_id=order.id, leg_id=order.legs[0].id, new_limit_price="99"
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModifyLeg(request, metadata=alpha.metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "SUBMITTED" in (caught.value.details() or "") and "MODIFYING" in (caught.value.details() or "")

    async def test_a_filled_leg_grown_by_a_modification_works_again_once_the_venue_confirms(
        self, stub: Stub, alpha: Caller, database: Database
    ) -> None:
        order_id, leg_id = await _filled_leg(stub, alpha, database)
        request = execution_pb2.ModifyLegRequest(
            idempotency_key=f"m-{uuid.uuid4()}",
            order_id=order_id,
            leg_id=leg_id,
            new_quantity="15",
            new_limit_price="99.5",
        )
        modifying = await stub.ModifyLeg(request, metadata=alpha.metadata, timeout=5)
        assert modifying.leg.state == execution_pb2.LEG_STATE_MODIFYING
        assert (modifying.leg.quantity, modifying.leg.limit_price) == ("10", "101.25")  # until the venue confirms
        assert (modifying.leg.modification.status, modifying.leg.modification.new_quantity) == (
            execution_pb2.MODIFICATION_STATUS_PENDING,
            "15",
        )
        again = await stub.ModifyLeg(request, metadata=alpha.metadata, timeout=5)
        assert again.replayed and again.leg.state == execution_pb2.LEG_STATE_MODIFYING
        assert await report_to_leg(database, leg_id, VenueReport.MODIFIED, "venue:replaced") == "applied"
        leg = (
            await stub.GetOrder(execution_pb2.GetOrderRequest(order_id=order_id), metadata=alpha.metadata, timeout=5)
        ).order.legs[0]
        assert (leg.state, leg.quantity, leg.limit_price, leg.filled_quantity) == (
            execution_pb2.LEG_STATE_PARTIALLY_FILLED,
            "15",
            "99.5",
            "10",
        )
        assert (leg.modification.status, leg.modification.idempotency_key) == (
            execution_pb2.MODIFICATION_STATUS_CONFIRMED,
            request.idempotency_key,
        )

    async def test_close_works_from_any_open_state_once(self, stub: Stub, alpha: Caller) -> None:
        order = (await stub.SubmitOrder(_submit(), metadata=alpha.metadata, timeout=5)).order
        request = execution_pb2.CloseLegRequest(
            idempotency_key=f"c-{uuid.uuid4()}", order_id=order.id, leg_id=order.legs[1].id, reason="client cancelled"
        )
        closed = await stub.CloseLeg(request, metadata=alpha.metadata, timeout=5)
        assert (closed.leg.state, closed.leg.state_reason) == (execution_pb2.LEG_STATE_CLOSED, "client cancelled")
        second = execution_pb2.CloseLegRequest(
            idempotency_key=f"c-{uuid.uuid4()}", order_id=order.id, leg_id=order.legs[1].id, reason="again"
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CloseLeg(second, metadata=alpha.metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    async def test_another_clients_leg_is_not_found(self, stub: Stub, alpha: Caller, beta: Caller) -> None:
        order = (await stub.SubmitOrder(_submit(), metadata=alpha.metadata, timeout=5)).order
        request = execution_pb2.CloseLegRequest(
            idempotency_key=f"c-{uuid.uuid4()}", order_id=order.id, leg_id=order.legs[0].id, reason="mine now"
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CloseLeg(request, metadata=beta.metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_fifty_concurrent_conflicting_changes_to_one_leg_have_one_winner(
        self, stub: Stub, alpha: Caller, database: Database, pool: asyncpg.Pool
    ) -> None:
        order_id, leg_id = await _filled_leg(stub, alpha, database)
        calls = []
        for index in range(50):
            key = f"race-{uuid.uuid4()}"
            if index % 2:
                calls.append(
                    stub.CloseLeg(
                        execution_pb2.CloseLegRequest(
                            idempotency_key=key, order_id=order_id, leg_id=leg_id, reason=f"close {index}"
                        ),
                        metadata=alpha.metadata,
                        timeout=10,
                    )
                )
            else:
                calls.append(
                    stub.ModifyLeg(
                        execution_pb2.ModifyLegRequest(
                            idempotency_key=key, order_id=order_id, leg_id=leg_id, new_quantity="12"
                        ),
                        metadata=alpha.metadata,
                        timeout=10,
                    )
                )
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        winners = [o for o in outcomes if not isinstance(o, BaseException)]
        losers = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(
            isinstance(e, grpc.aio.AioRpcError)
            and e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED)
            for e in losers
        ), losers
        # A close may follow a modification (MODIFYING -> CLOSED), never the other way round.
        states = await pool.fetch(
            "SELECT from_state, to_state FROM leg_transitions WHERE leg_id = $1 AND cause LIKE 'api.%' ORDER BY id",
            uuid.UUID(leg_id),
        )
        assert 1 <= len(winners) == len(states) <= 2
        assert [tuple(row) for row in states] in (
            [("FILLED", "CLOSED")],
            [("FILLED", "MODIFYING")],
            [("FILLED", "MODIFYING"), ("MODIFYING", "CLOSED")],
        )


class TestFills:
    async def test_racing_fills_never_overfill_and_a_repeated_execution_applies_once(
        self, stub: Stub, alpha: Caller, database: Database, pool: asyncpg.Pool
    ) -> None:
        order = (await stub.SubmitOrder(_submit(legs=[leg_spec("10")]), metadata=alpha.metadata, timeout=5)).order
        leg_id = uuid.UUID(order.legs[0].id)
        assert await report_to_leg(database, leg_id, VenueReport.ACKNOWLEDGED, "venue:ack") == "applied"

        async def fill(execution_id: str) -> str:
            execution = Fill(execution_id, Decimal("1.5"), Decimal("100.10"))
            return await report_to_leg(database, leg_id, VenueReport.FILL, f"venue:{execution_id}", fill=execution)

        # 12 distinct executions of 1.5 (18 > 10 ordered), each reported up to three times.
        outcomes = await asyncio.gather(*(fill(f"x-{i % 12}") for i in range(36)), return_exceptions=True)
        assert set(outcomes) <= {"applied", "contradiction"}  # an overfill is refused, in a case for a person
        row = await pool.fetchrow("SELECT state, filled_quantity, fill_notional FROM legs WHERE id = $1", leg_id)
        fills = await pool.fetch("SELECT quantity, price FROM leg_fills WHERE leg_id = $1", leg_id)
        assert row["filled_quantity"] == Decimal("1.5") * len(fills) == Decimal("9.0")
        assert row["fill_notional"] == sum(f["quantity"] * f["price"] for f in fills)
        assert row["state"] == "PARTIALLY_FILLED"
        got = (
            await stub.GetOrder(execution_pb2.GetOrderRequest(order_id=order.id), metadata=alpha.metadata, timeout=5)
        ).order
        assert (got.legs[0].filled_quantity, got.legs[0].average_fill_price) == ("9.0", "100.1")
        assert len(got.legs[0].fills) == 6
