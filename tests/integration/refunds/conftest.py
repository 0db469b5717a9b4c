"""The refund specs' shop: an in-process server of a spec's own (brand-new clients), whose payment provider is
the simulator in-process, answering at once and settling payments and refunds within milliseconds.

A payment reaches SUCCEEDED the way it does in production: the provider settles it, its webhook makes it
due for a check, and the payment resolver asks the provider's API. A refund the provider answered `pending`
settles at the provider at once; Ballast learns of it from the refund resolver
(server/services/refund_resolver.py), which specs drive directly.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest

from ballast.common.v1.money_pb2 import Money
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from server.db.database import Database
from server.providers.breaker import Breaker, BreakerSettings
from server.providers.gateway import GatewayClient
from server.services.payment_resolver import PaymentResolver, PaymentResolverSettings
from server.services.refund_resolver import RefundResolver
from tests.support.requests import create_payment_request
from tests.support.servers import Caller, in_process_server, new_callers
from tests.support.simulator import simulated_provider, simulator_truth
from tests.support.waiting import until

Stub = payments_pb2_grpc.PaymentServiceStub

#: The simulator answers at once, every payment succeeds, and payments and refunds settle within
#: milliseconds; no refund fails or stays pending for long.
SETTLING_AT_ONCE: dict[str, Any] = {
    "success_rate": 1.0,
    "settle_min_ms": 5,
    "settle_max_ms": 20,
    "refund_settle_min_ms": 5,
    "refund_settle_max_ms": 20,
    "refund_fail_rate": 0.0,
    "refund_stuck_rate": 0.0,
    "webhook_retry_base_ms": 20,
    "retry_after_s": 0,
}
#: A resolver that checks at once whatever is undecided.
CHECK_AT_ONCE = PaymentResolverSettings(
    unknown_grace_s=0,
    pending_overdue_s=0,
    backoff_base_s=0.05,
    backoff_max_s=0.2,
    checks_max=1000,
    batch_size=100,
    provider_timeout_s=2.0,
)
#: What a call may take (the server's own budget is shorter).
CALL_TIMEOUT_S = 10
#: How long a payment or refund may take to settle at the provider and then in Ballast.
SETTLE_TIMEOUT_S = 20
UNDECIDED = ("RECORDED", "UNKNOWN", "PENDING")


def money(value: str, currency: str = "EUR") -> Money:
    return Money(value=value, currency_code=currency)


def refund_request(
    payment_id: str, value: str | None = None, key: str | None = None, currency: str = "EUR", **other: Any
) -> payments_pb2.RefundPaymentRequest:
    """A RefundPaymentRequest for `value` of the payment (None: no amount, all that is left)."""
    request = payments_pb2.RefundPaymentRequest(
        idempotency_key=key or f"refund-{uuid.uuid4()}", payment_id=payment_id, **other
    )
    if value is not None:
        request.amount.CopyFrom(money(value, currency))
    return request


@dataclass
class Shop:
    """A merchant's own server with the simulator as its provider, and another client of the same server."""

    merchant: Caller
    other: Caller
    payments: Stub
    url: str
    gateway: GatewayClient
    pool: asyncpg.Pool
    database: Database

    async def refund(self, request: payments_pb2.RefundPaymentRequest) -> payments_pb2.RefundPaymentResponse:
        response: payments_pb2.RefundPaymentResponse = await self.payments.RefundPayment(
            request, metadata=self.merchant.metadata, timeout=CALL_TIMEOUT_S
        )
        return response

    async def payment(self, payment_id: str) -> payments_pb2.Payment:
        response = await self.payments.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=payment_id), metadata=self.merchant.metadata, timeout=5
        )
        return response.payment

    async def refund_of(self, refund_id: str) -> payments_pb2.Refund:
        response = await self.payments.GetRefund(
            payments_pb2.GetRefundRequest(refund_id=refund_id), metadata=self.merchant.metadata, timeout=5
        )
        return response.refund

    async def created_payment(self, value: str = "100.00", currency: str = "EUR") -> payments_pb2.Payment:
        response = await self.payments.CreatePayment(
            create_payment_request(value=value, currency=currency), metadata=self.merchant.metadata, timeout=5
        )
        return response.payment

    async def succeeded_payment(self, value: str = "100.00", currency: str = "EUR") -> payments_pb2.Payment:
        """A payment the provider took and Ballast knows SUCCEEDED (its resolver asked the provider)."""
        payment = await self.created_payment(value, currency)
        await self.settled_payment(payment.id)
        succeeded = await self.payment(payment.id)
        assert succeeded.state == payments_pb2.PAYMENT_STATE_SUCCEEDED, succeeded
        return succeeded

    async def settled_payment(self, payment_id: str) -> None:
        """Until the provider decided the payment and Ballast holds what it decided."""

        async def decided_at_the_provider() -> bool:
            truth = await simulator_truth(self.url)
            return any(p["idempotency_key"] == payment_id and p["final_status"] != "pending" for p in truth["payments"])

        await until(decided_at_the_provider, f"the provider decided payment {payment_id}", SETTLE_TIMEOUT_S)
        await self.park_others("payments")
        resolver = PaymentResolver(self.database, self.gateway, CHECK_AT_ONCE)

        async def decided_in_ballast() -> bool:
            state = await self.pool.fetchval("SELECT state FROM payments WHERE id = $1", uuid.UUID(payment_id))
            if state not in UNDECIDED:
                return True
            await resolver.run_once()
            return False

        await until(decided_in_ballast, f"Ballast decided payment {payment_id}", SETTLE_TIMEOUT_S, interval_s=0.05)

    async def park_others(self, table: str) -> None:
        """Other clients' undecided rows wait (the shared database's, whose providers are gone), so that a
        resolver built here asks this simulator about this merchant's rows only."""
        assert table in ("payments", "refunds")
        await self.pool.execute(
            f"UPDATE {table} SET next_check_at = 'infinity' WHERE client_id <> $1"
            " AND (state = ANY($2::text[]) OR next_check_at IS NOT NULL)",
            self.merchant.client_id,
            list(UNDECIDED),
        )

    async def settled_refunds(self, refund_ids: Iterable[str]) -> None:
        """Until the provider settled each refund and Ballast holds its outcome: the refund resolver asks
        the provider. Skips the calling spec (after what it asserted so far) while no resolver is built."""
        ids = set(refund_ids)

        async def settled_at_the_provider() -> bool:
            truth = await simulator_truth(self.url)
            mine = [r for r in truth["refunds"] if r["idempotency_key"] in ids]
            return len(mine) == len(ids) and all(r["final_status"] != "pending" for r in mine)

        await until(settled_at_the_provider, "the provider settled every refund", SETTLE_TIMEOUT_S)
        resolver = refund_resolver(self.database, self.gateway)
        await self.park_others("refunds")
        uuids = [uuid.UUID(i) for i in ids]

        async def decided_in_ballast() -> bool:
            undecided = await self.pool.fetchval(
                "SELECT count(*) FROM refunds WHERE id = ANY($1) AND state = ANY($2::text[])", uuids, list(UNDECIDED)
            )
            if undecided == 0:
                return True
            await resolver.run_once()
            return False

        try:
            await until(decided_in_ballast, "Ballast decided every refund", SETTLE_TIMEOUT_S, interval_s=0.05)
        except AssertionError as error:
            states = await self.pool.fetch(
                "SELECT state, check_attempts, next_check_at <= now() AS due, count(*) AS n FROM refunds"
                " WHERE id = ANY($1) GROUP BY 1, 2, 3 ORDER BY 1, 2",
                uuids,
            )
            raise AssertionError(f"{error}: {[dict(row) for row in states]}") from None

    async def rows(self) -> tuple[int, int, int]:
        """(refunds, idempotency keys, provider-side refunds) the merchant has."""
        refunds = await self.pool.fetchval("SELECT count(*) FROM refunds WHERE client_id = $1", self.merchant.client_id)
        keys = await self.pool.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE client_id = $1", self.merchant.client_id
        )
        ids = {
            str(row["id"])
            for row in await self.pool.fetch("SELECT id FROM refunds WHERE client_id = $1", self.merchant.client_id)
        }
        at_provider = [r for r in (await simulator_truth(self.url))["refunds"] if r["idempotency_key"] in ids]
        return refunds, keys, len(at_provider)


def refund_resolver(database: Database, gateway: GatewayClient) -> RefundResolver:
    """The refund resolver, checking at once."""
    return RefundResolver(database, gateway, CHECK_AT_ONCE)


async def ledger_sums(pool: asyncpg.Pool) -> dict[str, Decimal]:
    """The sum of every ledger line, by currency: zero each when the ledger balances."""
    rows = await pool.fetch("SELECT currency_code, sum(amount) AS total FROM ledger_lines GROUP BY currency_code")
    return {row["currency_code"]: row["total"] for row in rows}


async def refund_entries(pool: asyncpg.Pool, refund_ids: Iterable[str]) -> dict[str, int]:
    """How many ledger entries each refund's success posted (event key `refund:<id>:succeeded`)."""
    keys = {f"refund:{refund_id}:succeeded": refund_id for refund_id in refund_ids}
    rows = await pool.fetch(
        "SELECT event_key, count(*) AS n FROM ledger_entries WHERE event_key = ANY($1::text[]) GROUP BY event_key",
        list(keys),
    )
    found = {keys[row["event_key"]]: row["n"] for row in rows}
    return {refund_id: found.get(refund_id, 0) for refund_id in keys.values()}


async def shop_over(pool: asyncpg.Pool, database: Database, tmp_path: Path, **settings: Any) -> AsyncIterator[Shop]:
    merchant, other, auditor = new_callers()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    async with (
        simulated_provider(tmp_path, database, "calm", **(SETTLING_AT_ONCE | settings)) as url,
        aiohttp.ClientSession() as session,
    ):
        gateway = GatewayClient(
            "simulator", url, session, Breaker("simulator.payments", BreakerSettings(failures_max=1000))
        )
        async with (
            in_process_server(pool, (merchant, other, auditor), server_dir, gateway) as address,
            grpc.aio.insecure_channel(address) as channel,
        ):
            yield Shop(merchant, other, Stub(channel), url, gateway, pool, database)


@pytest.fixture
async def shop(pool: asyncpg.Pool, database: Database, tmp_path: Path) -> AsyncIterator[Shop]:
    async for created in shop_over(pool, database, tmp_path):
        yield created
