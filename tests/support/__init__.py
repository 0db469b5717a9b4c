"""Helpers the test levels share: scratch databases and rows written behind the server's back."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy.engine import make_url

from server.db.engine import asyncpg_dsn


async def _admin(url: str, sql: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the server of `server_url`, dropped on exit; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def insert_idempotency_key(
    connection: asyncpg.Connection, client_id: str, key: str, resource_id: uuid.UUID | None = None
) -> None:
    """An idempotency record written directly; inside an open transaction it holds the key against the server."""
    await connection.execute(
        "INSERT INTO idempotency_keys (client_id, idempotency_key, operation, request_fingerprint, resource_id)"
        " VALUES ($1, $2, 'payments.create', $3, $4)",
        client_id,
        key,
        hashlib.sha256(key.encode()).digest(),
        resource_id or uuid.uuid4(),
    )


def field_violations(error: grpc.aio.AioRpcError) -> set[str]:
    """The fields named by the google.rpc.BadRequest in an error's status details."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"{error.code().name} must carry a google.rpc.Status trailer"
    fields: set[str] = set()
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields |= {violation.field for violation in bad_request.field_violations}
    return fields


# --------------------------------------------------------------------------------------------------
# A payment provider whose API answers as the test tells it (for the resolver to ask)
# --------------------------------------------------------------------------------------------------

import time  # noqa: E402
from collections.abc import AsyncIterator, Iterable  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from server.db.database import Budget, Database  # noqa: E402
from server.providers.breaker import Breaker, BreakerSettings  # noqa: E402
from server.providers.gateway import GatewayClient  # noqa: E402
from server.services.payment_resolver import PaymentResolver, PaymentResolverSettings  # noqa: E402


class AnsweringProvider:
    """A payment provider's API that says what the test tells it: the authoritative witness.

    GET /v1/payments?idempotency_key=K answers what `says` set for K (read when it answers), 404 for a
    key it was never told about. POST /v1/payments answers a known key the same way and takes no new
    payment (429: a resubmission of another test's payment leaves that payment as it was). `hold`
    keeps the answers about a payment waiting until `release`, so that several checks of it can be in
    flight at once. `gateway` is a GatewayClient for the provider "simulator" (its status words).
    """

    def __init__(self) -> None:
        self.answers: dict[str, dict[str, str]] = {}
        #: the idempotency keys asked about, in order (inquiries and resubmissions)
        self.asked: list[str] = []
        self.gateway: GatewayClient
        self._held: set[str] = set()
        self._released = asyncio.Event()

    def says(
        self,
        payment_id: uuid.UUID,
        status: str,
        *,
        amount: str | None = None,
        currency: str | None = None,
        provider_payment_id: str | None = None,
    ) -> None:
        """From now on the provider's API says `status` about the payment (and the amount and currency,
        when given: evidence naming other terms than the payment's is a misfit)."""
        key = str(payment_id)
        answer = {"id": provider_payment_id or f"pay_{payment_id.hex[:16]}", "status": status, "idempotency_key": key}
        if amount is not None:
            answer["amount"] = amount
        if currency is not None:
            answer["currency"] = currency
        self.answers[key] = answer

    def hold(self, payment_id: uuid.UUID) -> None:
        self._held.add(str(payment_id))
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def times_asked(self, payment_id: uuid.UUID) -> int:
        return self.asked.count(str(payment_id))

    async def until_asked(self, payment_id: uuid.UUID, times: int, timeout_s: float = 10.0) -> None:
        """Wait until the provider has been asked about the payment `times` times."""
        deadline = time.monotonic() + timeout_s
        while self.times_asked(payment_id) < times:
            assert time.monotonic() < deadline, f"asked {self.times_asked(payment_id)} times, not {times}"
            await asyncio.sleep(0.005)

    def resolver(self, database: Database, **settings: Any) -> PaymentResolver:
        """A resolver asking this provider. Its batch is large, so other tests' due payments never crowd
        this test's out, and it never expires another test's payment."""
        return PaymentResolver(
            database, self.gateway, PaymentResolverSettings(**({"batch_size": 500, "expiry_s": 10**9} | settings))
        )

    async def settle(self, database: Database, payment_ids: Iterable[uuid.UUID], timeout_s: float = 20.0) -> None:
        """Run a resolver until none of the payments is due for a check: each due one was asked about,
        and the provider's answer applied."""
        resolver, ids = self.resolver(database), list(payment_ids)
        deadline = time.monotonic() + timeout_s
        while True:
            async with database.connection(Budget.within(5)) as connection:
                due = await connection.fetchval(
                    "SELECT count(*) FROM payments WHERE id = ANY($1::uuid[]) AND next_check_at <= now()", ids
                )
            if not due:
                return
            assert time.monotonic() < deadline, f"{due} payments still due for a check after {timeout_s} s"
            await resolver.run_once()

    async def _find(self, request: web.Request) -> web.Response:
        key = request.query.get("idempotency_key", "")
        self.asked.append(key)
        if key in self._held:
            await self._released.wait()
        answer = self.answers.get(key)
        if answer is None:
            return web.json_response({"error": {"type": "not_found"}}, status=404)
        return web.json_response(answer)

    async def _create(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        self.asked.append(key)
        answer = self.answers.get(key)
        if answer is None:
            return web.json_response({"error": {"type": "rate_limited"}}, status=429, headers={"Retry-After": "60"})
        return web.json_response(answer)


@asynccontextmanager
async def answering_provider() -> AsyncIterator[AnsweringProvider]:
    """An AnsweringProvider listening on a free loopback port, with its gateway; stopped on exit."""
    provider = AnsweringProvider()
    app = web.Application()
    app.router.add_get("/v1/payments", provider._find)
    app.router.add_post("/v1/payments", provider._create)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            breaker = Breaker("simulator.answering", BreakerSettings(failures_max=10_000))
            provider.gateway = GatewayClient("simulator", url, session, breaker)
            yield provider
    finally:
        provider.release()  # answers still held go out before the provider stops
        await runner.cleanup()


# --------------------------------------------------------------------------------------------------
# Evidence applied to a payment the way production applies it
# --------------------------------------------------------------------------------------------------

from server.db.database import in_transaction  # noqa: E402
from server.domain.payment_states import PaymentEvent  # noqa: E402
from server.services.payment_events import Evidence, PaymentOutcome, apply_provider_evidence  # noqa: E402


async def apply_evidence(
    database: Database, payment_id: uuid.UUID, event: PaymentEvent, evidence: Evidence, *, timeout_s: float = 10.0
) -> PaymentOutcome:
    """Apply evidence to a payment through apply_provider_evidence, the path the submission, the resolver
    and the webhooks take, judged by the order of witnesses, in a transaction of its own.

    Evidence witnessed by Ballast (Witness.BALLAST) moves a payment wherever the machine has the move and
    nowhere else; the API's word may also correct a decided payment; a webhook's claim only makes Ballast ask.
    """

    async def work(connection: asyncpg.Connection) -> PaymentOutcome:
        return await apply_provider_evidence(connection, payment_id, event, evidence)

    return await in_transaction(database, Budget.within(timeout_s), work)


# --------------------------------------------------------------------------------------------------
# A venue's report applied to a leg the way production applies it
# --------------------------------------------------------------------------------------------------

from datetime import UTC, datetime  # noqa: E402

from server.domain.order_legs import Fill  # noqa: E402
from server.domain.provider_status import VenueReport  # noqa: E402
from server.services.venue_events import LegOutcome, apply_venue_report  # noqa: E402


async def report_to_leg(
    database: Database,
    leg_id: uuid.UUID | str,
    report: VenueReport,
    evidence_ref: str,
    *,
    fill: Fill | None = None,
    reason: str = "",
    timeout_s: float = 10.0,
) -> LegOutcome:
    """A venue's report about a leg applied through apply_venue_report, the path the webhooks, the leg
    resolver and the instruction sender take, in a transaction of its own (a fill made now).

    A refusal (an illegal move, a fill the leg cannot hold) is a CONTRADICTION: it changes nothing of the
    leg and is named in the leg's case (`refused_because`).
    """

    async def work(connection: asyncpg.Connection) -> LegOutcome:
        return await apply_venue_report(
            connection,
            uuid.UUID(str(leg_id)),
            report,
            evidence_ref,
            fill=fill,
            fill_time=None if fill is None else datetime.now(UTC),
            reason=reason,
        )

    return await in_transaction(database, Budget.within(timeout_s), work)
