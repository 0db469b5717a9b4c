"""The server in-process, over the session's real database: one built for the callers a test names, and a
world of a test's own (brand-new clients nobody else uses, with a stub for each service).

The session's `alpha` and `beta` are shared by every test file (and some assert, for instance, that
alpha has no SUCCEEDED payment), so tests that move payments, orders or the ledger use a world of their
own: the same build_server, interceptors and database as the session's server, other tokens.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc

from ballast.execution.v1 import execution_pb2_grpc
from ballast.ledger.v1 import ledger_pb2_grpc
from ballast.payments.v1 import payments_pb2_grpc
from server.api.grpc_server import build_server, set_serving
from server.db.database import Database
from server.domain.identity import Principal, Role
from server.providers.gateway import GatewayClient
from server.services import outliving
from server.services.submission import OUTCOME_WRITE_TIMEOUT_S
from server.settings import load_settings


@dataclass(frozen=True)
class Caller:
    """A client with its own token, as an internal service would be configured."""

    client_id: str
    token: str
    role: str = "service"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


#: A server's own request timeout for a spec that waits it out (BALLAST_REQUEST_TIMEOUT_MS): a call without a
#: deadline is answered within it.
SHORT_REQUEST_TIMEOUT_MS = 1500
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


@dataclass(frozen=True)
class World:
    """An in-process server of a test's own: two services and an auditor nobody else uses."""

    #: a service taking payments and placing orders: its merchant account is merchant_payable:<client_id>
    merchant: Caller
    #: another service
    other: Caller
    auditor: Caller
    payments: payments_pb2_grpc.PaymentServiceStub
    ledger: ledger_pb2_grpc.LedgerServiceStub
    orders: execution_pb2_grpc.ExecutionServiceStub

    @property
    def principal(self) -> Principal:
        """The merchant, as the use cases take it."""
        return Principal(self.merchant.client_id, Role.SERVICE)


def new_callers() -> tuple[Caller, Caller, Caller]:
    """A merchant, another service and an auditor, brand-new."""
    suffix = uuid.uuid4().hex[:12]
    return (
        Caller(f"merchant-{suffix}", f"merchant-token-{uuid.uuid4().hex}"),
        Caller(f"other-{suffix}", f"other-token-{uuid.uuid4().hex}"),
        Caller(f"auditor-{suffix}", f"auditor-token-{uuid.uuid4().hex}", role="auditor"),
    )


@asynccontextmanager
async def isolated_server(pool: asyncpg.Pool, data_dir: Path) -> AsyncIterator[World]:
    """A world of its own: an in-process server for brand-new callers, and its stubs."""
    merchant, other, auditor = new_callers()
    async with (
        in_process_server(pool, (merchant, other, auditor), data_dir) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        yield World(
            merchant=merchant,
            other=other,
            auditor=auditor,
            payments=payments_pb2_grpc.PaymentServiceStub(channel),
            ledger=ledger_pb2_grpc.LedgerServiceStub(channel),
            orders=execution_pb2_grpc.ExecutionServiceStub(channel),
        )
