"""Adversarial specifications of orders, legs and fills, payment events, the ledger and the audit chain.

Each test states a promise of the README, the protos or docs/state-machines.md and tries to break it:
modifications below what is filled, venue evidence out of order, thirty-digit decimals, racing fills,
closes and modifications, failures injected between a change and its outbox event or audit entry, SQL
written behind the server's back, forged page tokens and responses too big to send. A failing test
here is a server defect, not a test to fix.

Every test uses clients of its own (the `world` fixture starts an in-process server for brand-new
callers, or a fresh Principal is used with the use cases directly), so nothing here reads or moves
the shared `alpha` and `beta`.
"""

from __future__ import annotations

import asyncio
import decimal
import json
import random
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from ballast.execution.v1 import execution_pb2
from ballast.ledger.v1 import ledger_pb2
from ballast.payments.v1 import payments_pb2
from server.db.database import Budget, Database
from server.domain.order_legs import LEG_MACHINE, Fill, LegState
from server.domain.orders import CloseLeg
from server.domain.payment_states import PAYMENT_MACHINE, PaymentEvent, PaymentState
from server.domain.provider_status import PROVIDER_STATUS_EVENTS, VenueReport, venue_report_for
from server.services import execution
from server.services.payment_events import PaymentOutcome
from tests.support import field_violations, precondition_subjects, report_to_leg, rpc_error
from tests.support.evidence import captured_payment, conclude
from tests.support.faults import DatabaseFailingOn, Injected, OneConnectionPool
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
    read_order,
    working_leg,
)
from tests.support.probes import broken_links, key_exists, payment_trail
from tests.support.requests import (
    THIRTY_DIGITS,
    create_payment_request,
    leg_spec,
    leg_terms,
    new_payment,
    new_principal,
    page_token,
    submit_order_command,
    submit_order_request,
)
from tests.support.servers import World, isolated_server

L = LegState
E = PaymentEvent
P = PaymentState
Code = grpc.StatusCode


# --------------------------------------------------------------------------------------------- SubmitOrder input


def _submit(index: int | None = None, **fields: Any) -> execution_pb2.SubmitOrderRequest:
    """An order of three valid legs, the one at `index` changed by `fields` (given to leg_spec); with no
    `index`, `fields` are the request's own (key, reference)."""
    if index is None:
        return submit_order_request(**fields)
    legs = [leg_spec(), leg_spec("5", "ORDER_TYPE_MARKET", side="SIDE_SELL"), leg_spec("1.5")]
    legs[index] = leg_spec(**fields)
    return submit_order_request(legs=legs)


BAD_SUBMISSIONS: list[tuple[str, Callable[[], execution_pb2.SubmitOrderRequest], str]] = [
    ("exponent", lambda: _submit(2, quantity="1e3"), "legs[2].quantity"),
    ("leading space", lambda: _submit(2, quantity=" 10"), "legs[2].quantity"),
    ("trailing newline", lambda: _submit(2, quantity="10\n"), "legs[2].quantity"),
    ("plus sign", lambda: _submit(0, quantity="+10"), "legs[0].quantity"),
    ("underscore", lambda: _submit(0, quantity="1_000"), "legs[0].quantity"),
    ("arabic-indic digits", lambda: _submit(0, quantity="١٠"), "legs[0].quantity"),
    ("fullwidth digits", lambda: _submit(0, quantity="１０"), "legs[0].quantity"),
    ("dot without fraction", lambda: _submit(0, quantity="10."), "legs[0].quantity"),
    ("fraction without integer", lambda: _submit(0, quantity=".5"), "legs[0].quantity"),
    ("leading zero", lambda: _submit(0, quantity="00.5"), "legs[0].quantity"),
    ("zero with digits", lambda: _submit(0, quantity="0.000000000000"), "legs[0].quantity"),
    ("ten to the eighteenth", lambda: _submit(0, quantity="1" + "0" * 18), "legs[0].quantity"),
    ("forty-one digits", lambda: _submit(0, quantity="1" * 41), "legs[0].quantity"),
    ("NaN", lambda: _submit(1, quantity="NaN"), "legs[1].quantity"),
    ("Infinity", lambda: _submit(1, quantity="Infinity"), "legs[1].quantity"),
    ("side out of range", lambda: _submit(1, side=99), "legs[1].side"),
    ("negative side", lambda: _submit(1, side=-1), "legs[1].side"),
    ("order type out of range", lambda: _submit(2, order_type=77), "legs[2].order_type"),  # type: ignore[arg-type]
    ("limit price too fine", lambda: _submit(0, limit_price="1.0000000000001"), "legs[0].limit_price"),
    ("limit price zero", lambda: _submit(0, limit_price="0"), "legs[0].limit_price"),
    ("symbol of 33", lambda: _submit(1, symbol="A" * 33), "legs[1].instrument_symbol"),
    ("symbol with NUL", lambda: _submit(1, symbol="AAPL\x00"), "legs[1].instrument_symbol"),
    ("symbol with newline", lambda: _submit(1, symbol="AAPL\n"), "legs[1].instrument_symbol"),
    ("symbol with umlaut", lambda: _submit(1, symbol="ÄPFEL"), "legs[1].instrument_symbol"),
    ("symbol with space", lambda: _submit(1, symbol="AA PL"), "legs[1].instrument_symbol"),
    ("lower-case currency", lambda: _submit(2, currency="usd"), "legs[2].currency_code"),
    ("currency with NUL", lambda: _submit(2, currency="EU\x00"), "legs[2].currency_code"),
    ("currency of a megabyte", lambda: _submit(2, currency="E" * 2**20), "legs[2].currency_code"),
    ("reference of 256", lambda: _submit(reference="r" * 256), "client_order_reference"),
    ("reference with NUL", lambda: _submit(reference="ref\x00"), "client_order_reference"),
    ("reference of a megabyte", lambda: _submit(reference="r" * 2**20), "client_order_reference"),
    ("key of 256", lambda: _submit(key="k" * 256), "idempotency_key"),
    ("key with newline", lambda: _submit(key="key\n"), "idempotency_key"),
    ("key with NUL", lambda: _submit(key="key\x00"), "idempotency_key"),
    ("empty key", lambda: _submit(key=""), "idempotency_key"),
    ("21 legs", lambda: _submit(legs=[leg_spec()] * 21), "legs"),
    ("10000 legs", lambda: _submit(legs=[leg_spec()] * 10_000), "legs"),
]


class TestSubmitOrderInput:
    @pytest.mark.parametrize(
        ("build", "field"), [case[1:] for case in BAD_SUBMISSIONS], ids=[case[0] for case in BAD_SUBMISSIONS]
    )
    async def test_bad_input_is_invalid_argument_naming_the_field_and_writes_nothing(
        self,
        world: World,
        pool: asyncpg.Pool,
        build: Callable[[], execution_pb2.SubmitOrderRequest],
        field: str,
    ) -> None:
        request = build()
        error = await rpc_error(world.orders.SubmitOrder(request, metadata=world.merchant.metadata, timeout=10))
        assert error.code() == Code.INVALID_ARGUMENT, error.details()
        assert field in field_violations(error)
        assert await pool.fetchval("SELECT count(*) FROM orders WHERE client_id = $1", world.merchant.client_id) == 0
        assert not await pool.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE client_id = $1", world.merchant.client_id
        )

    async def test_every_problem_of_every_leg_is_reported_at_once(self, world: World) -> None:
        legs = [leg_spec(), leg_spec("-1"), leg_spec(), leg_spec(currency="XXY"), leg_spec(symbol="")]
        error = await rpc_error(
            world.orders.SubmitOrder(submit_order_request(legs=legs), metadata=world.merchant.metadata, timeout=5)
        )
        assert error.code() == Code.INVALID_ARGUMENT
        assert {"legs[1].quantity", "legs[3].currency_code", "legs[4].instrument_symbol"} <= field_violations(error)

    async def test_twenty_legs_are_accepted_and_kept_in_the_order_given(self, world: World) -> None:
        legs = [
            leg_spec(
                f"{index + 1}.{index}", "ORDER_TYPE_MARKET" if index % 2 else "ORDER_TYPE_LIMIT", symbol=f"S{index}"
            )
            for index in range(20)
        ]
        order = await place_order(world, legs)
        fetched = await read_order(world, order.id)
        assert fetched == order
        assert [leg.instrument_symbol for leg in order.legs] == [f"S{index}" for index in range(20)]
        assert [leg.quantity for leg in order.legs] == [f"{index + 1}.{index}" for index in range(20)]
        assert {leg.state for leg in order.legs} == {execution_pb2.LEG_STATE_SUBMITTED}

    async def test_values_at_every_limit_round_trip_exactly(self, world: World) -> None:
        key = "🔑" * 255
        reference = "📈" * 255
        legs = [
            leg_spec(THIRTY_DIGITS, limit_price="0.000000000001", symbol="A._/-" + "Z" * 27),
            leg_spec("0.000000000001", limit_price=THIRTY_DIGITS, side="SIDE_SELL", currency="KWD"),
        ]
        response = await world.orders.SubmitOrder(
            submit_order_request(key, legs, reference), metadata=world.merchant.metadata, timeout=5
        )
        order = await read_order(world, response.order.id)
        assert (order.idempotency_key, order.client_order_reference) == (key, reference)
        assert [(leg.instrument_symbol, leg.quantity, leg.limit_price, leg.currency_code) for leg in order.legs] == [
            ("A._/-" + "Z" * 27, THIRTY_DIGITS, "0.000000000001", "USD"),
            ("AAPL", "0.000000000001", THIRTY_DIGITS, "KWD"),
        ]
        again = await world.orders.SubmitOrder(
            submit_order_request(key, legs, reference), metadata=world.merchant.metadata, timeout=5
        )
        assert again.replayed and again.order.id == order.id


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

    # (A fill for a leg still SUBMITTED proves the acknowledgement it overtook, and is applied:
    # test_adversarial_providers.py, test_a_fill_that_overtakes_the_acknowledgement_is_applied_not_sent_to_a_person.)
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


# --------------------------------------------------------------------------------------------- payment events


#: A provider status word for each event that has one (OUTCOME_UNKNOWN comes from timeouts, not words).
STATUS_WORD = {event: word for word, event in reversed(PROVIDER_STATUS_EVENTS["simulator"].items())}


class TestPaymentEvents:
    async def test_a_hundred_concurrent_mixed_events_on_two_payments_keep_every_invariant(
        self, database: Database, pool: asyncpg.Pool
    ) -> None:
        principal = new_principal("mixed")
        payment_ids = [await new_payment(database, principal, "25.00") for _ in range(2)]
        mix = [E.ACCEPTED, E.SUCCEEDED, E.REFUND_REQUESTED, E.OUTCOME_UNKNOWN, E.REFUND_SUCCEEDED, E.FAILED,
               E.REFUND_FAILED, E.REFUND_REQUESTED, E.REJECTED, E.REFUND_SUCCEEDED]  # fmt: skip
        calls = [
            (payment_id, mix[index % len(mix)], STATUS_WORD.get(mix[index % len(mix)]) if index % 3 else None)
            for payment_id in payment_ids
            for index in range(50)
        ]
        random.Random(11).shuffle(calls)  # noqa: S311 (a fixed, repeatable order)
        outcomes = await asyncio.gather(
            *(conclude(database, payment_id, event, status) for payment_id, event, status in calls),
            return_exceptions=True,
        )
        assert [o for o in outcomes if not isinstance(o, PaymentOutcome)] == []

        for payment_id in payment_ids:
            mine = [o for (p, _, _), o in zip(calls, outcomes, strict=True) if p == payment_id]
            moved = [o for o in mine if isinstance(o, PaymentOutcome) and o.to_state is not None]
            transitions = await pool.fetch(
                "SELECT from_state, to_state FROM payment_transitions WHERE payment_id = $1 ORDER BY id", payment_id
            )
            state = "RECORDED"
            for transition in transitions:
                assert transition["from_state"] == state
                assert PAYMENT_MACHINE.allows(P(transition["from_state"]), P(transition["to_state"]))
                state = transition["to_state"]
            assert len(transitions) == len(moved)
            assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == state
            reached = {t["to_state"] for t in transitions}
            keys = sorted(
                await pool.fetch("SELECT event_key FROM ledger_entries WHERE payment_id = $1", payment_id),
                key=lambda row: row["event_key"],
            )
            expected_keys = [f"payment:{payment_id}:captured"] * ("SUCCEEDED" in reached) + [
                f"payment:{payment_id}:refunded"
            ] * ("REFUNDED" in reached)
            assert [row["event_key"] for row in keys] == expected_keys
            assert sum(len(o.ledger_entry_ids) for o in moved) == len(expected_keys)
            owed = await pool.fetchval(
                "SELECT coalesce(sum(l.amount), 0) FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id"
                " WHERE e.payment_id = $1 AND l.account = $2",
                payment_id,
                f"merchant_payable:{principal.client_id}",
            )
            assert owed == (Decimal("-25.00") if state in ("SUCCEEDED", "REFUND_PENDING") else 0)
            assert (
                await pool.fetchval(
                    "SELECT coalesce(sum(l.amount), 0) FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id"
                    " WHERE e.payment_id = $1",
                    payment_id,
                )
                == 0
            )
            _, _, entries, events, audits = await payment_trail(pool, payment_id)
            assert (entries, events, audits) == (
                len(expected_keys),
                1 + len(transitions) + entries,
                1 + len(transitions),
            )
            statuses = sum(status is not None for p, _, status in calls if p == payment_id)
            assert await pool.fetchval("SELECT count(*) FROM provider_statuses WHERE payment_id = $1", payment_id) == (
                statuses
            )
            assert await broken_links(pool, str(payment_id)) == []

    async def test_racing_refund_confirmations_post_the_refund_once_and_the_merchant_owes_nothing(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        created = await world.payments.CreatePayment(
            create_payment_request(value="999999999999999.99", currency="EUR"),
            metadata=world.merchant.metadata,
            timeout=5,
        )
        payment_id = uuid.UUID(created.payment.id)
        for event in (E.ACCEPTED, E.SUCCEEDED, E.REFUND_REQUESTED, E.REFUND_FAILED, E.REFUND_REQUESTED):
            await conclude(database, payment_id, event)
        outcomes = await asyncio.gather(
            *(conclude(database, payment_id, E.REFUND_SUCCEEDED, "refunded") for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(o, PaymentOutcome) for o in outcomes), outcomes
        assert sum(o.to_state is not None for o in outcomes if isinstance(o, PaymentOutcome)) == 1
        account = f"merchant_payable:{world.merchant.client_id}"
        balance = await world.ledger.GetBalance(
            ledger_pb2.GetBalanceRequest(account=account, currency_code="EUR"),
            metadata=world.merchant.metadata,
            timeout=5,
        )
        assert balance.balance.value == "0.00"
        entries = await world.ledger.ListEntries(
            ledger_pb2.ListEntriesRequest(payment_id=str(payment_id)), metadata=world.merchant.metadata, timeout=5
        )
        assert [
            (entry.event_key, [(line.account, line.amount.value) for line in entry.lines]) for entry in entries.entries
        ] == [
            (
                f"payment:{payment_id}:captured",
                [("provider_clearing", "999999999999999.99"), (account, "-999999999999999.99")],
            ),
            (
                f"payment:{payment_id}:refunded",
                [(account, "999999999999999.99"), ("provider_clearing", "-999999999999999.99")],
            ),
        ]
        assert (await payment_trail(pool, payment_id))[:3] == ("REFUNDED", 6, 2)


# --------------------------------------------------------------------------------------------- ledger reads


class TestLedgerReads:
    @pytest.mark.parametrize(
        "account",
        [
            "provider_clearing",
            "merchant_payable:{other}",
            "merchant_payable:{merchant}:x",
            "merchant_payable:{upper}",
            "merchant_payable",
            "merchant_payable:{merchant}.",
        ],
    )
    async def test_a_service_reads_no_account_but_merchant_payable_of_its_own_client_id(
        self, world: World, database: Database, account: str
    ) -> None:
        await captured_payment(world, database, "3.00", "EUR")
        await captured_payment(world, database, "4.00", "EUR", caller=world.other)
        name = account.format(
            merchant=world.merchant.client_id, other=world.other.client_id, upper=world.merchant.client_id.upper()
        )
        for call in (
            world.ledger.GetBalance(
                ledger_pb2.GetBalanceRequest(account=name, currency_code="EUR"),
                metadata=world.merchant.metadata,
                timeout=5,
            ),
            world.ledger.ListEntries(
                ledger_pb2.ListEntriesRequest(account=name), metadata=world.merchant.metadata, timeout=5
            ),
        ):
            assert (await rpc_error(call)).code() == Code.PERMISSION_DENIED
        own = await world.ledger.GetBalance(
            ledger_pb2.GetBalanceRequest(account=f"merchant_payable:{world.merchant.client_id}", currency_code="EUR"),
            metadata=world.merchant.metadata,
            timeout=5,
        )
        assert own.balance.value == "-3.00"
        listed = await world.ledger.ListEntries(
            ledger_pb2.ListEntriesRequest(), metadata=world.merchant.metadata, timeout=5
        )
        assert [line.amount.value for entry in listed.entries for line in entry.lines] == ["3.00", "-3.00"]

    async def test_balances_are_exact_sums_in_every_currencys_digits(self, world: World, database: Database) -> None:
        captures = [
            ("999999999999999.99", "EUR"),
            ("999999999999999.99", "EUR"),
            ("999999999999999.99", "EUR"),
            ("0.03", "EUR"),
            ("1000000000000000", "JPY"),
            ("1", "JPY"),
            ("0.001", "KWD"),
            ("0.009", "KWD"),
            ("123456789012345.6789", "CLF"),
            ("0.0001", "CLF"),
        ]
        for amount, currency in captures:
            await captured_payment(world, database, amount, currency)
        account = f"merchant_payable:{world.merchant.client_id}"
        expected = {
            "EUR": "-3000000000000000.00",
            "JPY": "-1000000000000001",
            "KWD": "-0.010",
            "CLF": "-123456789012345.6790",
        }
        for currency, value in expected.items():
            for caller in (world.merchant, world.auditor):
                response = await world.ledger.GetBalance(
                    ledger_pb2.GetBalanceRequest(account=account, currency_code=currency),
                    metadata=caller.metadata,
                    timeout=5,
                )
                assert (response.balance.value, response.balance.currency_code) == (value, currency)
        listed = await world.ledger.ListEntries(
            ledger_pb2.ListEntriesRequest(account=account), metadata=world.merchant.metadata, timeout=5
        )
        assert [(entry.lines[1].amount.value, entry.lines[1].amount.currency_code) for entry in listed.entries] == [
            (f"-{amount}", currency) for amount, currency in captures
        ]

    async def test_a_balance_beyond_twenty_eight_significant_digits_is_reported_exactly(
        self, pool: asyncpg.Pool, tmp_path: Path
    ) -> None:
        """Raw SQL can post any balanced amount; a ledger read must show it exactly, never fail or round."""
        suffix = uuid.uuid4().hex[:12]
        amount = "12345678901234567890123456789.01"
        async with pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:
                entry_id = uuid.uuid4()
                await connection.execute(
                    "INSERT INTO ledger_entries (id, event_key) VALUES ($1, $2)", entry_id, f"huge:{suffix}"
                )
                for number, (account, value) in enumerate(
                    [(f"huge_a:{suffix}", amount), (f"huge_b:{suffix}", f"-{amount}")], start=1
                ):
                    await connection.execute(
                        "INSERT INTO ledger_lines (entry_id, line_number, account, currency_code, amount)"
                        " VALUES ($1, $2, $3, 'EUR', $4::numeric)",
                        entry_id,
                        number,
                        account,
                        value,
                    )
                async with isolated_server(OneConnectionPool(connection), tmp_path) as world:  # type: ignore[arg-type]
                    balance = await world.ledger.GetBalance(
                        ledger_pb2.GetBalanceRequest(account=f"huge_b:{suffix}", currency_code="EUR"),
                        metadata=world.auditor.metadata,
                        timeout=5,
                    )
                    assert balance.balance.value == f"-{amount}"
                    listed = await world.ledger.ListEntries(
                        ledger_pb2.ListEntriesRequest(account=f"huge_a:{suffix}"),
                        metadata=world.auditor.metadata,
                        timeout=5,
                    )
                    assert [line.amount.value for line in listed.entries[0].lines] == [amount, f"-{amount}"]
            finally:
                await transaction.rollback()


# --------------------------------------------------------------------------------------------- reading orders


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


class TestReadingOrders:
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


# --------------------------------------------------------------------------------------------- the audit chain


TAMPERING = {
    "edit the actor of an entry": "UPDATE audit_log SET actor = 'someone else' WHERE {entry} AND sequence = 2",
    "edit a payload": 'UPDATE audit_log SET payload = payload || \'{{"cause": "x"}}\' WHERE {entry} AND sequence = 3',
    "re-time an entry": "UPDATE audit_log SET created_at = created_at - interval '1h' WHERE {entry} AND sequence = 3",
    "delete an entry in the middle": "DELETE FROM audit_log WHERE {entry} AND sequence = 2",
    "renumber an entry": "UPDATE audit_log SET sequence = 9 WHERE {entry} AND sequence = 3",
    "delete the newest entry": "DELETE FROM audit_log WHERE {entry} AND sequence = 4",
}


class TestAuditChain:
    @pytest.mark.parametrize("tampering", list(TAMPERING), ids=list(TAMPERING))
    async def test_tampering_with_a_legs_audit_chain_is_found(
        self, world: World, database: Database, pool: asyncpg.Pool, tampering: str
    ) -> None:
        order_id, leg_id = await working_leg(world, database)
        await fill_leg(database, leg_id, "x-1", "4")
        await fill_leg(database, leg_id, "x-2", "6")
        await close_leg(world, order_id, leg_id)
        assert await broken_links(pool, leg_id) == []
        assert (await leg_trail(pool, leg_id))[2] == 4
        entry = "aggregate_type = 'leg' AND aggregate_id = $1"
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
            await connection.execute(TAMPERING[tampering].format(entry=entry), leg_id)
            await connection.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
        assert await broken_links(pool, leg_id) != []


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
