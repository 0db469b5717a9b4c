"""Integration fixtures: the use cases and an in-process gRPC server over a real PostgreSQL.

Tests isolate themselves by client id (every test gets fresh clients), not by truncating tables,
so nothing here depends on test order.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest

from ballast.payments.v1 import payments_pb2_grpc
from server.api.grpc_server import build_server, set_serving
from server.db.database import Database
from server.domain.identity import Principal, Role
from server.providers.gateway import GatewayClient
from server.services import outliving
from server.services.submission import OUTCOME_WRITE_TIMEOUT_S
from server.settings import load_settings


@pytest.fixture
def principal() -> Principal:
    return Principal(client_id=f"client-{uuid.uuid4().hex[:12]}", role=Role.SERVICE)


@dataclass(frozen=True)
class Caller:
    """A client with its own token, as an internal service would be configured."""

    client_id: str
    token: str
    role: str = "service"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


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


#: What a stopped server's outcome writes may still take, as in production (they have their own limit).
OUTLIVING_FINISH_S = OUTCOME_WRITE_TIMEOUT_S


@asynccontextmanager
async def in_process_server(
    pool: asyncpg.Pool,
    callers: Iterable[Caller],
    data_dir: Path,
    gateway: GatewayClient | None = None,
    **env: str,
) -> AsyncIterator[str]:
    """A server on a free port with the real servicers, interceptors and database, for these callers;
    yields its address. `gateway` is its payment provider (none: payments stay RECORDED); `env` adds
    settings (e.g. BALLAST_REQUEST_TIMEOUT_MS)."""
    tokens = ",".join(f"{caller.token}={caller.client_id}:{caller.role}" for caller in callers)
    settings = load_settings(
        {
            "BALLAST_GRPC_PORT": "0",
            "BALLAST_API_TOKENS": tokens,
            "BALLAST_DATA_DIR": str(data_dir),
            "DATABASE_URL": "postgresql://unused/unused",
            **env,
        }
    )
    server, health_servicer, port = build_server(settings, Database(pool), gateway)
    await server.start()
    await set_serving(health_servicer, True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await outliving.finish(OUTLIVING_FINISH_S)


@pytest.fixture(scope="session")
async def grpc_address(
    pool: asyncpg.Pool, callers: tuple[Caller, ...], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """The session's in-process server, for alpha, beta and the auditor."""
    async with in_process_server(pool, callers, tmp_path_factory.mktemp("data")) as address:
        yield address


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
