"""PaymentService over gRPC (in-process server, real PostgreSQL): status codes, details, isolation."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from ballast.execution.v1 import execution_pb2, execution_pb2_grpc
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from ballast.reconciliation.v1 import reconciliation_pb2, reconciliation_pb2_grpc
from tests.support import field_violations, insert_idempotency_key
from tests.support.probes import payments_of
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

    async def test_the_declared_but_unbuilt_surface_is_also_behind_authentication(
        self, channel: grpc.aio.Channel
    ) -> None:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetOrder(execution_pb2.GetOrderRequest(order_id="x"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_unbuilt_rpcs_answer_unimplemented(self, channel: grpc.aio.Channel, alpha: Caller) -> None:
        stub = reconciliation_pb2_grpc.ReconciliationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetCase(reconciliation_pb2.GetCaseRequest(case_id="x"), metadata=alpha.metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "GetCase" in (caught.value.details() or "")

    async def test_health_is_served_without_credentials(self, channel: grpc.aio.Channel) -> None:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="ballast.payments.v1.PaymentService"), timeout=5
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING


class TestCreatePayment:
    async def test_creates_a_recorded_payment_for_the_calling_client(self, payments_stub: Stub, alpha: Caller) -> None:
        response = await payments_stub.CreatePayment(
            create_payment_request(value="12.3", description="books", metadata={"order": "42"}),
            metadata=alpha.metadata,
            timeout=5,
        )
        payment = response.payment
        assert not response.replayed
        assert payment.client_id == alpha.client_id
        assert payment.state == payments_pb2.PAYMENT_STATE_RECORDED
        assert (payment.amount.value, payment.amount.currency_code) == ("12.30", "EUR")
        assert dict(payment.metadata) == {"order": "42"}
        assert uuid.UUID(payment.id)
        assert payment.create_time.seconds > 0

    async def test_a_retry_replays_the_same_payment(self, payments_stub: Stub, alpha: Caller) -> None:
        request = create_payment_request()
        first = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        again = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        assert again.replayed
        assert again.payment == first.payment

    async def test_reusing_a_key_with_other_parameters_is_failed_precondition_naming_the_key(
        self, payments_stub: Stub, alpha: Caller
    ) -> None:
        key = f"reused-{uuid.uuid4()}"
        await payments_stub.CreatePayment(
            create_payment_request(key, value="10.00"), metadata=alpha.metadata, timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.CreatePayment(
                create_payment_request(key, value="11.00"), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert key in (caught.value.details() or "")
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        failure = error_details_pb2.PreconditionFailure()
        assert status is not None and status.details[0].Unpack(failure)
        assert failure.violations[0].subject == f"idempotency_key:{key}"

    @pytest.mark.parametrize(
        ("request_fields", "field"),
        [
            ({"value": "0"}, "amount.value"),
            ({"value": "-1.00"}, "amount.value"),
            ({"value": "1.234"}, "amount.value"),
            ({"value": "100.5", "currency": "JPY"}, "amount.value"),
            ({"value": "1e2"}, "amount.value"),
            ({"currency": "ZZZ"}, "amount.currency_code"),
            ({"currency": ""}, "amount.currency_code"),
            ({"key": ""}, "idempotency_key"),
            ({"key": "k" * 256}, "idempotency_key"),
            ({"key": "   "}, "idempotency_key"),
            ({"description": "d" * 1001}, "description"),
            ({"merchant_reference": "r" * 256}, "merchant_reference"),
            ({"metadata": {"k": "v" * 501}}, "metadata[k]"),
        ],
    )
    async def test_bad_input_is_invalid_argument_naming_the_field_and_writes_nothing(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, request_fields: dict[str, object], field: str
    ) -> None:
        before = await payments_of(pool, alpha.client_id)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.CreatePayment(
                create_payment_request(**request_fields), metadata=alpha.metadata, timeout=5
            )  # type: ignore[arg-type]
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)
        assert await payments_of(pool, alpha.client_id) == before

    async def test_a_missing_amount_is_invalid_argument(self, payments_stub: Stub, alpha: Caller) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.CreatePayment(
                payments_pb2.CreatePaymentRequest(idempotency_key="no-amount"), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "amount" in field_violations(caught.value)


class TestGetAndListPayments:
    async def test_get_returns_the_payment(self, payments_stub: Stub, alpha: Caller) -> None:
        created = await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        fetched = await payments_stub.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=created.payment.id), metadata=alpha.metadata, timeout=5
        )
        assert fetched.payment == created.payment

    async def test_an_unknown_payment_is_not_found(self, payments_stub: Stub, alpha: Caller) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=str(uuid.uuid4())), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_another_clients_payment_is_not_found(self, payments_stub: Stub, alpha: Caller, beta: Caller) -> None:
        created = await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=created.payment.id), metadata=beta.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_a_malformed_id_is_invalid_argument(self, payments_stub: Stub, alpha: Caller) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id="nope"), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(caught.value) == {"payment_id"}

    async def test_list_pages_through_every_payment_of_the_client_once_newest_first(
        self, payments_stub: Stub, beta: Caller
    ) -> None:
        # beta's payments: whatever earlier tests made, plus seven of ours.
        for _ in range(7):
            await payments_stub.CreatePayment(create_payment_request(), metadata=beta.metadata, timeout=5)
        seen: list[payments_pb2.Payment] = []
        token = ""
        for _ in range(100):
            page = await payments_stub.ListPayments(
                payments_pb2.ListPaymentsRequest(page_size=3, page_token=token), metadata=beta.metadata, timeout=5
            )
            assert len(page.payments) <= 3
            seen.extend(page.payments)
            token = page.next_page_token
            if not token:
                break
        ids = [payment.id for payment in seen]
        assert len(ids) == len(set(ids)) >= 7
        assert all(payment.client_id == beta.client_id for payment in seen)
        times = [(p.create_time.seconds, p.create_time.nanos) for p in seen]
        assert times == sorted(times, reverse=True)

    async def test_list_filters_by_state(self, payments_stub: Stub, alpha: Caller) -> None:
        await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        recorded = await payments_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(state=payments_pb2.PAYMENT_STATE_RECORDED),
            metadata=alpha.metadata,
            timeout=5,
        )
        succeeded = await payments_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(state=payments_pb2.PAYMENT_STATE_SUCCEEDED),
            metadata=alpha.metadata,
            timeout=5,
        )
        assert len(recorded.payments) >= 1
        assert list(succeeded.payments) == []

    @pytest.mark.parametrize(
        ("request_fields", "field"),
        [
            ({"page_size": -1}, "page_size"),
            ({"page_size": 501}, "page_size"),
            ({"page_token": "garbage"}, "page_token"),
        ],
    )
    async def test_bad_paging_is_invalid_argument(
        self, payments_stub: Stub, alpha: Caller, request_fields: dict[str, object], field: str
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.ListPayments(
                payments_pb2.ListPaymentsRequest(**request_fields),
                metadata=alpha.metadata,
                timeout=5,  # type: ignore[arg-type]
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)


class TestDeadlines:
    async def test_a_call_blocked_in_the_database_answers_within_its_deadline(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        """Another transaction holds the key; the caller hears DEADLINE_EXCEEDED in time, not a hang."""
        import time

        key = f"held-{uuid.uuid4()}"
        async with pool.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            await insert_idempotency_key(holder, alpha.client_id, key)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await payments_stub.CreatePayment(create_payment_request(key), metadata=alpha.metadata, timeout=1.0)
            elapsed_s = time.monotonic() - started
            await transaction.rollback()
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed_s < 1.5
        # The server gave up too: with the holder gone, the same key now works and creates one payment.
        created = await payments_stub.CreatePayment(create_payment_request(key), metadata=alpha.metadata, timeout=5)
        assert not created.replayed
