"""Refunds whose outcome the provider hides or tells contradictorily end where the provider really left
them: accept-then-timeout ends SUCCEEDED through the resolver with one refund at the provider; a storm
of refund webhooks (duplicated, reordered, contradicting) never moves a refund backwards and never
decides one without the provider's API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import pytest

from ballast.common.v1 import money_pb2
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from server.db.database import Budget, Database
from server.domain.identity import Principal, Role
from server.domain.money import Money
from server.domain.payment_states import PaymentState, Witness
from server.domain.refund_states import RefundEvent, RefundState
from server.domain.refunds import RefundPayment
from server.providers.breaker import Breaker, BreakerSettings
from server.providers.gateway import GatewayClient
from server.services.payment_resolver import PaymentResolver, PaymentResolverSettings
from server.services.refund_events import RefundEvidence, apply_refund_evidence
from server.services.refund_resolver import RefundResolver
from server.services.refunds import refund_payment
from server.services.submission import create_and_submit
from tests.support.requests import create_payment_command
from tests.support.servers import in_process_server, new_callers
from tests.support.simulator import simulated_provider, simulator_truth
from tests.support.waiting import until

#: Refunds settle a little after they are asked for, and none fails unless a spec says so.
SETTINGS = {
    "success_rate": 1.0,
    "settle_min_ms": 5,
    "settle_max_ms": 20,
    "refund_settle_min_ms": 50,
    "refund_settle_max_ms": 100,
    "refund_fail_rate": 0.0,
    "webhook_delay_ms": 50,
    "webhook_retry_base_ms": 20,
    "retry_after_s": 0,
}
#: What a refund can be answered with before the provider decides it.
UNDECIDED_ANSWERS = (
    payments_pb2.REFUND_STATE_RECORDED,
    payments_pb2.REFUND_STATE_PENDING,
    payments_pb2.REFUND_STATE_UNKNOWN,
)
RESOLVER = PaymentResolverSettings(
    unknown_grace_s=0,
    pending_overdue_s=0.2,
    backoff_base_s=0.1,
    backoff_max_s=0.3,
    checks_max=100,
    provider_timeout_s=2,
)


@asynccontextmanager
async def gateway_to(url: str, fault: str | None = None) -> AsyncIterator[GatewayClient]:
    headers = {"Simulator-Fault": fault} if fault else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        yield GatewayClient(
            "simulator", url, session, Breaker("simulator.payments", BreakerSettings(failures_max=1000))
        )


async def captured_payment(database: Database, gateway: GatewayClient, principal: Principal, amount: str) -> uuid.UUID:
    result = await create_and_submit(
        database, gateway, principal, create_payment_command(f"pay-{uuid.uuid4()}", amount), Budget.within(10)
    )
    payment_id = result.payment.id
    async with database.connection(Budget.within(5)) as connection:
        # other tests' undecided payments (their providers are gone) are left out of this resolver
        await connection.execute(
            "UPDATE payments SET next_check_at = 'infinity' WHERE client_id <> $1"
            " AND (state IN ('RECORDED', 'UNKNOWN', 'PENDING') OR next_check_at IS NOT NULL)",
            principal.client_id,
        )
    resolver = PaymentResolver(database, gateway, RESOLVER)

    async def captured() -> bool:
        await resolver.run_once()  # the succeeded webhook makes Ballast ask the API, which decides
        async with database.connection(Budget.within(5)) as connection:
            state = await connection.fetchval("SELECT state FROM payments WHERE id = $1", payment_id)
        return bool(state == PaymentState.SUCCEEDED)

    await until(captured, "the payment captured (its webhook or the API said succeeded)")
    return payment_id


async def park_other_refunds(pool: asyncpg.Pool, client_id: str) -> None:
    """Other tests' undecided refunds (their providers are gone) are left out of this test's resolver."""
    await pool.execute(
        "UPDATE refunds SET next_check_at = 'infinity' WHERE client_id <> $1"
        " AND (state IN ('RECORDED', 'UNKNOWN', 'PENDING') OR next_check_at IS NOT NULL)",
        client_id,
    )


async def resolve_until(
    database: Database, gateway: GatewayClient, pool: asyncpg.Pool, refund_id: uuid.UUID, state: RefundState
) -> None:
    resolver = RefundResolver(database, gateway, RESOLVER)

    async def settled() -> bool:
        await resolver.run_once()
        return bool(await pool.fetchval("SELECT state FROM refunds WHERE id = $1", refund_id) == state.value)

    await until(settled, f"refund {refund_id} {state.value} through the resolver", timeout_s=20)


async def test_accept_then_timeout_on_a_refund_ends_succeeded_through_the_resolver_with_one_refund_at_the_provider(
    tmp_path: Path, database: Database, pool: asyncpg.Pool
) -> None:
    merchant, _, _ = new_callers()
    principal = Principal(merchant.client_id, Role.SERVICE)
    async with (
        simulated_provider(tmp_path, database, "calm", **SETTINGS) as url,
        gateway_to(url) as gateway,
        gateway_to(url, "accept-then-timeout") as hurried,
        in_process_server(pool, [merchant], tmp_path, hurried, BALLAST_PROVIDER_TIMEOUT_MS="500") as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        payment_id = await captured_payment(database, gateway, principal, "40.00")
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        key = f"refund-{uuid.uuid4()}"
        request = payments_pb2.RefundPaymentRequest(
            idempotency_key=key,
            payment_id=str(payment_id),
            amount=money_pb2.Money(value="15.00", currency_code="EUR"),
            reason="damaged",
        )
        answer = await stub.RefundPayment(request, metadata=merchant.metadata, timeout=5)
        # it was taken and no answer came: UNKNOWN, or PENDING when the provider's pending webhook came first
        assert answer.refund.state in (payments_pb2.REFUND_STATE_UNKNOWN, payments_pb2.REFUND_STATE_PENDING)
        refund_id = uuid.UUID(answer.refund.id)

        await park_other_refunds(pool, merchant.client_id)
        await resolve_until(database, gateway, pool, refund_id, RefundState.SUCCEEDED)

        truth = [r for r in (await simulator_truth(url))["refunds"] if r["idempotency_key"] == str(refund_id)]
        assert len(truth) == 1 and truth[0]["status"] == "succeeded"
        assert Decimal(truth[0]["amount"]) == Decimal("15.00")
        entries = await pool.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE event_key = $1", f"refund:{refund_id}:succeeded"
        )
        assert entries == 1
        payment = await stub.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=str(payment_id)), metadata=merchant.metadata
        )
        assert payment.payment.state == payments_pb2.PAYMENT_STATE_PARTIALLY_REFUNDED
        assert Decimal(payment.payment.refunded_amount.value) == Decimal("15.00")
        # the caller's retry with its key gets the same refund, settled, and nothing is sent again
        again = await stub.RefundPayment(request, metadata=merchant.metadata, timeout=5)
        assert (again.refund.id, again.replayed, again.refund.state) == (
            str(refund_id),
            True,
            payments_pb2.REFUND_STATE_SUCCEEDED,
        )
        truth = [r for r in (await simulator_truth(url))["refunds"] if r["idempotency_key"] == str(refund_id)]
        assert len(truth) == 1


def _webhook(refund_id: uuid.UUID, status: str, provider_refund_id: str, amount: str) -> RefundEvidence:
    return RefundEvidence(
        "webhook.simulator",
        f"simulator:evt_{uuid.uuid4().hex}",
        provider="simulator",
        provider_status=status,
        provider_refund_id=provider_refund_id,
        witness=Witness.WEBHOOK,
        amount=amount,
        currency_code="EUR",
    )


async def test_a_refund_webhook_storm_never_decides_or_reverses_a_refund_and_the_api_settles_it(
    tmp_path: Path, database: Database, pool: asyncpg.Pool
) -> None:
    merchant, _, _ = new_callers()
    principal = Principal(merchant.client_id, Role.SERVICE)
    async with (
        simulated_provider(
            tmp_path, database, "calm", **(SETTINGS | {"refund_settle_min_ms": 300, "refund_settle_max_ms": 400})
        ) as url,
        gateway_to(url) as gateway,
        in_process_server(pool, [merchant], tmp_path, gateway) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        payment_id = await captured_payment(database, gateway, principal, "20.00")
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        answer = await stub.RefundPayment(
            payments_pb2.RefundPaymentRequest(idempotency_key=f"r-{uuid.uuid4()}", payment_id=str(payment_id)),
            metadata=merchant.metadata,
            timeout=5,
        )
        refund_id = uuid.UUID(answer.refund.id)
        assert answer.refund.state == payments_pb2.REFUND_STATE_PENDING
        provider_refund_id = answer.refund.provider_refund_id

        # contradicting webhooks while it is pending: none decides it (the API is asked instead)
        for status in ("failed", "succeeded", "failed", "pending"):
            async with database.connection(Budget.within(5)) as connection, connection.transaction():
                outcome = await apply_refund_evidence(
                    connection,
                    refund_id,
                    RefundEvent(status.upper() if status != "pending" else "ACCEPTED"),
                    _webhook(refund_id, status, provider_refund_id, "20.00"),
                )
            assert outcome.to_state is None
        assert await pool.fetchval("SELECT state FROM refunds WHERE id = $1", refund_id) == "PENDING"
        # a webhook about another amount moves nothing and opens a case
        async with database.connection(Budget.within(5)) as connection, connection.transaction():
            misfit = await apply_refund_evidence(
                connection,
                refund_id,
                RefundEvent.SUCCEEDED,
                _webhook(refund_id, "succeeded", provider_refund_id, "2.00"),
            )
        assert misfit.case_id is not None and misfit.to_state is None

        await park_other_refunds(pool, merchant.client_id)
        await resolve_until(database, gateway, pool, refund_id, RefundState.SUCCEEDED)
        # late and contradicting words after the decision: never a backward move
        async with database.connection(Budget.within(5)) as connection, connection.transaction():
            late = await apply_refund_evidence(
                connection, refund_id, RefundEvent.FAILED, _webhook(refund_id, "failed", provider_refund_id, "20.00")
            )
        assert late.to_state is None
        assert await pool.fetchval("SELECT state FROM refunds WHERE id = $1", refund_id) == "SUCCEEDED"
        assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "REFUNDED"
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM ledger_entries WHERE event_key = $1", f"refund:{refund_id}:succeeded"
            )
            == 1
        )
        unbalanced = await pool.fetchval(
            "SELECT count(*) FROM (SELECT entry_id FROM ledger_lines GROUP BY entry_id, currency_code"
            " HAVING sum(amount) <> 0) AS bad"
        )
        assert unbalanced == 0
        # no case about the payment but the misfit's
        kinds = await pool.fetch("SELECT kind FROM cases WHERE payment_id = $1", payment_id)
        assert [row["kind"] for row in kinds] == ["REFUND_EVIDENCE_MISMATCH"]


@pytest.mark.parametrize("deadline_s", [0.05, 0.15, 0.3])
async def test_a_refund_asked_with_a_short_deadline_is_answered_within_it_and_ends_as_the_provider_left_it(
    tmp_path: Path, database: Database, pool: asyncpg.Pool, deadline_s: float
) -> None:
    merchant, _, _ = new_callers()
    principal = Principal(merchant.client_id, Role.SERVICE)
    async with (
        simulated_provider(tmp_path, database, "calm", **(SETTINGS | {"latency_ms": 80, "latency_max_ms": 120})) as url,
        gateway_to(url) as gateway,
        in_process_server(pool, [merchant], tmp_path, gateway) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        payment_id = await captured_payment(database, gateway, principal, "9.00")
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        request = payments_pb2.RefundPaymentRequest(idempotency_key=f"r-{uuid.uuid4()}", payment_id=str(payment_id))
        started = asyncio.get_running_loop().time()
        try:
            answer = await stub.RefundPayment(request, metadata=merchant.metadata, timeout=deadline_s)
            state = answer.refund.state
        except grpc.aio.AioRpcError as error:
            # an honest answer: not begun (nothing done), not asked (UNAVAILABLE), or the outcome unknown
            assert error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE), error
            if "nothing was done" in (error.details() or ""):
                assert await pool.fetchval("SELECT count(*) FROM refunds WHERE client_id = $1", merchant.client_id) == 0
                return
            state = None
        assert asyncio.get_running_loop().time() - started < deadline_s + 0.3
        assert state in (None, *UNDECIDED_ANSWERS)

        # whatever the caller heard, the refund exists once and ends as the provider left it, with no retry
        await until(
            lambda: pool.fetchval("SELECT count(*) FROM refunds WHERE client_id = $1", merchant.client_id),
            "the refund recorded (the caller's deadline does not undo what was accepted)",
        )
        refund_id = await pool.fetchval("SELECT id FROM refunds WHERE client_id = $1", merchant.client_id)
        await park_other_refunds(pool, merchant.client_id)
        fast_expiry = PaymentResolverSettings(
            unknown_grace_s=0, pending_overdue_s=0.2, backoff_base_s=0.1, backoff_max_s=0.3, provider_timeout_s=2,
            expiry_s=0.5,
        )  # fmt: skip
        resolver = RefundResolver(database, gateway, fast_expiry)

        async def decided() -> bool:
            await resolver.run_once()
            state = await pool.fetchval("SELECT state FROM refunds WHERE id = $1", refund_id)
            return state in ("SUCCEEDED", "EXPIRED")

        await until(decided, "the refund decided by the resolver", timeout_s=20)
        state_now = await pool.fetchval("SELECT state FROM refunds WHERE id = $1", refund_id)
        at_provider = [r for r in (await simulator_truth(url))["refunds"] if r["idempotency_key"] == str(refund_id)]
        assert (state_now, len(at_provider)) in (("SUCCEEDED", 1), ("EXPIRED", 0)), (state_now, at_provider)


async def test_an_unknown_refund_the_provider_never_saw_is_sent_again_under_its_own_key_once(
    tmp_path: Path, database: Database, pool: asyncpg.Pool
) -> None:
    merchant, _, _ = new_callers()
    principal = Principal(merchant.client_id, Role.SERVICE)
    async with simulated_provider(tmp_path, database, "calm", **SETTINGS) as url, gateway_to(url) as gateway:
        payment_id = await captured_payment(database, gateway, principal, "12.00")
        # recorded, then sent with no answer, and the request never reached the provider (a reset)
        request = RefundPayment(f"r-{uuid.uuid4()}", payment_id, Money(Decimal("4.00"), "EUR"))
        recorded = (await refund_payment(database, None, principal, request, Budget.within(5))).refund
        async with database.connection(Budget.within(5)) as connection, connection.transaction():
            no_answer = RefundEvidence("provider.no_answer", "simulator:refund:reset", witness=Witness.BALLAST)
            await apply_refund_evidence(connection, recorded.id, RefundEvent.OUTCOME_UNKNOWN, no_answer)
        assert await pool.fetchval("SELECT state FROM refunds WHERE id = $1", recorded.id) == "UNKNOWN"
        assert [r for r in (await simulator_truth(url))["refunds"] if r["idempotency_key"] == str(recorded.id)] == []

        await park_other_refunds(pool, merchant.client_id)
        await resolve_until(database, gateway, pool, recorded.id, RefundState.SUCCEEDED)
        at_provider = [r for r in (await simulator_truth(url))["refunds"] if r["idempotency_key"] == str(recorded.id)]
        assert len(at_provider) == 1 and Decimal(at_provider[0]["amount"]) == Decimal("4.00")
