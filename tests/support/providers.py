"""A payment provider whose API answers as the test tells it: the authoritative witness the resolver asks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from server.db.database import Budget, Database
from server.providers.breaker import Breaker, BreakerSettings
from server.providers.gateway import GatewayClient
from server.services.payment_resolver import PaymentResolver, PaymentResolverSettings
from tests.support.probes import claim_waits, due_for_check
from tests.support.waiting import until


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
        await until(lambda: self.times_asked(payment_id) >= times, f"the provider was asked {times} times", timeout_s)

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


async def decided_by_the_api(
    database: Database, says: dict[uuid.UUID, str], amount: str, currency: str, chunk: int = 50
) -> None:
    """The resolver's passes over these payments, which webhooks made due for a check: each is asked
    about once, by its idempotency key, and the provider API's answer (`says`: its status, with the
    object id, amount and currency the webhooks name) decides it."""
    pool, ids = database.pool, list(says)
    not_due = [p for p in ids if await claim_waits(pool, p) and not await due_for_check(pool, p)]
    assert not_due == [], f"a claim never made these due for a check with the provider's API: {not_due}"
    async with answering_provider() as provider:
        for payment_id, status in says.items():
            object_id = f"pay_{payment_id.hex[:12]}"
            provider.says(payment_id, status, amount=amount, currency=currency, provider_payment_id=object_id)
        for start in range(0, len(ids), chunk):
            taken = ids[start : start + chunk]
            # first in line, in a database other specs share: the pass takes exactly these
            await pool.execute("UPDATE payments SET next_check_at = '-infinity' WHERE id = ANY($1::uuid[])", taken)
            assert await provider.resolver(database, batch_size=len(taken)).run_once() == len(taken)
        assert Counter(provider.asked) == Counter(dict.fromkeys(map(str, ids), 1)), provider.asked
    for payment_id in ids:
        assert not await due_for_check(pool, payment_id), "a payment the API decided still waits for a check"
