"""SubmitOrder's input over gRPC (in-process server, real PostgreSQL): every malformed quantity, price, symbol,
currency, reference, key or leg count is INVALID_ARGUMENT naming the field and writes nothing; values at
every limit round-trip exactly.

Every spec uses clients of its own (the `world` fixture starts an in-process server for brand-new
callers, or a fresh Principal is used with the use cases directly), so nothing here reads or moves
the shared `alpha` and `beta`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import pytest

from ballast.execution.v1 import execution_pb2
from tests.support import field_violations, rpc_error
from tests.support.legs import (
    place_order,
    read_order,
)
from tests.support.requests import (
    THIRTY_DIGITS,
    leg_spec,
    submit_order_request,
)
from tests.support.servers import World

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
