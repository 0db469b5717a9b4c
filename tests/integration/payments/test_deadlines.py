"""A caller gets Ballast's own answer within its deadline, even under a burst against a provider that hangs,
and the metrics count every call by the status it really ended with.

A call the client library cuts at its deadline ends with the library's own "Deadline Exceeded": the
caller learns nothing, and the server counted it as nothing it could name. Ballast answers before that:
the payment as it stands (UNKNOWN: the provider was asked and did not answer), or DEADLINE_EXCEEDED
saying the outcome is unknown and how to learn it. A call its caller cancels is counted CANCELLED.

Every RPC answers a deadline too short to do anything in, a crowd blocked behind a key another
transaction holds answers in time (more of them than the pool has connections), a call without a
deadline is answered within the server's own request timeout, and callers that give up leave one
payment per key and a working server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from server.providers.breaker import Breaker, BreakerSettings
from server.providers.gateway import GatewayClient
from tests.support import insert_idempotency_key, until
from tests.support.probes import payments_with_key, sessions_waiting_for
from tests.support.requests import create_payment_request
from tests.support.servers import SHORT_REQUEST_TIMEOUT_MS, Caller, in_process_server

Stub = payments_pb2_grpc.PaymentServiceStub


CREATE = "/ballast.payments.v1.PaymentService/CreatePayment"


def _requests_counted(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("ballast_grpc_requests_total", {"method": method, "code": code}) or 0.0


class Provider:
    """A payment provider that hangs on every request, unless the test scripts its answer to creates."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.on_create: Callable[[str], Awaitable[web.Response]] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "POST" and self.on_create is not None:
            return await self.on_create(request.headers.get("Idempotency-Key", ""))
        await self.released.wait()
        return web.json_response({"error": {"type": "gone"}}, status=503)


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    yield Provider()


@pytest.fixture
async def gateway(provider: Provider) -> AsyncIterator[GatewayClient]:
    app = web.Application()
    app.router.add_route("*", "/v1/payments", provider.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            breaker = Breaker("simulator.hanging", BreakerSettings(failures_max=1_000_000))
            yield GatewayClient("simulator", url, session, breaker)
    finally:
        provider.released.set()
        await runner.cleanup()


@pytest.fixture
async def served(pool: asyncpg.Pool, tmp_path: Path, gateway: GatewayClient) -> AsyncIterator[tuple[Stub, Caller]]:
    caller = Caller(f"deadline-{uuid.uuid4().hex[:12]}", f"deadline-token-{uuid.uuid4().hex}")
    async with (
        in_process_server(pool, (caller,), tmp_path, gateway) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        yield Stub(channel), caller


async def test_a_call_whose_deadline_runs_out_after_its_payment_was_taken_is_told_the_outcome_is_unknown(
    served: tuple[Stub, Caller], provider: Provider, pool: asyncpg.Pool
) -> None:
    """The provider takes the payment; writing its answer waits behind a lock past the caller's deadline.
    The caller hears, in time, that the outcome is unknown and how to learn it; the answer is written
    all the same, and the repeat with the key returns it."""
    stub, caller = served
    key = f"unknown-outcome-{uuid.uuid4()}"
    async with pool.acquire() as holder:
        locked = holder.transaction()

        async def take_it_but_lock_the_payment_first(payment_id: str) -> web.Response:
            await locked.start()
            await holder.execute("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE", uuid.UUID(payment_id))
            answer = {"id": f"pay_{payment_id[:8]}", "status": "succeeded", "idempotency_key": payment_id}
            return web.json_response(answer | {"amount": "12.50", "currency": "EUR"})

        provider.on_create = take_it_but_lock_the_payment_first
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await stub.CreatePayment(create_payment_request(key, "12.50"), metadata=caller.metadata, timeout=1.0)
        elapsed_s = time.monotonic() - started
        await locked.rollback()
    assert cut.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed_s < 1.0
    assert "the outcome is unknown" in (cut.value.details() or "")
    assert "Repeat the call with the same idempotency key" in (cut.value.details() or "")
    deadline = time.monotonic() + 10
    while True:
        replay = await stub.CreatePayment(create_payment_request(key, "12.50"), metadata=caller.metadata, timeout=10)
        assert replay.replayed and replay.payment.idempotency_key == key
        if replay.payment.state == payments_pb2.PAYMENT_STATE_SUCCEEDED:
            break  # the provider's answer was written after the caller had gone
        assert time.monotonic() < deadline, payments_pb2.PaymentState.Name(replay.payment.state)
        await asyncio.sleep(0.05)


async def test_a_read_cut_by_its_deadline_is_told_nothing_changed(
    served: tuple[Stub, Caller], pool: asyncpg.Pool
) -> None:
    stub, caller = served
    async with pool.acquire() as holder, holder.transaction():
        # every pooled connection waits behind this lock, so the read cannot finish in time
        await holder.execute("LOCK TABLE payments IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await stub.ListPayments(payments_pb2.ListPaymentsRequest(), metadata=caller.metadata, timeout=0.3)
    assert cut.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "nothing was changed" in (cut.value.details() or "")


async def test_a_call_its_caller_cancels_is_counted_cancelled_not_unknown(
    served: tuple[Stub, Caller], pool: asyncpg.Pool
) -> None:
    stub, caller = served
    unknown_before = _requests_counted(CREATE, "UNKNOWN")
    cancelled_before = _requests_counted(CREATE, "CANCELLED")
    key = f"cancelled-{uuid.uuid4()}"
    async with pool.acquire() as holder, holder.transaction():
        await insert_idempotency_key(holder, caller.client_id, key)  # the call waits behind this row
        call = stub.CreatePayment(create_payment_request(key, "12.50"), metadata=caller.metadata, timeout=30)
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")

        async def reached() -> bool:
            return await sessions_waiting_for(holder, holder_pid) >= 1

        await until(reached, "the call reached the database and waits behind the held row")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    deadline = time.monotonic() + 10
    while _requests_counted(CREATE, "CANCELLED") == cancelled_before:
        assert time.monotonic() < deadline, "the cancelled call was never counted CANCELLED"
        await asyncio.sleep(0.01)
    assert _requests_counted(CREATE, "CANCELLED") == cancelled_before + 1
    assert _requests_counted(CREATE, "UNKNOWN") == unknown_before


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

    @pytest.mark.parametrize("deadline_s", [0.001, 0.01, 0.021, 0.05])
    async def test_every_rpc_answers_a_tiny_deadline_in_time(
        self, payments_stub: Stub, alpha: Caller, deadline_s: float
    ) -> None:
        created = await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        calls = {
            "create": lambda: payments_stub.CreatePayment(
                create_payment_request(), metadata=alpha.metadata, timeout=deadline_s
            ),
            "get": lambda: payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=created.payment.id),
                metadata=alpha.metadata,
                timeout=deadline_s,
            ),
            "list": lambda: payments_stub.ListPayments(
                payments_pb2.ListPaymentsRequest(page_size=500), metadata=alpha.metadata, timeout=deadline_s
            ),
        }
        for name, call in calls.items():
            started = time.monotonic()
            try:
                await asyncio.wait_for(call(), timeout=deadline_s + 1)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (name, error)
            assert time.monotonic() - started < deadline_s + 0.5, name

    async def test_a_crowd_blocked_behind_a_held_key_all_answer_within_their_deadline_and_the_key_then_works(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        """More blocked callers than the pool has connections: the surplus waits for one, and still answers in time."""
        request = create_payment_request(f"crowd-{uuid.uuid4()}")
        async with pool.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            await insert_idempotency_key(holder, alpha.client_id, request.idempotency_key)

            async def call() -> tuple[grpc.StatusCode, float]:
                started = time.monotonic()
                try:
                    await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=1.0)
                except grpc.aio.AioRpcError as error:
                    return error.code(), time.monotonic() - started
                return grpc.StatusCode.OK, time.monotonic() - started

            outcomes = await asyncio.wait_for(asyncio.gather(*(call() for _ in range(80))), timeout=10)
            await transaction.rollback()
        assert {code for code, _ in outcomes} == {grpc.StatusCode.DEADLINE_EXCEEDED}
        assert max(elapsed for _, elapsed in outcomes) < 1.5
        # DEADLINE_EXCEEDED means "outcome unknown": a statement still queued on the lock when the
        # holder let go may have created the payment after its caller gave up (PostgreSQL gets the
        # cancel a moment after the deadline). Retrying with the key must then find it, never a second.
        created = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        assert created.payment.amount.value == request.amount.value
        assert await payments_with_key(pool, alpha.client_id, request.idempotency_key) == 1

    async def test_a_call_without_a_deadline_is_answered_within_the_servers_request_timeout(
        self, own_stub: Stub, own_callers: dict[str, Caller], pool: asyncpg.Pool
    ) -> None:
        slow = own_callers["slow"]
        request = create_payment_request(f"no-deadline-{uuid.uuid4()}")
        async with pool.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            await insert_idempotency_key(holder, slow.client_id, request.idempotency_key)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(own_stub.CreatePayment(request, metadata=slow.metadata), timeout=10)
            elapsed_s = time.monotonic() - started
            await transaction.rollback()
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed_s < SHORT_REQUEST_TIMEOUT_MS / 1000 + 0.5
        created = await own_stub.CreatePayment(request, metadata=slow.metadata, timeout=5)
        assert not created.replayed

    async def test_calls_cancelled_by_their_callers_mid_wait_leave_one_payment_per_key_and_a_working_server(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        request = create_payment_request(f"cancelled-{uuid.uuid4()}")
        async with pool.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            await insert_idempotency_key(holder, alpha.client_id, request.idempotency_key)
            calls = [payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5) for _ in range(70)]
            holder_pid = await holder.fetchval("SELECT pg_backend_pid()")

            async def mid_wait() -> bool:
                # every call with a pooled connection (29 of the session pool's 30) waits for the held key,
                # the others for a connection
                return await sessions_waiting_for(holder, holder_pid) >= 20

            await until(mid_wait, "the calls wait for the held key")
            for call in calls:
                call.cancel()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            await transaction.rollback()
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
        # Every connection the cancelled calls held came back: a full pool's worth of new payments goes through.
        fresh = [create_payment_request() for _ in range(60)]
        created = await asyncio.gather(
            *(payments_stub.CreatePayment(r, metadata=alpha.metadata, timeout=5) for r in fresh)
        )
        assert len({c.payment.id for c in created}) == 60
        retried = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        assert retried.payment.idempotency_key == request.idempotency_key
        assert await payments_with_key(pool, alpha.client_id, request.idempotency_key) == 1
