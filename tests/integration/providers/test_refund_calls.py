"""The gateway's refund calls against the simulator over real HTTP: a refund answered with its terms,
replayed under its key, found by id and by key, refused with a reason a caller can tell apart, and
every failure sorted like a payment's (NotSent, OutcomeUnknown), through the same breaker."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from server.providers.breaker import Breaker, BreakerSettings, BreakerState
from server.providers.gateway import (
    GatewayClient,
    NotSent,
    OutcomeUnknown,
    ProviderRefund,
    RefundRefusal,
    Refused,
    refusal_code,
)
from simulator.app import build_app
from simulator.engine import Simulator
from simulator.profiles import profile
from tests.support.waiting import until

#: No request faults; payments always succeed; payments and refunds settle within a few milliseconds.
SETTINGS: dict[str, Any] = {
    "success_rate": 1.0,
    "settle_min_ms": 5,
    "settle_max_ms": 20,
    "refund_settle_min_ms": 5,
    "refund_settle_max_ms": 20,
}
TIMEOUT_S = 5.0
#: The simulator's webhook secret (it has no webhook URL here: nothing is sent).
SECRET = "whsec_refund_calls"  # noqa: S105 - a test secret
#: What a caller waits for a refund whose answer the provider holds back (accept-then-timeout, hang).
SHORT_TIMEOUT_S = 0.5


@dataclass
class Provider:
    """The simulator in-process on a free port, counting the requests that reach it."""

    url: str
    session: aiohttp.ClientSession
    simulator: Simulator
    #: every request that reached the simulator, as (method, path)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def gateway(self, breaker: Breaker | None = None, session: aiohttp.ClientSession | None = None) -> GatewayClient:
        breaker = breaker or Breaker("simulator.payments", BreakerSettings(failures_max=1000))
        return GatewayClient("simulator", self.url, session or self.session, breaker, call_timeout_s=TIMEOUT_S)

    @asynccontextmanager
    async def faulty(self, fault: str, breaker: Breaker | None = None) -> AsyncIterator[GatewayClient]:
        """A gateway whose every request names `fault` in the simulator's Simulator-Fault header."""
        async with aiohttp.ClientSession(headers={"Simulator-Fault": fault}) as session:
            yield self.gateway(breaker, session)

    async def truth_of_refund(self, key: str) -> dict[str, Any] | None:
        """The refund the provider really holds under `key`, from its truth (not a /v1/ request)."""
        async with self.session.get(f"{self.url}/_sim/truth") as response:
            truth = await response.json()
        return next((refund for refund in truth["refunds"] if refund["idempotency_key"] == key), None)


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    simulator = Simulator(
        profile_name="calm", seed=13, settings=profile("calm").with_overrides(SETTINGS), webhook_secret=SECRET
    )
    app = build_app(simulator)
    requests: list[tuple[str, str]] = []

    @web.middleware
    async def count(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        if request.path.startswith("/v1/"):
            requests.append((request.method, request.path))
        return await handler(request)

    app.middlewares.insert(0, count)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Provider(f"http://127.0.0.1:{runner.addresses[0][1]}", session, simulator, requests)
    finally:
        await runner.cleanup()


async def _captured(gateway: GatewayClient, amount: str = "12.34") -> str:
    """A payment the provider has captured (succeeded), by the provider's id."""
    key = str(uuid.uuid4())
    payment = await gateway.create_payment(key, Decimal(amount), "EUR", f"order-{key}", TIMEOUT_S)

    async def succeeded() -> bool:
        found = await gateway.find_payment(key, TIMEOUT_S)
        return found is not None and found.status == "succeeded"

    await until(succeeded, "the payment succeeded at the provider")
    return payment.provider_payment_id


async def _until_succeeded(gateway: GatewayClient, refund: ProviderRefund, key: str) -> None:
    """Until both the inquiry by id and the one by key see the refund succeed."""

    async def succeeded() -> bool:
        by_id = await gateway.get_refund(refund.provider_refund_id, TIMEOUT_S)
        by_key = await gateway.find_refund(key, TIMEOUT_S)
        assert by_id is not None and by_key is not None, "the provider lost the refund"
        assert by_id.provider_refund_id == by_key.provider_refund_id == refund.provider_refund_id
        return by_id.status == by_key.status == "succeeded"

    await until(succeeded, f"refund {refund.provider_refund_id} succeeded at the provider")


async def test_a_partial_refund_is_pending_with_its_terms_replays_under_its_key_and_is_found_when_it_succeeds(
    provider: Provider,
) -> None:
    gateway = provider.gateway()
    payment_id = await _captured(gateway)
    key = str(uuid.uuid4())

    refund = await gateway.create_refund(key, payment_id, Decimal("5.00"), "EUR", "requested_by_customer", TIMEOUT_S)

    assert refund.provider_refund_id.startswith("re_")
    assert (refund.status, refund.amount, refund.currency_code, refund.provider_payment_id) == (
        "pending",
        "5.00",
        "EUR",
        payment_id,
    )
    assert json.loads(refund.body)["idempotency_key"] == key  # the raw answer, kept as evidence
    replay = await gateway.create_refund(key, payment_id, Decimal("5.00"), "EUR", "requested_by_customer", TIMEOUT_S)
    assert (replay.provider_refund_id, replay.status, replay.amount) == (refund.provider_refund_id, "pending", "5.00")
    truth = await provider.truth_of_refund(key)
    assert truth is not None and truth["amount"] == "5.00" and truth["payment"] == payment_id

    await _until_succeeded(gateway, refund, key)
    found = await gateway.find_refund(key, TIMEOUT_S)
    assert found is not None and (found.amount, found.currency_code, found.provider_payment_id) == (
        "5.00",
        "EUR",
        payment_id,
    )
    assert sum(1 for r in provider.simulator.refunds.objects.values() if r.idempotency_key == key) == 1


async def test_an_amount_goes_as_exact_decimal_text(provider: Provider) -> None:
    gateway = provider.gateway()
    payment_id = await _captured(gateway)
    # str() would send "1E+1", which the provider refuses as no amount
    refund = await gateway.create_refund(str(uuid.uuid4()), payment_id, Decimal("1E+1"), "EUR", "", TIMEOUT_S)
    assert refund.amount == "10"
    with pytest.raises(ValueError, match="not an amount"):
        await gateway.create_refund(str(uuid.uuid4()), payment_id, Decimal("NaN"), "EUR", "", TIMEOUT_S)


async def test_refusals_say_why_so_a_caller_can_tell_them_apart(provider: Provider) -> None:
    gateway = provider.gateway()
    payment_id = await _captured(gateway)

    with pytest.raises(Refused) as too_large:
        await gateway.create_refund(str(uuid.uuid4()), payment_id, Decimal("12.35"), "EUR", "", TIMEOUT_S)
    assert too_large.value.status == 400
    assert refusal_code(too_large.value.body) == RefundRefusal.AMOUNT_TOO_LARGE

    with pytest.raises(Refused) as other_currency:
        await gateway.create_refund(str(uuid.uuid4()), payment_id, Decimal("1.00"), "USD", "", TIMEOUT_S)
    assert refusal_code(other_currency.value.body) == RefundRefusal.CURRENCY_MISMATCH

    key = str(uuid.uuid4())
    refund = await gateway.create_refund(key, payment_id, Decimal("12.34"), "EUR", "", TIMEOUT_S)
    with pytest.raises(Refused) as conflict:  # the same key with another amount
        await gateway.create_refund(key, payment_id, Decimal("1.00"), "EUR", "", TIMEOUT_S)
    assert conflict.value.status == 409
    assert refusal_code(conflict.value.body) == RefundRefusal.IDEMPOTENCY_CONFLICT

    await _until_succeeded(gateway, refund, key)  # refunded in full: nothing more can be refunded
    with pytest.raises(Refused) as refunded:
        await gateway.create_refund(str(uuid.uuid4()), payment_id, Decimal("1.00"), "EUR", "", TIMEOUT_S)
    assert refunded.value.status == 409
    assert refusal_code(refunded.value.body) == RefundRefusal.PAYMENT_NOT_REFUNDABLE

    with pytest.raises(Refused) as unknown:
        await gateway.create_refund(str(uuid.uuid4()), "pay_nosuchpayment", Decimal("1.00"), "EUR", "", TIMEOUT_S)
    assert unknown.value.status == 404
    assert refusal_code(unknown.value.body) is None


async def test_what_the_provider_does_not_know_is_none(provider: Provider) -> None:
    gateway = provider.gateway()
    assert await gateway.find_refund(str(uuid.uuid4()), TIMEOUT_S) is None
    assert await gateway.get_refund("re_nosuchrefund", TIMEOUT_S) is None
    before = len(provider.requests)
    # an id the provider never gives is not a path to put in a URL: not asked about at all
    for hostile in ("..", "../payments", "re_x?idempotency_key=k", "re x", ""):
        assert await gateway.get_refund(hostile, TIMEOUT_S) is None
        with pytest.raises(ValueError, match="not a provider's payment id"):
            await gateway.create_refund(str(uuid.uuid4()), hostile, Decimal("1.00"), "EUR", "", TIMEOUT_S)
    assert len(provider.requests) == before


async def test_an_accepted_refund_whose_answer_never_came_is_unknown_and_the_inquiry_finds_it(
    provider: Provider,
) -> None:
    gateway = provider.gateway()
    payment_id = await _captured(gateway)
    key = str(uuid.uuid4())
    async with provider.faulty("accept-then-timeout") as hurried:
        with pytest.raises(OutcomeUnknown):
            await hurried.create_refund(key, payment_id, Decimal("2.50"), "EUR", "", SHORT_TIMEOUT_S)

    found = await gateway.find_refund(key, TIMEOUT_S)
    assert found is not None, "the provider created the refund, and the inquiry by key did not find it"
    assert (found.amount, found.currency_code, found.provider_payment_id) == ("2.50", "EUR", payment_id)
    assert (await provider.truth_of_refund(key) or {}).get("create_fault") == "accept-then-timeout"
    await _until_succeeded(gateway, found, key)


@pytest.mark.parametrize(
    ("fault", "outcome", "provider_holds_it"),
    [
        ("error=503", OutcomeUnknown, False),  # a 5xx: the provider may have acted, for all Ballast knows
        ("error=500", OutcomeUnknown, False),
        ("reset", OutcomeUnknown, False),
        ("malformed", OutcomeUnknown, True),  # processed, and the answer cannot be read
        ("rate-limit=0", NotSent, False),  # told to come back before anything was done
    ],
)
async def test_each_failure_is_sorted_by_what_the_provider_may_have_done(
    provider: Provider, fault: str, outcome: type[Exception], provider_holds_it: bool
) -> None:
    gateway = provider.gateway()
    payment_id = await _captured(gateway)
    key = str(uuid.uuid4())
    async with provider.faulty(fault) as faulty:
        with pytest.raises(outcome):
            await faulty.create_refund(key, payment_id, Decimal("1.00"), "EUR", "", TIMEOUT_S)
    assert (await gateway.find_refund(key, TIMEOUT_S) is not None) is provider_holds_it


@contextmanager
def _nobody_listening() -> Iterator[str]:
    """The URL of a loopback port nothing listens on, for as long as the block runs."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound, never listening: a connection is refused
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


async def test_an_unreachable_provider_is_not_sent() -> None:
    with _nobody_listening() as url:
        async with aiohttp.ClientSession() as session:
            gateway = GatewayClient("simulator", url, session, Breaker("simulator.payments", BreakerSettings()))
            with pytest.raises(NotSent) as refused:
                await gateway.create_refund(str(uuid.uuid4()), "pay_x", Decimal("1.00"), "EUR", "", TIMEOUT_S)
            assert refused.value.unreachable
            with pytest.raises(NotSent):
                await gateway.find_refund(str(uuid.uuid4()), TIMEOUT_S)


async def test_refund_calls_share_the_payments_breaker_and_an_open_one_sends_nothing(provider: Provider) -> None:
    breaker = Breaker("simulator.payments", BreakerSettings(failures_max=2, open_s=60))
    gateway = provider.gateway(breaker)
    payment_id = await _captured(gateway)
    async with provider.faulty("error=503", breaker) as failing:
        with pytest.raises(OutcomeUnknown):
            await failing.create_payment(str(uuid.uuid4()), Decimal("1.00"), "EUR", "order", TIMEOUT_S)
        with pytest.raises(OutcomeUnknown):
            await failing.find_refund(str(uuid.uuid4()), TIMEOUT_S)
    assert breaker.state is BreakerState.OPEN  # a payment's failure and a refund's counted together

    before, key = len(provider.requests), str(uuid.uuid4())
    with pytest.raises(NotSent) as refused:
        await gateway.create_refund(key, payment_id, Decimal("1.00"), "EUR", "", TIMEOUT_S)
    assert 0 < refused.value.retry_after_s <= 60
    with pytest.raises(NotSent):
        await gateway.find_refund(key, TIMEOUT_S)
    with pytest.raises(NotSent):
        await gateway.get_refund("re_any", TIMEOUT_S)
    assert provider.requests[before:] == []
    assert await provider.truth_of_refund(key) is None
