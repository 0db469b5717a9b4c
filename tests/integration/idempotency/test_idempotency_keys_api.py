"""Idempotency keys over gRPC (in-process server, real PostgreSQL): a key is the client's, compared exactly,
for one operation and one set of parameters; a repeat replays the first outcome, racing callers get one
payment or order, a key reused otherwise is FAILED_PRECONDITION naming it, and a refused request leaves
the key alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2

from ballast.execution.v1 import execution_pb2
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from server.db.database import Database
from tests.support import field_violations, precondition_subjects, rpc_error, status_details
from tests.support.legs import (
    close_leg,
    filled_leg,
    leg_row,
    leg_trail,
    modify_leg,
)
from tests.support.probes import payment_rows_of, payments_with_key
from tests.support.requests import (
    create_payment_request,
    leg_spec,
    submit_order_request,
)
from tests.support.rpc import assert_invalid_argument_writing_nothing
from tests.support.servers import Caller, World

Stub = payments_pb2_grpc.PaymentServiceStub


#: Codes a racing CreatePayment may answer besides the payment itself (the README: retry with the same key).
RETRYABLE = {grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE}

Code = grpc.StatusCode


def _first_use(world: World, operation: str, key: str, order_id: str, leg_id: str) -> Awaitable[Any]:
    """Use `key` for `operation`, on the given leg where the operation needs one."""
    if operation == "SubmitOrder":
        return world.orders.SubmitOrder(submit_order_request(key), metadata=world.merchant.metadata, timeout=5)
    if operation == "ModifyLeg":
        return modify_leg(world, order_id, leg_id, key, new_quantity="12")
    if operation == "CloseLeg":
        return close_leg(world, order_id, leg_id, key)
    assert operation == "CreatePayment"
    request = create_payment_request(key, "1.00")
    return world.payments.CreatePayment(request, metadata=world.merchant.metadata, timeout=5)


OPERATIONS = ("SubmitOrder", "ModifyLeg", "CloseLeg", "CreatePayment")


# --------------------------------------------------------------------------------------------- idempotency keys


class TestIdempotencyKeys:
    async def test_keys_differing_only_by_case_or_whitespace_or_normalisation_are_different_keys(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        """Keys are opaque strings compared exactly, as Stripe compares them: no folding, no trimming."""
        base = f"Case-{uuid.uuid4()}-\u00e9"
        variants = [base, base.lower(), base.upper(), base + " ", " " + base, base[:-1] + "e\u0301"]
        ids = set()
        for variant in variants:
            response = await payments_stub.CreatePayment(
                create_payment_request(variant, value="7.00"), metadata=alpha.metadata, timeout=5
            )
            assert not response.replayed
            assert response.payment.idempotency_key == variant
            ids.add(response.payment.id)
        assert len(ids) == len(variants)

    @pytest.mark.parametrize(
        "key",
        [
            "\x00",
            "key\x00",
            "\x00key",
            "key\n",
            "\tkey",
            "\u200b",  # zero-width space
            "key\u200f",  # right-to-left mark
            "key\u2028",  # line separator
            "key\x7f",
            "k" * 256,
            "😀" * 256,
            "",
        ],
    )
    async def test_an_empty_overlong_or_non_printable_key_is_invalid_argument_and_writes_nothing(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, key: str
    ) -> None:
        await assert_invalid_argument_writing_nothing(
            payments_stub, alpha, pool, create_payment_request(key), "idempotency_key"
        )

    @pytest.mark.parametrize(
        "changed",
        [
            {"value": "12.35"},
            {"currency": "USD"},
            {"description": "other"},
            {"description": "same\u200b"},
            {"merchant_reference": "INV-2"},
            {"metadata": {"cart": "c-1", "extra": ""}},
            {"metadata": {"cart": "C-1"}},
            {"metadata": {}},
        ],
    )
    async def test_the_same_key_with_any_other_parameter_is_failed_precondition_naming_the_key_exactly(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, changed: dict[str, Any]
    ) -> None:
        key = f"ключ-😀-e\u0301-{uuid.uuid4()}"
        original: dict[str, Any] = {
            "value": "12.34",
            "currency": "EUR",
            "description": "same",
            "merchant_reference": "INV-1",
            "metadata": {"cart": "c-1"},
        }
        first = await payments_stub.CreatePayment(
            create_payment_request(key, **original), metadata=alpha.metadata, timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.CreatePayment(
                create_payment_request(key, **(original | changed)), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert key in (caught.value.details() or "")
        failure = error_details_pb2.PreconditionFailure()
        assert any(detail.Unpack(failure) for detail in status_details(caught.value))
        assert failure.violations[0].subject == f"idempotency_key:{key}"
        assert await payments_with_key(pool, alpha.client_id, key) == 1
        # The refusal changed nothing: the original still replays.
        replay = await payments_stub.CreatePayment(
            create_payment_request(key, **original), metadata=alpha.metadata, timeout=5
        )
        assert replay.replayed
        assert replay.payment == first.payment

    async def test_the_refusal_of_the_longest_legal_multibyte_key_reaches_the_caller_naming_it(
        self, payments_stub: Stub, alpha: Caller
    ) -> None:
        key = "😀" * 223 + uuid.uuid4().hex  # 255 characters, 924 bytes, named three times in the answer
        await payments_stub.CreatePayment(create_payment_request(key), metadata=alpha.metadata, timeout=5)
        for _ in range(10):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await payments_stub.CreatePayment(
                    create_payment_request(key, value="1"), metadata=alpha.metadata, timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
            assert key in (caught.value.details() or "")

    async def test_fifty_concurrent_calls_with_one_key_create_one_payment_that_every_caller_gets_or_may_retry(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        request = create_payment_request(f"race-{uuid.uuid4()}", description="raced")
        outcomes = await asyncio.gather(
            *(payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=10) for _ in range(50)),
            return_exceptions=True,
        )
        answers = [o for o in outcomes if isinstance(o, payments_pb2.CreatePaymentResponse)]
        errors = [o for o in outcomes if not isinstance(o, payments_pb2.CreatePaymentResponse)]
        assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() in RETRYABLE for e in errors), errors
        assert len({answer.payment.id for answer in answers}) == 1
        assert sum(not answer.replayed for answer in answers) <= 1
        assert await payments_with_key(pool, alpha.client_id, request.idempotency_key) == 1
        # Everyone who got ABORTED can retry and gets the one payment.
        retried = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        assert retried.replayed
        assert retried.payment.id == answers[0].payment.id

    async def test_fifty_concurrent_calls_with_one_key_and_two_parameter_sets_create_one_payment(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        key = f"race-mixed-{uuid.uuid4()}"
        requests = [create_payment_request(key, value=f"{10 + index % 2}.00") for index in range(50)]
        outcomes = await asyncio.gather(
            *(payments_stub.CreatePayment(r, metadata=alpha.metadata, timeout=10) for r in requests),
            return_exceptions=True,
        )
        answers = [o for o in outcomes if isinstance(o, payments_pb2.CreatePaymentResponse)]
        refused = [
            o
            for o in outcomes
            if isinstance(o, grpc.aio.AioRpcError) and o.code() == grpc.StatusCode.FAILED_PRECONDITION
        ]
        others = [o for o in outcomes if o not in answers and o not in refused]
        assert all(isinstance(o, grpc.aio.AioRpcError) and o.code() in RETRYABLE for o in others), others
        assert len({answer.payment.id for answer in answers}) == 1
        winner = answers[0].payment.amount.value
        for request, outcome in zip(requests, outcomes, strict=True):
            if outcome in refused:
                assert request.amount.value != winner
            elif outcome in answers:
                assert request.amount.value == winner
        assert await payments_with_key(pool, alpha.client_id, key) == 1

    async def test_two_clients_racing_with_one_key_get_one_payment_each(
        self, payments_stub: Stub, alpha: Caller, beta: Caller, pool: asyncpg.Pool
    ) -> None:
        request = create_payment_request(f"shared-race-{uuid.uuid4()}")
        callers = [alpha, beta] * 25
        outcomes = await asyncio.gather(
            *(payments_stub.CreatePayment(request, metadata=c.metadata, timeout=10) for c in callers),
            return_exceptions=True,
        )
        by_client: dict[str, set[str]] = {alpha.client_id: set(), beta.client_id: set()}
        for caller, outcome in zip(callers, outcomes, strict=True):
            if isinstance(outcome, payments_pb2.CreatePaymentResponse):
                assert outcome.payment.client_id == caller.client_id
                by_client[caller.client_id].add(outcome.payment.id)
            else:
                assert isinstance(outcome, grpc.aio.AioRpcError) and outcome.code() in RETRYABLE, outcome
        assert all(len(ids) == 1 for ids in by_client.values())
        assert by_client[alpha.client_id] != by_client[beta.client_id]
        for caller in (alpha, beta):
            assert await payments_with_key(pool, caller.client_id, request.idempotency_key) == 1

    async def test_a_hundred_concurrent_calls_with_distinct_keys_create_a_hundred_payments(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        requests = [create_payment_request(f"distinct-{uuid.uuid4()}") for _ in range(100)]
        before = await payment_rows_of(pool, alpha.client_id)
        outcomes = await asyncio.gather(
            *(payments_stub.CreatePayment(r, metadata=alpha.metadata, timeout=10) for r in requests)
        )
        assert len({o.payment.id for o in outcomes}) == 100
        assert not any(o.replayed for o in outcomes)
        assert [o.payment.idempotency_key for o in outcomes] == [r.idempotency_key for r in requests]
        after = await payment_rows_of(pool, alpha.client_id)
        assert (after[0] - before[0], after[1] - before[1]) == (100, 100)

    async def test_retrying_after_calls_that_ran_out_of_time_yields_exactly_one_payment(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        request = create_payment_request(f"timed-out-{uuid.uuid4()}")
        ids = set()
        for timeout in (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1):
            try:
                response = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
            else:
                ids.add(response.payment.id)
        final = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        ids.add(final.payment.id)
        assert len(ids) == 1
        assert await payments_with_key(pool, alpha.client_id, request.idempotency_key) == 1

    async def test_an_invalid_request_under_a_used_key_is_invalid_argument_and_leaves_the_key_alone(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        request = create_payment_request(f"used-{uuid.uuid4()}")
        first = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        await assert_invalid_argument_writing_nothing(
            payments_stub, alpha, pool, create_payment_request(request.idempotency_key, value="-1"), "amount.value"
        )
        replay = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        assert replay.replayed and replay.payment == first.payment

    @pytest.mark.parametrize(
        ("first", "second"), [(a, b) for a in OPERATIONS for b in OPERATIONS if a != b], ids=lambda name: name
    )
    async def test_a_key_used_for_one_operation_is_refused_for_another_naming_the_key_and_changing_nothing(
        self, world: World, database: Database, pool: asyncpg.Pool, first: str, second: str
    ) -> None:
        key = f"shared-{uuid.uuid4()}"
        first_order, first_leg = await filled_leg(world, database)
        await _first_use(world, first, key, first_order, first_leg)
        target_order, target_leg = await filled_leg(world, database)
        trail = await leg_trail(pool, target_leg)
        orders = await pool.fetchval("SELECT count(*) FROM orders WHERE client_id = $1", world.merchant.client_id)
        payments = await pool.fetchval("SELECT count(*) FROM payments WHERE client_id = $1", world.merchant.client_id)

        error = await rpc_error(_first_use(world, second, key, target_order, target_leg))
        assert error.code() == Code.FAILED_PRECONDITION, error.details()
        assert key in (error.details() or "")
        assert f"idempotency_key:{key}" in precondition_subjects(error)
        assert await leg_trail(pool, target_leg) == trail
        assert (await leg_row(pool, target_leg))["state"] == "FILLED"
        assert await pool.fetchval("SELECT count(*) FROM orders WHERE client_id = $1", world.merchant.client_id) == (
            orders
        )
        assert await pool.fetchval("SELECT count(*) FROM payments WHERE client_id = $1", world.merchant.client_id) == (
            payments
        )

    async def test_modify_and_close_replay_their_first_outcome_even_after_the_leg_moved_on(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        order_id, leg_id = await filled_leg(world, database)
        modify_key, close_key = f"m-{uuid.uuid4()}", f"c-{uuid.uuid4()}"
        modified = await modify_leg(world, order_id, leg_id, modify_key, new_quantity="12.50")
        closed = await close_leg(world, order_id, leg_id, close_key, reason="enough")
        assert (modified.replayed, modified.leg.state) == (False, execution_pb2.LEG_STATE_MODIFYING)
        assert (closed.replayed, closed.leg.state) == (False, execution_pb2.LEG_STATE_CLOSED)
        trail = await leg_trail(pool, leg_id)

        # "12.5" is the same quantity as "12.50": the same request.
        again = await modify_leg(world, order_id, leg_id, modify_key, new_quantity="12.5")
        assert again.replayed and again.leg.id == leg_id
        assert (await close_leg(world, order_id, leg_id, close_key, reason="enough")).replayed
        for call in (
            modify_leg(world, order_id, leg_id, modify_key, new_quantity="12.51"),
            modify_leg(world, order_id, leg_id, modify_key, new_limit_price="99"),
            close_leg(world, order_id, leg_id, close_key, reason="Enough"),
        ):
            error = await rpc_error(call)
            assert error.code() == Code.FAILED_PRECONDITION
            assert f"idempotency_key:{modify_key}" in precondition_subjects(error) or (
                f"idempotency_key:{close_key}" in precondition_subjects(error)
            )
        assert await leg_trail(pool, leg_id) == trail

    async def test_forty_concurrent_submissions_of_one_key_with_two_leg_sets_create_one_order(
        self, world: World, pool: asyncpg.Pool
    ) -> None:
        key = f"racing-{uuid.uuid4()}"
        leg_sets = ([leg_spec("1")], [leg_spec("2"), leg_spec("3", "ORDER_TYPE_MARKET")])
        outcomes = await asyncio.gather(
            *(
                world.orders.SubmitOrder(
                    submit_order_request(key, leg_sets[index % 2]), metadata=world.merchant.metadata, timeout=10
                )
                for index in range(40)
            ),
            return_exceptions=True,
        )
        successes = [o for o in outcomes if isinstance(o, execution_pb2.SubmitOrderResponse)]
        errors = [o for o in outcomes if not isinstance(o, execution_pb2.SubmitOrderResponse)]
        assert all(
            isinstance(e, grpc.aio.AioRpcError) and e.code() in (Code.FAILED_PRECONDITION, Code.ABORTED) for e in errors
        ), errors
        rows = await pool.fetch(
            "SELECT o.id, array_agg(l.quantity::text ORDER BY l.position) AS quantities FROM orders o"
            " JOIN legs l ON l.order_id = o.id WHERE o.client_id = $1 AND o.idempotency_key = $2 GROUP BY o.id",
            world.merchant.client_id,
            key,
        )
        assert len(rows) == 1
        assert {response.order.id for response in successes} == {str(rows[0]["id"])}
        assert sum(not response.replayed for response in successes) <= 1
        winner = [leg.quantity for leg in successes[0].order.legs]
        assert winner == list(rows[0]["quantities"])
        assert all([leg.quantity for leg in response.order.legs] == winner for response in successes)
        refused = [e for e in errors if e.code() == Code.FAILED_PRECONDITION]  # type: ignore[union-attr]
        assert len(refused) == 20  # every call with the other leg set, none with the winning one

    async def test_spellings_of_one_quantity_are_one_request(self, world: World) -> None:
        key = f"spelling-{uuid.uuid4()}"
        first = await world.orders.SubmitOrder(
            submit_order_request(key, [leg_spec("10", limit_price="101.5")]),
            metadata=world.merchant.metadata,
            timeout=5,
        )
        again = await world.orders.SubmitOrder(
            submit_order_request(key, [leg_spec("10.000000000000", limit_price="101.500")]),
            metadata=world.merchant.metadata,
            timeout=5,
        )
        assert again.replayed and again.order == first.order

    @pytest.mark.parametrize("field", ["quantity", "limit_price"])
    async def test_decimals_differing_only_beyond_the_28th_significant_digit_are_different_requests(
        self, world: World, pool: asyncpg.Pool, field: str
    ) -> None:
        key = f"digits-{uuid.uuid4()}"
        first, second = "123456789012345678.123456789012", "123456789012345678.123456789013"

        def request(value: str) -> execution_pb2.SubmitOrderRequest:
            return submit_order_request(
                key, [leg_spec(value, limit_price="1") if field == "quantity" else leg_spec("1", limit_price=value)]
            )

        created = await world.orders.SubmitOrder(request(first), metadata=world.merchant.metadata, timeout=5)
        assert getattr(created.order.legs[0], field) == first
        error = await rpc_error(world.orders.SubmitOrder(request(second), metadata=world.merchant.metadata, timeout=5))
        assert error.code() == Code.FAILED_PRECONDITION
        assert await pool.fetchval("SELECT count(*) FROM orders WHERE client_id = $1", world.merchant.client_id) == 1

    async def test_an_invalid_modification_under_a_used_key_is_invalid_argument_and_leaves_the_key_alone(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        order_id, leg_id = await filled_leg(world, database, order_type="ORDER_TYPE_MARKET")
        key = f"used-{uuid.uuid4()}"
        await world.orders.SubmitOrder(submit_order_request(key), metadata=world.merchant.metadata, timeout=5)
        trail = await leg_trail(pool, leg_id)
        error = await rpc_error(modify_leg(world, order_id, leg_id, key, new_limit_price="5"))
        assert error.code() == Code.INVALID_ARGUMENT, error.details()
        assert "new_limit_price" in field_violations(error)
        assert await leg_trail(pool, leg_id) == trail
