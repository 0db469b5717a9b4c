"""RefundPayment, GetRefund and ListRefunds over gRPC (in-process server, real PostgreSQL, the simulator as the
provider): refunds that race for one payment's money never add up to more than it, a key makes one refund
however often it is sent at once, bad input writes nothing, and a settled refund moves its payment, posts
its reversal once and shows in the payment's timeline.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from server.db.database import Database
from tests.support.requests import create_payment_request
from tests.support.rpc import field_violations, precondition_subjects, rpc_error
from tests.support.servers import in_process_server
from tests.support.simulator import simulator_truth

from .conftest import Shop, ledger_sums, refund_entries, refund_request, shop_over

REFUND_ANSWERED = (payments_pb2.REFUND_STATE_PENDING, payments_pb2.REFUND_STATE_SUCCEEDED)


async def test_fifty_refunds_racing_for_one_payment_never_take_more_than_it_captured(shop: Shop) -> None:
    payment = await shop.succeeded_payment("100.00")
    requests = [refund_request(payment.id, "3.00") for _ in range(50)]
    answers = await asyncio.gather(*(shop.refund(request) for request in requests), return_exceptions=True)

    accepted = [answer.refund for answer in answers if isinstance(answer, payments_pb2.RefundPaymentResponse)]
    refused = [answer for answer in answers if not isinstance(answer, payments_pb2.RefundPaymentResponse)]
    assert all(isinstance(error, grpc.aio.AioRpcError) for error in refused), refused
    codes = {error.code() for error in refused if isinstance(error, grpc.aio.AioRpcError)}
    assert codes <= {grpc.StatusCode.FAILED_PRECONDITION}, [
        (error.code(), error.details()) for error in refused if isinstance(error, grpc.aio.AioRpcError)
    ]
    for error in refused:
        assert isinstance(error, grpc.aio.AioRpcError)
        assert precondition_subjects(error) == ["amount.value"], error.details()
        assert "left to refund" in (error.details() or "")
    assert sum(Decimal(refund.amount.value) for refund in accepted) <= Decimal("100.00")
    assert len(accepted) == 33  # 33 x 3.00 fit in 100.00; a 34th does not
    assert all(refund.state in REFUND_ANSWERED for refund in accepted), accepted
    assert len({refund.id for refund in accepted}) == len(accepted)

    truth = await simulator_truth(shop.url)
    at_provider = [r for r in truth["refunds"] if r["idempotency_key"] in {refund.id for refund in accepted}]
    assert sorted(r["idempotency_key"] for r in at_provider) == sorted(refund.id for refund in accepted)
    rows = await shop.pool.fetchval("SELECT count(*) FROM refunds WHERE payment_id = $1", uuid.UUID(payment.id))
    assert rows == len(accepted)

    await shop.settled_refunds(refund.id for refund in accepted)
    settled = [await shop.refund_of(refund.id) for refund in accepted]
    succeeded = [refund for refund in settled if refund.state == payments_pb2.REFUND_STATE_SUCCEEDED]
    assert len(succeeded) == len(accepted)  # the provider fails none here
    assert await refund_entries(shop.pool, (refund.id for refund in settled)) == {
        refund.id: (1 if refund.state == payments_pb2.REFUND_STATE_SUCCEEDED else 0) for refund in settled
    }
    after = await shop.payment(payment.id)
    assert Decimal(after.refunded_amount.value) == sum(Decimal(refund.amount.value) for refund in succeeded)
    assert after.state == payments_pb2.PAYMENT_STATE_PARTIALLY_REFUNDED
    assert set((await ledger_sums(shop.pool)).values()) <= {Decimal(0)}


async def test_one_key_sent_fifty_times_at_once_makes_one_refund(shop: Shop) -> None:
    payment = await shop.succeeded_payment("100.00")
    request = refund_request(payment.id, "10.00")
    answers = await asyncio.gather(*(shop.refund(request) for _ in range(50)))

    assert len({answer.refund.id for answer in answers}) == 1
    assert sorted(answer.replayed for answer in answers) == [False] + [True] * 49
    refunds, keys, at_provider = await shop.rows()
    # the payment's key and the refund's key; one refund, sent to the provider under one key
    assert (refunds, keys, at_provider) == (1, 2, 1)
    truth = await simulator_truth(shop.url)
    [provider_refund] = [r for r in truth["refunds"] if r["idempotency_key"] == answers[0].refund.id]
    assert Decimal(provider_refund["amount"]) == Decimal("10.00")


async def _refused_writing_nothing(shop: Shop, request: payments_pb2.RefundPaymentRequest) -> grpc.aio.AioRpcError:
    before = await shop.rows()
    error = await rpc_error(shop.refund(request))
    assert await shop.rows() == before
    return error


@pytest.mark.parametrize(
    ("value", "currency", "code", "field"),
    [
        ("100.01", "EUR", grpc.StatusCode.FAILED_PRECONDITION, "amount.value"),
        ("0", "EUR", grpc.StatusCode.INVALID_ARGUMENT, "amount.value"),
        ("0.00", "EUR", grpc.StatusCode.INVALID_ARGUMENT, "amount.value"),
        ("-1.00", "EUR", grpc.StatusCode.INVALID_ARGUMENT, "amount.value"),
        ("1.00", "USD", grpc.StatusCode.INVALID_ARGUMENT, "amount.currency_code"),
        ("1.001", "EUR", grpc.StatusCode.INVALID_ARGUMENT, "amount.value"),
    ],
)
async def test_a_bad_amount_is_refused_naming_the_field_and_writes_nothing(
    shop: Shop, value: str, currency: str, code: grpc.StatusCode, field: str
) -> None:
    payment = await shop.succeeded_payment("100.00")
    error = await _refused_writing_nothing(shop, refund_request(payment.id, value, currency=currency))
    assert error.code() == code, error.details()
    named = precondition_subjects(error) if code == grpc.StatusCode.FAILED_PRECONDITION else field_violations(error)
    assert field in named, (named, error.details())


async def test_an_amount_over_what_is_left_after_another_refund_is_failed_precondition(shop: Shop) -> None:
    payment = await shop.succeeded_payment("10.00")
    await shop.refund(refund_request(payment.id, "6.00"))
    error = await _refused_writing_nothing(shop, refund_request(payment.id, "4.01"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert precondition_subjects(error) == ["amount.value"]
    assert "4.00" in (error.details() or "")  # what is left


async def test_a_payment_recorded_by_a_server_without_a_provider_cannot_be_refunded(
    shop: Shop, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    data_dir = tmp_path / "no-provider"
    data_dir.mkdir()
    async with (
        in_process_server(pool, (shop.merchant,), data_dir) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        bare = payments_pb2_grpc.PaymentServiceStub(channel)
        created = await bare.CreatePayment(
            create_payment_request(value="10.00"), metadata=shop.merchant.metadata, timeout=5
        )
        assert created.payment.state == payments_pb2.PAYMENT_STATE_RECORDED
        for stub in (bare, shop.payments):
            before = await shop.rows()
            error = await rpc_error(
                stub.RefundPayment(
                    refund_request(created.payment.id, "1.00"), metadata=shop.merchant.metadata, timeout=5
                )
            )
            assert await shop.rows() == before
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            assert precondition_subjects(error) == ["payment_id"]
            assert "RECORDED" in (error.details() or "")


async def test_a_failed_payment_cannot_be_refunded(pool: asyncpg.Pool, database: Database, tmp_path: Path) -> None:
    async for shop in shop_over(pool, database, tmp_path, success_rate=0.0):
        payment = await shop.created_payment("10.00")
        await shop.settled_payment(payment.id)
        assert (await shop.payment(payment.id)).state == payments_pb2.PAYMENT_STATE_FAILED
        error = await _refused_writing_nothing(shop, refund_request(payment.id, "1.00"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert precondition_subjects(error) == ["payment_id"]
        assert "FAILED" in (error.details() or "")


async def test_another_clients_payment_is_not_found_and_nothing_is_written(shop: Shop) -> None:
    payment = await shop.succeeded_payment("10.00")
    before = await shop.rows()
    other_refunds = "SELECT count(*) FROM refunds WHERE client_id = $1"
    other_keys = "SELECT count(*) FROM idempotency_keys WHERE client_id = $1"
    error = await rpc_error(
        shop.payments.RefundPayment(refund_request(payment.id, "1.00"), metadata=shop.other.metadata, timeout=5)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert await shop.rows() == before
    assert await shop.pool.fetchval(other_refunds, shop.other.client_id) == 0
    assert await shop.pool.fetchval(other_keys, shop.other.client_id) == 0


async def test_the_same_key_with_other_parameters_is_failed_precondition_and_writes_nothing(shop: Shop) -> None:
    payment = await shop.succeeded_payment("10.00")
    key = f"refund-{uuid.uuid4()}"
    first = await shop.refund(refund_request(payment.id, "1.00", key=key))
    assert not first.replayed
    for other in (
        refund_request(payment.id, "2.00", key=key),
        refund_request(payment.id, None, key=key),
        refund_request(payment.id, "1.00", key=key, reason="another reason"),
    ):
        error = await _refused_writing_nothing(shop, other)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert key in (error.details() or "")
    again = await shop.refund(refund_request(payment.id, "1.00", key=key))
    assert again.replayed and again.refund.id == first.refund.id


@pytest.mark.parametrize("payment_id", ["", "not-a-uuid", "12345"])
async def test_a_bad_payment_id_is_invalid_argument_and_writes_nothing(shop: Shop, payment_id: str) -> None:
    error = await _refused_writing_nothing(shop, refund_request(payment_id, "1.00"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "payment_id" in field_violations(error)


async def test_an_unknown_payment_is_not_found_and_writes_nothing(shop: Shop) -> None:
    error = await _refused_writing_nothing(shop, refund_request(str(uuid.uuid4()), "1.00"))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()


# ------------------------------------------------------------------------------- what a refund does


async def test_an_omitted_amount_refunds_all_that_is_left(shop: Shop) -> None:
    payment = await shop.succeeded_payment("10.00")
    part = await shop.refund(refund_request(payment.id, "3.25"))
    rest = await shop.refund(refund_request(payment.id, None))
    assert (rest.refund.amount.value, rest.refund.amount.currency_code) == ("6.75", "EUR")
    error = await _refused_writing_nothing(shop, refund_request(payment.id, None))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert precondition_subjects(error) == ["amount.value"]

    await shop.settled_refunds([part.refund.id, rest.refund.id])
    after = await shop.payment(payment.id)
    assert after.state == payments_pb2.PAYMENT_STATE_REFUNDED
    assert after.refunded_amount == after.amount


async def test_a_full_refund_ends_the_payment_refunded(shop: Shop) -> None:
    payment = await shop.succeeded_payment("25.00")
    assert (payment.refunded_amount.value, payment.refunded_amount.currency_code) in (("0", "EUR"), ("0.00", "EUR"))
    refund = (await shop.refund(refund_request(payment.id, "25.00"))).refund
    assert refund.state in REFUND_ANSWERED
    assert refund.payment_id == payment.id and refund.client_id == shop.merchant.client_id

    await shop.settled_refunds([refund.id])
    assert (await shop.refund_of(refund.id)).state == payments_pb2.REFUND_STATE_SUCCEEDED
    after = await shop.payment(payment.id)
    assert after.state == payments_pb2.PAYMENT_STATE_REFUNDED
    assert after.refunded_amount == after.amount
    assert await refund_entries(shop.pool, [refund.id]) == {refund.id: 1}
    assert set((await ledger_sums(shop.pool)).values()) <= {Decimal(0)}


async def test_a_partial_refund_leaves_the_payment_partially_refunded(shop: Shop) -> None:
    payment = await shop.succeeded_payment("25.00")
    refund = (await shop.refund(refund_request(payment.id, "5.50"))).refund
    found = await shop.refund_of(refund.id)
    assert (found.id, found.amount.value, found.amount.currency_code) == (refund.id, "5.50", "EUR")

    await shop.settled_refunds([refund.id])
    after = await shop.payment(payment.id)
    assert after.state == payments_pb2.PAYMENT_STATE_PARTIALLY_REFUNDED
    assert (after.refunded_amount.value, after.refunded_amount.currency_code) == ("5.50", "EUR")
    entry = await shop.pool.fetchrow(
        "SELECT e.id, array_agg(l.account || ' ' || l.amount::text ORDER BY l.line_number) AS lines"
        " FROM ledger_entries e JOIN ledger_lines l ON l.entry_id = e.id WHERE e.event_key = $1 GROUP BY e.id",
        f"refund:{refund.id}:succeeded",
    )
    assert entry is not None
    assert sorted(entry["lines"]) == sorted(
        [f"merchant_payable:{shop.merchant.client_id} 5.50", "provider_clearing -5.50"]
    )


async def test_the_timeline_shows_each_move_of_the_payments_refunds(shop: Shop) -> None:
    payment = await shop.succeeded_payment("10.00")
    refund = (await shop.refund(refund_request(payment.id, "4.00"))).refund

    async def refund_moves() -> list[Any]:
        timeline = await shop.payments.GetPaymentTimeline(
            payments_pb2.GetPaymentTimelineRequest(payment_id=payment.id), metadata=shop.merchant.metadata, timeout=5
        )
        return [entry.refund_transition for entry in timeline.entries if entry.HasField("refund_transition")]

    moves = await refund_moves()
    assert moves, "the timeline shows no refund_transition"
    assert {move.refund_id for move in moves} == {refund.id}
    assert moves[-1].to_state == refund.state
    assert all(move.amount.value == "4.00" for move in moves if move.HasField("amount"))

    await shop.settled_refunds([refund.id])
    moves = await refund_moves()
    assert moves[-1].to_state == payments_pb2.REFUND_STATE_SUCCEEDED


async def test_list_refunds_pages_oldest_first(shop: Shop) -> None:
    payment = await shop.succeeded_payment("10.00")
    made = [(await shop.refund(refund_request(payment.id, "1.00"))).refund.id for _ in range(5)]
    listed: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await shop.payments.ListRefunds(
            payments_pb2.ListRefundsRequest(payment_id=payment.id, page_size=2, page_token=token),
            metadata=shop.merchant.metadata,
            timeout=5,
        )
        pages += 1
        assert len(page.refunds) <= 2
        listed += [refund.id for refund in page.refunds]
        token = page.next_page_token
        if not token:
            break
    assert listed == made
    assert pages == 3
    error = await rpc_error(
        shop.payments.ListRefunds(
            payments_pb2.ListRefundsRequest(payment_id=payment.id), metadata=shop.other.metadata, timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
