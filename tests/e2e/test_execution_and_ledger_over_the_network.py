"""Orders, the ledger and a payment's timeline, called over the network on a server process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import grpc
import pytest

from ballast.execution.v1 import execution_pb2, execution_pb2_grpc
from ballast.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from server.db.database import Database
from tests.e2e.conftest import ServerProcess
from tests.support.requests import create_payment_request, leg_spec, submit_order_request

pytestmark = pytest.mark.e2e


async def test_an_order_a_captured_payment_its_ledger_and_its_timeline(
    start_server: Callable[..., ServerProcess], database: Database
) -> None:
    server = start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        orders = execution_pb2_grpc.ExecutionServiceStub(channel)
        submitted = await orders.SubmitOrder(
            submit_order_request(
                legs=[leg_spec("250000", "ORDER_TYPE_LIMIT", "1.08345", symbol="EURUSD", side="SIDE_SELL")]
            ),
            metadata=server.metadata,
            timeout=5,
        )
        leg = submitted.order.legs[0]
        # the simulator's venue, started beside the server, acknowledged the leg (its fills come by webhook)
        assert (leg.quantity, leg.limit_price) == ("250000", "1.08345")
        assert leg.state in (
            execution_pb2.LEG_STATE_PENDING,
            execution_pb2.LEG_STATE_PARTIALLY_FILLED,
            execution_pb2.LEG_STATE_FILLED,
        )

        payments = payments_pb2_grpc.PaymentServiceStub(channel)
        created = await payments.CreatePayment(
            create_payment_request(value="19.99"),
            metadata=server.metadata,
            timeout=5,
        )
        payment_id = uuid.UUID(created.payment.id)
        # the simulator started beside the server (calm, seed 42: the first payment succeeds) sends
        # its webhooks to the server's HTTP port; its claim of success makes the server's resolver ask
        # the provider's API, whose word takes the payment there
        deadline = asyncio.get_running_loop().time() + 10
        while (
            await payments.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=str(payment_id)), metadata=server.metadata, timeout=5
            )
        ).payment.state != payments_pb2.PAYMENT_STATE_SUCCEEDED:
            assert asyncio.get_running_loop().time() < deadline, "the payment did not succeed once the API was asked"
            await asyncio.sleep(0.05)

        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        balance, timeline = await asyncio.gather(
            ledger.GetBalance(
                ledger_pb2.GetBalanceRequest(account=f"merchant_payable:{server.client_id}", currency_code="EUR"),
                metadata=server.metadata,
                timeout=5,
            ),
            payments.GetPaymentTimeline(
                payments_pb2.GetPaymentTimelineRequest(payment_id=str(payment_id)), metadata=server.metadata, timeout=5
            ),
        )
    assert (balance.balance.value, balance.balance.currency_code) == ("-19.99", "EUR")
    transitions = [entry.transition for entry in timeline.entries if entry.WhichOneof("entry") == "transition"]
    states = [payments_pb2.PaymentState.Name(t.to_state) for t in transitions]
    # PENDING, from the provider's answer or its first webhook, unless the success overtook both
    assert states in (
        ["PAYMENT_STATE_RECORDED", "PAYMENT_STATE_PENDING", "PAYMENT_STATE_SUCCEEDED"],
        ["PAYMENT_STATE_RECORDED", "PAYMENT_STATE_SUCCEEDED"],
    )
    # decided by the provider's API, asked by the resolver after the webhook's claim (kept before it)
    decided = transitions[-1]
    assert (decided.cause, decided.evidence_ref.startswith("simulator:pay_")) == ("resolver.inquiry", True)
    observed = [
        (entry.provider_status.status, entry.provider_status.evidence_ref)
        for entry in timeline.entries
        if entry.WhichOneof("entry") == "provider_status"
    ]
    claimed = [
        n for n, (status, ref) in enumerate(observed) if status == "succeeded" and ref.startswith("simulator:evt_")
    ]
    confirmed = [n for n, (status, ref) in enumerate(observed) if (status, ref) == ("succeeded", decided.evidence_ref)]
    assert len(claimed) == 1 and len(confirmed) == 1 and claimed[0] < confirmed[0], observed
    assert sum(entry.WhichOneof("entry") == "ledger_line" for entry in timeline.entries) == 2
