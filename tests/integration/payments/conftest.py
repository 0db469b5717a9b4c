"""The payment specs' own server: fresh clients, each used by one spec only (so that their payments are theirs
alone), and a short BALLAST_REQUEST_TIMEOUT_MS."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from ballast.payments.v1 import payments_pb2_grpc
from tests.support.servers import SHORT_REQUEST_TIMEOUT_MS, Caller, in_process_server

#: The clients of the payment specs' own server.
OWN_CLIENTS = ("bulky", "fresh", "slow", "pager")


@pytest.fixture(scope="module")
def own_callers() -> dict[str, Caller]:
    suffix = uuid.uuid4().hex[:8]
    return {name: Caller(f"{name}-{suffix}", f"{name}-token-{uuid.uuid4().hex}") for name in OWN_CLIENTS}


@pytest.fixture(scope="module")
async def own_stub(
    pool: asyncpg.Pool, own_callers: dict[str, Caller], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[payments_pb2_grpc.PaymentServiceStub]:
    """A second in-process server with fresh clients and a short BALLAST_REQUEST_TIMEOUT_MS."""
    data_dir = tmp_path_factory.mktemp("own")
    timeout = {"BALLAST_REQUEST_TIMEOUT_MS": str(SHORT_REQUEST_TIMEOUT_MS)}
    async with (
        in_process_server(pool, own_callers.values(), data_dir, **timeout) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        yield payments_pb2_grpc.PaymentServiceStub(channel)
