"""Integration fixtures: the use cases and an in-process gRPC server over a real PostgreSQL (the servers
themselves are in tests/support/servers.py).

Tests isolate themselves by client id (every test gets fresh clients), not by truncating tables,
so nothing here depends on test order.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from ballast.payments.v1 import payments_pb2_grpc
from tests.support.servers import Caller, World, in_process_server, isolated_server


@pytest.fixture(scope="session")
def callers() -> tuple[Caller, Caller, Caller]:
    """Two services (alpha, beta) and an auditor."""
    suffix = uuid.uuid4().hex[:8]
    return (
        Caller(f"alpha-{suffix}", f"alpha-token-{uuid.uuid4().hex}"),
        Caller(f"beta-{suffix}", f"beta-token-{uuid.uuid4().hex}"),
        Caller(f"auditor-{suffix}", f"auditor-token-{uuid.uuid4().hex}", role="auditor"),
    )


@pytest.fixture
def alpha(callers: tuple[Caller, ...]) -> Caller:
    return callers[0]


@pytest.fixture
def beta(callers: tuple[Caller, ...]) -> Caller:
    return callers[1]


@pytest.fixture
def auditor(callers: tuple[Caller, ...]) -> Caller:
    return callers[2]


@pytest.fixture(scope="session")
async def grpc_address(
    pool: asyncpg.Pool, callers: tuple[Caller, ...], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """The session's in-process server, for alpha, beta and the auditor."""
    async with in_process_server(pool, callers, tmp_path_factory.mktemp("data")) as address:
        yield address


@pytest.fixture
async def world(pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[World]:
    """A world of this test's own: an in-process server for brand-new clients (tests.support.servers)."""
    async with isolated_server(pool, tmp_path) as created:
        yield created


@pytest.fixture
async def channel(grpc_address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(grpc_address) as channel:
        yield channel


@pytest.fixture
def payments_stub(channel: grpc.aio.Channel) -> payments_pb2_grpc.PaymentServiceStub:
    return payments_pb2_grpc.PaymentServiceStub(channel)


@pytest.fixture
def repository_root() -> Path:
    return Path(__file__).resolve().parents[2]
