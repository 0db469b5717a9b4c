"""Fixtures that run the simulator in-process on a free port, with a webhook receiver beside it.

Everything goes over real HTTP: the tests see the simulator exactly as Ballast will.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from simulator.app import build_app
from simulator.engine import Simulator
from simulator.profiles import profile
from simulator.signing import SIGNATURE_HEADER, verify
from tests.support.waiting import until

SECRET = "whsec_test_secret"  # noqa: S105 - a test webhook secret, not a credential

# fast enough for a test suite, slow enough that "pending" is observable
FAST = {
    "settle_min_ms": 5,
    "settle_max_ms": 20,
    "refund_settle_min_ms": 5,
    "refund_settle_max_ms": 20,
    "webhook_retry_base_ms": 10,
    "webhook_timeout_ms": 2000,
}


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll `check` until it is true; fail naming `what` after the deadline (tests.support.until, with the
    simulator specs' own default deadline)."""
    await until(check, what, timeout_s)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """A webhook endpoint that records every POST; `fail_next` answers that many with a 500."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    fail_next: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(dict(request.headers), await request.read()))
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=500)
        return web.Response(status=200)

    def events(self, payment_id: str | None = None) -> list[dict[str, Any]]:
        """Events of good deliveries only (a 500'd attempt is retried), in arrival order."""
        events = [item.event for item in self.received if verify(item.body, item.headers[SIGNATURE_HEADER], SECRET)]
        return [e for e in events if payment_id is None or e["data"]["object"]["id"] == payment_id]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}/hooks"
    yield receiver
    await runner.cleanup()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Sim:
    """A running simulator: its base URL, an HTTP session, and the object itself for assertions."""

    url: str
    http: aiohttp.ClientSession
    simulator: Simulator

    async def pay(self, key: str, amount: str = "12.34", *, fault: str | None = None, timeout_s: float = 5.0) -> Reply:
        headers = {"Idempotency-Key": key}
        if fault is not None:
            headers["Simulator-Fault"] = fault
        body = {"amount": amount, "currency": "EUR", "reference": f"order-{key}"}
        async with self.http.post(
            f"{self.url}/v1/payments", json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def refund(
        self,
        payment_id: str,
        key: str,
        amount: str | None = None,
        *,
        currency: str = "EUR",
        fault: str | None = None,
        timeout_s: float = 5.0,
        **fields: Any,
    ) -> Reply:
        """POST /v1/payments/{id}/refunds: `amount` None asks for the rest of the payment."""
        headers = {"Idempotency-Key": key}
        if fault is not None:
            headers["Simulator-Fault"] = fault
        body: dict[str, Any] = {"currency": currency, **fields}
        if amount is not None:
            body["amount"] = amount
        async with self.http.post(
            f"{self.url}/v1/payments/{payment_id}/refunds",
            json=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def post(
        self, path: str, body: dict[str, Any] | None = None, *, key: str | None = None, fault: str | None = None
    ) -> Reply:
        headers = {}
        if key is not None:
            headers["Idempotency-Key"] = key
        if fault is not None:
            headers["Simulator-Fault"] = fault
        async with self.http.post(f"{self.url}{path}", json=body, headers=headers) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def order(self, key: str, *, fault: str | None = None, **fields: str) -> Reply:
        """Submit an order leg: a market buy of 100 ACME unless `fields` say otherwise."""
        body = {"symbol": "ACME", "side": "buy", "type": "market", "quantity": "100", "currency": "USD", **fields}
        return await self.post("/v1/orders", body, key=key, fault=fault)

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(f"{self.url}{path}") as response:
            return response.status, await response.json()

    async def truth(self) -> dict[str, Any]:
        status, body = await self.get("/_sim/truth")
        assert status == 200
        result: dict[str, Any] = body
        return result

    async def settled(self) -> bool:
        """Every payment and refund out of pending and every webhook event done (delivered, dropped, given up)."""
        truth = await self.truth()
        return all(
            p["status"] != "pending" and all(w["outcome"] != "queued" for w in p["webhooks"])
            for p in truth["payments"] + truth["refunds"]
        )

    async def orders_settled(self) -> bool:
        """Every order done working (filled, rejected, canceled, or resting) and every webhook event done."""
        truth = await self.truth()
        return all(
            (o["rests"] or o["status"] not in ("new", "partially_filled"))
            and all(w["outcome"] != "queued" for w in o["webhooks"])
            for o in truth["orders"]
        )


StartSim = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """start_sim(profile="calm", seed=42, webhook_url=None, **settings) -> a running Sim."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(profile_name: str = "calm", seed: int = 42, webhook_url: str | None = None, **settings: Any) -> Sim:
        simulator = Simulator(
            profile_name=profile_name,
            seed=seed,
            settings=profile(profile_name).with_overrides({**FAST, **settings}),
            webhook_url=webhook_url,
            webhook_secret=SECRET,
        )
        runner = web.AppRunner(build_app(simulator), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        http = aiohttp.ClientSession()
        sessions.append(http)
        return Sim(f"http://{host}:{port}", http, simulator)

    yield start
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()
