"""Orders, the ledger and a payment's timeline, called over the network on a server process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import grpc
import pytest

from ballast.common.v1.money_pb2 import Money
from ballast.execution.v1 import execution_pb2, execution_pb2_grpc
from ballast.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from server.db.database import Budget, Database
from server.domain.payment_states import PaymentEvent
from server.services.payment_events import Evidence, apply_payment_event
from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.e2e


async def test_an_order_a_captured_payment_its_ledger_and_its_timeline(
    start_server: Callable[..., ServerProcess], database: Database
) -> None:
    server = start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        orders = execution_pb2_grpc.ExecutionServiceStub(channel)
        submitted = await orders.SubmitOrder(
            execution_pb2.SubmitOrderRequest(
                idempotency_key=f"o-{uuid.uuid4()}",
                legs=[
                    execution_pb2.LegSpec(
                        instrument_symbol="EURUSD",
                        side=execution_pb2.SIDE_SELL,
                        quantity="250000",
                        order_type=execution_pb2.ORDER_TYPE_LIMIT,
                        limit_price="1.08345",
                        currency_code="USD",
                    )
                ],
            ),
            metadata=server.metadata,
            timeout=5,
        )
        leg = submitted.order.legs[0]
        assert (leg.state, leg.quantity, leg.limit_price) == (execution_pb2.LEG_STATE_SUBMITTED, "250000", "1.08345")

        payments = payments_pb2_grpc.PaymentServiceStub(channel)
        created = await payments.CreatePayment(
            payments_pb2.CreatePaymentRequest(
                idempotency_key=f"p-{uuid.uuid4()}", amount=Money(value="19.99", currency_code="EUR")
            ),
            metadata=server.metadata,
            timeout=5,
        )
        payment_id = uuid.UUID(created.payment.id)
        evidence = Evidence("webhook.simulator", "evt-1", provider="simulator", provider_status="succeeded")
        await apply_payment_event(database, payment_id, PaymentEvent.SUCCEEDED, evidence, Budget.within(5))

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
    kinds = [entry.WhichOneof("entry") for entry in timeline.entries]
    assert kinds == ["transition", "provider_status", "transition", "ledger_line", "ledger_line"]
