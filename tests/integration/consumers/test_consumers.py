"""Idempotent consumers on real PostgreSQL and NATS JetStream: each event applied once, a failing
handler retried until it succeeds, and the exposure projection matching the ledger when quiet."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import nats
import pytest

from server.db.database import Database
from server.db.engine import create_pool
from server.db.migrate import migrate_to_head
from server.domain.identity import Principal, Role
from server.domain.payment_states import PaymentEvent
from server.messaging.consumer import ConsumerRunner
from server.messaging.idempotent import process_if_new
from server.outbox.relay import OutboxRelay, ensure_stream
from server.services import exposures
from server.services.payment_events import Evidence
from tests.support import apply_evidence, scratch_database, until
from tests.support.requests import new_payment


@pytest.fixture(scope="module")
def consumer_database_url(server_database_url: str) -> Iterator[str]:
    with scratch_database(server_database_url, "ballast_consumers") as url:
        migrate_to_head(url)
        yield url


@pytest.fixture
async def own_pool(consumer_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(consumer_database_url, size=10, statement_timeout_ms=30_000)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def jetstream(nats_url: str) -> AsyncIterator[tuple[Any, Any, str, str]]:
    """(NATS connection, JetStream context, stream, subject prefix) of this test's own."""
    connection = await nats.connect(nats_url)
    js = connection.jetstream()
    stream = f"C{uuid.uuid4().hex[:12].upper()}"
    prefix = stream.lower()
    await ensure_stream(js, stream, prefix)
    try:
        yield connection, js, stream, prefix
    finally:
        await js.delete_stream(stream)
        await connection.close()


async def test_process_if_new_applies_an_event_once_and_forgets_it_if_the_work_fails(own_pool: asyncpg.Pool) -> None:
    event_id, group = str(uuid.uuid4()), f"g-{uuid.uuid4().hex[:8]}"
    calls: list[int] = []

    async def failing(connection: asyncpg.Connection) -> None:
        calls.append(1)
        raise RuntimeError("the handler broke")

    async def working(connection: asyncpg.Connection) -> None:
        calls.append(2)

    with pytest.raises(RuntimeError):
        async with own_pool.acquire() as connection, connection.transaction():
            await process_if_new(connection, event_id, group, failing)
    assert await own_pool.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", event_id) == 0

    async def deliver() -> bool:
        async with own_pool.acquire() as connection, connection.transaction():
            return await process_if_new(connection, event_id, group, working)

    outcomes = await asyncio.gather(*(deliver() for _ in range(20)))
    assert outcomes.count(True) == 1
    assert calls == [1, 2]


async def _drain(relay: OutboxRelay, consumer: ConsumerRunner) -> None:
    for _ in range(100):
        published = (await relay.run_once()).published
        consumed = await consumer.run_once(wait_s=0.3)
        if not published and not consumed:
            return


async def test_the_exposure_projection_matches_the_ledger_and_survives_a_failing_handler(
    own_pool: asyncpg.Pool, jetstream: tuple[Any, Any, str, str]
) -> None:
    connection, js, stream, prefix = jetstream
    await own_pool.execute("UPDATE outbox SET published_at = now() WHERE published_at IS NULL")  # earlier tests'
    database = Database(own_pool)
    merchant = Principal(f"m-{uuid.uuid4().hex[:8]}", Role.SERVICE)
    outcomes = [PaymentEvent.SUCCEEDED, PaymentEvent.FAILED, None, PaymentEvent.ACCEPTED, PaymentEvent.SUCCEEDED]
    for index, event in enumerate(outcomes):
        payment_id = await new_payment(database, merchant, f"{10 + index}.25", key=f"k{index}")
        if event is not None:
            await apply_evidence(database, payment_id, event, Evidence("test", f"e{index}"))

    failed_once: set[str] = set()

    async def flaky(connection: asyncpg.Connection, subject: str, payload: dict[str, Any]) -> None:
        # Fail the first delivery of every ledger posting, after writing: the rollback must undo it.
        await exposures.apply_event(connection, subject, payload)
        if payload.get("type") == "ledger.posted" and payload["event_id"] not in failed_once:
            failed_once.add(payload["event_id"])
            raise RuntimeError("transient failure")

    relay = OutboxRelay(own_pool, connection, subject_prefix=prefix)
    group = f"exposures-{uuid.uuid4().hex[:8]}"
    consumer = ConsumerRunner(own_pool, js, stream=stream, subject_prefix=prefix, group=group, handler=flaky)
    await _drain(relay, consumer)

    async def everything_applied() -> bool:  # a failed delivery comes again REDELIVERY_DELAY_S later
        await _drain(relay, consumer)
        applied = await own_pool.fetchval("SELECT count(*) FROM processed_events WHERE consumer_group = $1", group)
        return bool(applied == await own_pool.fetchval("SELECT count(*) FROM outbox"))

    await until(everything_applied, "the failed deliveries came again and were applied")

    assert len(failed_once) == 2
    account = f"merchant_payable:{merchant.client_id}"
    row = await own_pool.fetchrow("SELECT in_flight, settled FROM exposures WHERE account = $1", account)
    ledger = await own_pool.fetchval("SELECT coalesce(sum(amount), 0) FROM ledger_lines WHERE account = $1", account)
    assert row["settled"] == ledger == Decimal("-24.50")  # the two that succeeded: 10.25 and 14.25
    assert row["in_flight"] == Decimal("25.50")  # the recorded one (12.25) and the pending one (13.25)
    clearing = await own_pool.fetchval("SELECT settled FROM exposures WHERE account = 'provider_clearing'")
    assert clearing == Decimal("24.50")
    applied = await own_pool.fetchval("SELECT count(*) FROM processed_events WHERE consumer_group = $1", group)
    assert applied == await own_pool.fetchval("SELECT count(*) FROM outbox")
