"""The reconciliation specs' shop: a database of their own (a report is checked against every payment
Ballast holds, so no other spec's payments may be there), a server over it, and the simulator as its
provider, settling at once and reporting what it settled with the drift a spec plants."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from ballast.reconciliation.v1 import reconciliation_pb2_grpc
from chaos.checker import DRIFT_CLASSES as DRIFT_CLASSES  # the simulator's drift and the class it lands in
from server.db.database import Database
from server.db.engine import create_pool
from server.db.migrate import migrate_to_head
from server.db.recon_repository import ReportRunRecord, findings_of
from server.domain.reconciliation import ReportKind
from server.services.reconciliation import Ingested, ReportHeader, ingest_file_report, process_run
from tests.integration.refunds.conftest import Shop, shop_over
from tests.support import scratch_database
from tests.support.servers import Caller, in_process_server
from tests.support.simulator import simulator_truth

ReconStub = reconciliation_pb2_grpc.ReconciliationServiceStub


@pytest.fixture(scope="module")
def recon_template(server_database_url: str) -> Iterator[str]:
    """A migrated database the specs' own databases are copied from; its name."""
    with scratch_database(server_database_url, "ballast_recon_template") as url:
        migrate_to_head(url)
        yield make_url(url).database or ""


@pytest.fixture
def recon_database_url(server_database_url: str, recon_template: str) -> Iterator[str]:
    """A database of the spec's own: a report is checked against every payment Ballast holds."""
    with scratch_database(server_database_url, "ballast_recon", template=recon_template) as url:
        yield url


@pytest.fixture
async def recon_pool(recon_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(recon_database_url, size=10, statement_timeout_ms=30_000)
    try:
        yield pool
    finally:
        await pool.close()


@dataclass
class Books:
    """The shop, and what reconciling its provider's report takes: its server's reconciliation API, called
    by an operator, an auditor and the shop's own service."""

    shop: Shop
    pool: asyncpg.Pool
    database: Database
    recon: ReconStub
    operator: Caller
    auditor: Caller

    async def report(self, query: str = "") -> bytes:
        """The provider's settlement report as CSV, as an operator downloads it."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.shop.url}/v1/reports/settlement?format=csv{query}") as response,
        ):
            assert response.status == 200, await response.text()
            return await response.read()

    async def ingest(self, body: bytes, file_name: str = "settlement.csv") -> Ingested:
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 4096):
                yield body[start : start + 4096]

        header = ReportHeader("simulator", ReportKind.SETTLEMENT, file_name, "text/csv", None)
        return await ingest_file_report(self.database, header, chunks())

    async def reconcile(self, body: bytes) -> ReportRunRecord:
        ingested = await self.ingest(body)
        return await process_run(self.database, ingested.run.id)

    async def findings(self, run_id: uuid.UUID) -> list[dict[str, Any]]:
        async with self.pool.acquire() as connection:
            return await findings_of(connection, run_id)

    async def truth(self) -> list[dict[str, Any]]:
        """The simulator's settlement bookings: what really happened, what it reported, and the drift."""
        bookings: list[dict[str, Any]] = (await simulator_truth(self.shop.url))["settlement"]
        return bookings

    async def succeeded_payments(self, values: list[str]) -> list[str]:
        """Payments the provider took and Ballast holds SUCCEEDED; their provider ids."""
        payments = await asyncio.gather(*(self.shop.succeeded_payment(value) for value in values))
        ids = await self.pool.fetch(
            "SELECT provider_payment_id FROM payments WHERE id = ANY($1::uuid[])", [p.id for p in payments]
        )
        return [row[0] for row in ids]


def csv_rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


@pytest.fixture
async def books(recon_pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Books]:
    database = Database(recon_pool)
    # every success settles a day later, and a report covers the window after it: a row missing from it
    # is missing for good
    await recon_pool.execute(
        "UPDATE provider_settings SET settlement_delay_days = 1, settlement_window_days = 0"
        " WHERE provider = 'simulator'"
    )
    operator = Caller(f"ops-{uuid.uuid4().hex[:8]}", f"ops-token-{uuid.uuid4().hex}", role="operator")
    auditor = Caller(f"audit-{uuid.uuid4().hex[:8]}", f"audit-token-{uuid.uuid4().hex}", role="auditor")
    server_dir = tmp_path / "recon-server"
    server_dir.mkdir()
    async for shop in shop_over(recon_pool, database, tmp_path, **DRIFT):
        async with (
            in_process_server(recon_pool, (operator, auditor, shop.merchant), server_dir) as address,
            grpc.aio.insecure_channel(address) as channel,
        ):
            yield Books(shop, recon_pool, database, ReconStub(channel), operator, auditor)


#: The report-drift profile's kinds of drift, each often enough for a few dozen payments to plant it.
DRIFT: dict[str, Any] = {
    "report_missing_rate": 0.12,
    "report_extra_rate": 0.1,
    "report_amount_rate": 0.12,
    "report_fee_rate": 0.12,
    "report_fx_rate": 0.12,
    "report_late_rate": 0.12,
}
