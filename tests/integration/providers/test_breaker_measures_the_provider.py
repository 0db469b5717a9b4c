"""The breaker against a real HTTP provider that is slow but healthy: callers in a hurry time out
without opening it, and it opens only when the provider had all of its time and still did not answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest
from aiohttp import web

from server.providers.breaker import Breaker, BreakerSettings, BreakerState
from server.providers.gateway import GatewayClient, NotSent, OutcomeUnknown

#: How long the provider takes to answer: longer than the hurried callers wait, well within its timeout.
ANSWER_S = 0.5
HURRIED_DEADLINE_S = 0.3


@contextlib.asynccontextmanager
async def _slow_provider() -> AsyncIterator[str]:
    async def create_payment(request: web.Request) -> web.Response:
        await asyncio.sleep(ANSWER_S)
        key = request.headers["Idempotency-Key"]
        return web.json_response({"id": f"pay_{key}", "status": "pending"}, status=201)

    app = web.Application()
    app.router.add_post("/v1/payments", create_payment)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _pay(gateway: GatewayClient, timeout_s: float) -> str:
    key = str(uuid.uuid4())
    answer = await gateway.create_payment(key, Decimal("1.00"), "EUR", key, timeout_s=timeout_s)
    return answer.status


async def test_callers_in_a_hurry_leave_the_breaker_closed_and_a_patient_call_then_succeeds() -> None:
    changes: list[str] = []
    breaker = Breaker(
        "simulator.payments",
        BreakerSettings(failures_max=3, open_s=60),
        on_change=lambda _, old, new: changes.append(f"{old.value}->{new.value}"),
    )
    async with _slow_provider() as url, aiohttp.ClientSession() as session:
        gateway = GatewayClient("simulator", url, session, breaker, call_timeout_s=2.0)
        for _ in range(5):
            with pytest.raises(OutcomeUnknown):  # the request may have arrived: the caller is told so
                await _pay(gateway, HURRIED_DEADLINE_S)
        assert breaker.state is BreakerState.CLOSED
        assert await _pay(gateway, timeout_s=2.0) == "pending"
    assert changes == []


async def test_the_same_provider_opens_it_when_it_had_all_of_its_time_and_did_not_answer() -> None:
    breaker = Breaker("simulator.payments", BreakerSettings(failures_max=3, open_s=60))
    async with _slow_provider() as url, aiohttp.ClientSession() as session:
        # the provider is allowed only the hurried deadline, and patient callers give it all of that
        gateway = GatewayClient("simulator", url, session, breaker, call_timeout_s=HURRIED_DEADLINE_S)
        for _ in range(3):
            with pytest.raises(OutcomeUnknown):
                await _pay(gateway, timeout_s=2.0)
        assert breaker.state is BreakerState.OPEN
        started = time.perf_counter()
        with pytest.raises(NotSent) as refused:
            await _pay(gateway, timeout_s=2.0)
        assert time.perf_counter() - started < 0.01  # refused before any I/O
        assert 0 < refused.value.retry_after_s <= 60
