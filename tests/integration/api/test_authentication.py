"""Who may call what, over gRPC (in-process server, real PostgreSQL): a missing, unknown, mangled or doubled
token is UNAUTHENTICATED and a role without the permission is PERMISSION_DENIED, on every service and
before anything is written; health is served without credentials; the clients the settings accept work.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ballast.execution.v1 import execution_pb2, execution_pb2_grpc
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from ballast.reconciliation.v1 import reconciliation_pb2, reconciliation_pb2_grpc
from server.api.grpc_server import build_server
from server.db.database import Database
from server.settings import load_settings
from tests.support.probes import payment_rows_of, payments_of
from tests.support.requests import create_payment_request
from tests.support.servers import Caller

Stub = payments_pb2_grpc.PaymentServiceStub


class TestAuthentication:
    @pytest.mark.parametrize(
        "metadata",
        [
            (),
            (("authorization", "Bearer not-a-known-token-at-all"),),
            (("authorization", "Basic dXNlcjpwYXNz"),),
            (("authorization", "Bearer "),),
        ],
    )
    async def test_missing_or_unknown_credentials_are_unauthenticated_and_write_nothing(
        self, payments_stub: Stub, metadata: tuple[tuple[str, str], ...], pool: asyncpg.Pool
    ) -> None:
        before = await pool.fetchval("SELECT count(*) FROM payments")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.CreatePayment(create_payment_request(), metadata=metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await pool.fetchval("SELECT count(*) FROM payments") == before

    async def test_credentials_sent_twice_are_unauthenticated_even_when_one_is_valid(
        self, payments_stub: Stub, alpha: Caller, beta: Caller, pool: asyncpg.Pool
    ) -> None:
        before = (await payments_of(pool, alpha.client_id), await payments_of(pool, beta.client_id))
        for metadata in (
            (*alpha.metadata, ("authorization", "Bearer not-a-token-at-all")),
            (("authorization", "Bearer not-a-token-at-all"), *alpha.metadata),
            (*alpha.metadata, *beta.metadata),  # which client would it be?
            (*alpha.metadata, *alpha.metadata),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await payments_stub.CreatePayment(create_payment_request(), metadata=metadata, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
            assert "once" in (caught.value.details() or "")
        assert (await payments_of(pool, alpha.client_id), await payments_of(pool, beta.client_id)) == before

    async def test_a_role_without_the_permission_is_denied_and_writes_nothing(
        self, payments_stub: Stub, auditor: Caller, pool: asyncpg.Pool
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.CreatePayment(create_payment_request(), metadata=auditor.metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await payments_of(pool, auditor.client_id) == 0

    async def test_every_service_is_behind_authentication(self, channel: grpc.aio.Channel) -> None:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetOrder(execution_pb2.GetOrderRequest(order_id="x"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_reconciliation_is_for_operations_staff_and_auditors(
        self, channel: grpc.aio.Channel, alpha: Caller
    ) -> None:
        stub = reconciliation_pb2_grpc.ReconciliationServiceStub(channel)
        request = reconciliation_pb2.ExportEvidenceRequest(case_id="x")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.ExportEvidence(request, metadata=alpha.metadata, timeout=5):
                pass
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "cases.read" in (caught.value.details() or "")

    async def test_health_is_served_without_credentials(self, channel: grpc.aio.Channel) -> None:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="ballast.payments.v1.PaymentService"), timeout=5
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda t: (("authorization", f"Bearer {t}x"),),
            lambda t: (("authorization", f"Bearer {t[:-1]}"),),
            lambda t: (("authorization", f"Bearer {t.upper()}"),),
            lambda t: (("authorization", t),),
            lambda t: (("authorization", f"Token {t}"),),
            lambda t: (("authorization", f"Bearer: {t}"),),
            lambda t: (("x-authorization", f"Bearer {t}"),),
            lambda t: (("authorization", "Bearer"),),
        ],
    )
    async def test_every_rpc_refuses_a_mangled_token_and_create_writes_nothing(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, mangle: Any
    ) -> None:
        metadata = mangle(alpha.token)
        before = await payment_rows_of(pool, alpha.client_id)
        calls = [
            payments_stub.CreatePayment(create_payment_request(), metadata=metadata, timeout=5),
            payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=str(uuid.uuid4())), metadata=metadata, timeout=5
            ),
            payments_stub.ListPayments(payments_pb2.ListPaymentsRequest(), metadata=metadata, timeout=5),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await payment_rows_of(pool, alpha.client_id) == before

    async def test_an_auditor_cannot_create_whatever_the_request_and_nothing_is_written(
        self, payments_stub: Stub, auditor: Caller, pool: asyncpg.Pool
    ) -> None:
        before = await payment_rows_of(pool, auditor.client_id)
        for request in (
            create_payment_request(),
            create_payment_request(value="-1"),
            payments_pb2.CreatePaymentRequest(),
            create_payment_request("😀" * 255, description="𝄞" * 1000),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await payments_stub.CreatePayment(request, metadata=auditor.metadata, timeout=5)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        outcomes = await asyncio.gather(
            *(
                payments_stub.CreatePayment(create_payment_request(), metadata=auditor.metadata, timeout=5)
                for _ in range(20)
            ),
            return_exceptions=True,
        )
        assert all(
            isinstance(o, grpc.aio.AioRpcError) and o.code() == grpc.StatusCode.PERMISSION_DENIED for o in outcomes
        )
        assert await payment_rows_of(pool, auditor.client_id) == before == (0, 0)


async def test_a_client_id_the_settings_accept_can_create_and_read_its_payments(
    pool: asyncpg.Pool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The tables hold client ids of 1 to 128 characters: settings must refuse longer ones, or they must work."""
    from server.settings import SettingsError

    caller = Caller("c" * 129, f"long-client-token-{uuid.uuid4().hex}")
    try:
        settings = load_settings(
            {
                "BALLAST_GRPC_PORT": "0",
                "BALLAST_API_TOKENS": f"{caller.token}={caller.client_id}:service",
                "BALLAST_DATA_DIR": str(tmp_path_factory.mktemp("long-client")),
                "DATABASE_URL": "postgresql://unused/unused",
            }
        )
    except SettingsError:
        return  # refused at start-up, naming the variable: fine
    server, _, port = build_server(settings, Database(pool))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = payments_pb2_grpc.PaymentServiceStub(channel)
            created = await stub.CreatePayment(create_payment_request(), metadata=caller.metadata, timeout=5)
            assert created.payment.client_id == caller.client_id
    finally:
        await server.stop(None)
