"""Replicas share nothing but PostgreSQL; a killed server loses nothing it acknowledged."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable

import asyncpg
import grpc
import pytest

from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.e2e.conftest import ServerProcess
from tests.support.requests import create_payment_request

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]


def _request(key: str) -> payments_pb2.CreatePaymentRequest:
    return create_payment_request(key, "7.50", "USD")


async def test_two_replicas_racing_on_one_key_create_one_payment(start_server: StartServer, pool: asyncpg.Pool) -> None:
    first = start_server()
    second = start_server(token=first.token, client_id=first.client_id)
    key = f"replicated-{uuid.uuid4()}"
    async with grpc.aio.insecure_channel(first.address) as a, grpc.aio.insecure_channel(second.address) as b:
        stubs = [payments_pb2_grpc.PaymentServiceStub(a), payments_pb2_grpc.PaymentServiceStub(b)]
        calls = [stubs[i % 2].CreatePayment(_request(key), metadata=first.metadata, timeout=10) for i in range(50)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    ids = {o.payment.id for o in outcomes if isinstance(o, payments_pb2.CreatePaymentResponse)}
    errors = [o for o in outcomes if not isinstance(o, payments_pb2.CreatePaymentResponse)]
    assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.ABORTED for e in errors), errors
    assert len(ids) == 1
    assert await pool.fetchval("SELECT count(*) FROM payments WHERE client_id = $1", first.client_id) == 1


async def test_a_killed_server_loses_no_acknowledged_payment_and_retries_create_none_twice(
    start_server: StartServer, pool: asyncpg.Pool
) -> None:
    """SIGKILL mid-load: every OK answer is in the database; retrying every key on a new server
    returns those same payments and creates at most one payment per key."""
    server = start_server()
    keys = [f"crash-{uuid.uuid4()}" for _ in range(400)]
    acknowledged: dict[str, str] = {}

    async def call(stub: payments_pb2_grpc.PaymentServiceStub, key: str) -> None:
        try:
            reply = await stub.CreatePayment(_request(key), metadata=server.metadata, timeout=10)
            acknowledged[key] = reply.payment.id
        except grpc.aio.AioRpcError:
            pass  # the crash cut it off: unknown outcome, resolved below by retrying the key

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        semaphore = asyncio.Semaphore(32)

        async def bounded(key: str) -> None:
            async with semaphore:
                await call(stub, key)

        load = asyncio.gather(*(bounded(key) for key in keys))
        for _ in range(1000):  # at most 10 s
            if len(acknowledged) >= 50:
                break
            await asyncio.sleep(0.01)
        server.process.send_signal(signal.SIGKILL)
        await load
    assert 50 <= len(acknowledged) < len(keys), "the kill should land mid-load"

    stored = {
        row["idempotency_key"]: str(row["id"])
        for row in await pool.fetch("SELECT idempotency_key, id FROM payments WHERE client_id = $1", server.client_id)
    }
    assert {key: stored.get(key) for key in acknowledged} == acknowledged

    replacement = start_server(token=server.token, client_id=server.client_id)
    async with grpc.aio.insecure_channel(replacement.address) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        replies = await asyncio.gather(
            *(stub.CreatePayment(_request(key), metadata=server.metadata, timeout=10) for key in keys)
        )
    for key, reply in zip(keys, replies, strict=True):
        if key in acknowledged:
            assert reply.replayed and reply.payment.id == acknowledged[key]
    assert await pool.fetchval("SELECT count(*) FROM payments WHERE client_id = $1", server.client_id) == len(keys)
