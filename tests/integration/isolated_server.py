"""An in-process server of its own with brand-new clients, for tests that move payments.

The session's `alpha` and `beta` are shared by every test file (and some assert, for instance, that
alpha has no SUCCEEDED payment), so tests that capture and refund payments use clients of their own:
the same build_server, interceptors and database as the `grpc_address` fixture, other tokens.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc

from ballast.ledger.v1 import ledger_pb2_grpc
from ballast.payments.v1 import payments_pb2_grpc
from tests.integration.conftest import Caller, in_process_server


@dataclass(frozen=True)
class Clients:
    #: a service taking payments: its merchant account is merchant_payable:<merchant.client_id>
    merchant: Caller
    #: another service
    other: Caller
    auditor: Caller
    payments: payments_pb2_grpc.PaymentServiceStub
    ledger: ledger_pb2_grpc.LedgerServiceStub


@asynccontextmanager
async def isolated_server(pool: asyncpg.Pool, data_dir: Path) -> AsyncIterator[Clients]:
    suffix = uuid.uuid4().hex[:12]
    merchant = Caller(f"merchant-{suffix}", f"merchant-token-{uuid.uuid4().hex}")
    other = Caller(f"other-{suffix}", f"other-token-{uuid.uuid4().hex}")
    auditor = Caller(f"auditor-{suffix}", f"auditor-token-{uuid.uuid4().hex}", role="auditor")
    async with (
        in_process_server(pool, (merchant, other, auditor), data_dir) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        yield Clients(
            merchant,
            other,
            auditor,
            payments_pb2_grpc.PaymentServiceStub(channel),
            ledger_pb2_grpc.LedgerServiceStub(channel),
        )
