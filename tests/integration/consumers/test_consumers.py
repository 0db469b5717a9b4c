"""Idempotent consumers on real PostgreSQL and NATS JetStream: each event applied once, a failing
handler retried until it succeeds, and the exposure projection matching the ledger when quiet.

A failure that says nothing about the event (the database connection lost, an earlier event of the
aggregate not applied yet) is retried past MAX_DELIVER; a handler's own error is dead-lettered after it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import nats
import pytest
import structlog

from server.db.database import Database
from server.db.engine import create_pool
from server.db.migrate import migrate_to_head
from server.domain import events
from server.domain.identity import Principal, Role
from server.domain.payment_states import PaymentEvent
from server.messaging.consumer import HANDLER_ERROR, MAX_DELIVER, ConsumerRunner, dead_letter_subject
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
    """(NATS connection, JetStream context, stream, subject prefix) of this test's own, with the stream of
    its dead letters (`<stream>_DEAD`) as the relay supervisor makes it."""
    connection = await nats.connect(nats_url)
    js = connection.jetstream()
    stream = f"C{uuid.uuid4().hex[:12].upper()}"
    prefix = stream.lower()
    await ensure_stream(js, stream, prefix)
    await ensure_stream(js, f"{stream}_DEAD", f"{prefix}_dead")
    try:
        yield connection, js, stream, prefix
    finally:
        await js.delete_stream(stream)
        await js.delete_stream(f"{stream}_DEAD")
        await connection.close()


#: Redelivery delays shrunk so that a message failing MAX_DELIVER times and more comes again within
#: milliseconds: the runner's behaviour, not its patience, is what these specs check.
QUICK_REDELIVERY = {"redelivery_delay_s": 0.01, "redelivery_delay_max_s": 0.05}


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


async def _dead_letters(js: Any, stream: str) -> int:
    return int((await js.stream_info(f"{stream}_DEAD")).state.messages)


async def _publish(js: Any, prefix: str, payload: dict[str, Any]) -> str:
    event_id = str(uuid.uuid4())
    await js.publish(f"{prefix}.test.event", json.dumps(payload).encode(), headers={"Nats-Msg-Id": event_id})
    return event_id


async def _lose(pool: asyncpg.Pool, connection: asyncpg.Connection) -> None:
    """What a reset between the consumer and PostgreSQL does to the handler's connection: the server ends
    its session (from another connection) and the handler's next statement fails."""
    await pool.execute("SELECT pg_terminate_backend($1)", connection.get_server_pid())
    await connection.execute("SELECT 1")
    raise AssertionError("a terminated connection answered")


async def test_a_handler_losing_its_connection_more_often_than_max_deliver_is_applied_once_it_stops(
    own_pool: asyncpg.Pool, jetstream: tuple[Any, Any, str, str]
) -> None:
    _, js, stream, prefix = jetstream
    losses = MAX_DELIVER + 2
    deliveries: list[int] = []
    applied: list[str] = []

    async def handler(connection: asyncpg.Connection, subject: str, payload: dict[str, Any]) -> None:
        deliveries.append(1)
        if len(deliveries) <= losses:
            await _lose(own_pool, connection)
        applied.append(payload["name"])

    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = ConsumerRunner(
        own_pool, js, stream=stream, subject_prefix=prefix, group=group, handler=handler, **QUICK_REDELIVERY
    )
    event_id = await _publish(js, prefix, {"name": "survivor"})

    async def settled() -> bool:
        await consumer.run_once(wait_s=0.05)
        return bool(applied) or await _dead_letters(js, stream) > 0

    await until(settled, "the event was applied or dead-lettered")

    assert await _dead_letters(js, stream) == 0
    assert applied == ["survivor"]
    assert len(deliveries) == losses + 1
    claimed = await own_pool.fetchval(
        "SELECT count(*) FROM processed_events WHERE consumer_group = $1 AND event_id = $2", group, event_id
    )
    assert claimed == 1


async def test_a_handlers_own_error_is_dead_lettered_after_max_deliver_deliveries(
    own_pool: asyncpg.Pool, jetstream: tuple[Any, Any, str, str]
) -> None:
    _, js, stream, prefix = jetstream
    deliveries: list[int] = []

    async def handler(connection: asyncpg.Connection, subject: str, payload: dict[str, Any]) -> None:
        deliveries.append(1)
        await connection.execute("CREATE TEMP TABLE written_then_rolled_back (x int)")
        payload["missing"]  # a bug: the event has no such field, and never will

    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = ConsumerRunner(
        own_pool, js, stream=stream, subject_prefix=prefix, group=group, handler=handler, **QUICK_REDELIVERY
    )
    event_id = await _publish(js, prefix, {"name": "poison"})

    async def dead_lettered() -> bool:
        await consumer.run_once(wait_s=0.05)
        return await _dead_letters(js, stream) > 0

    await until(dead_lettered, "the poison event was dead-lettered")

    assert len(deliveries) == MAX_DELIVER
    letters = await js.pull_subscribe(dead_letter_subject(prefix, group), stream=f"{stream}_DEAD")
    (letter,) = await letters.fetch(1, timeout=5)
    assert json.loads(letter.data) == {"name": "poison"}
    assert letter.headers["Nats-Msg-Id"] == f"{group}:{event_id}"
    assert letter.headers["Ballast-Dead-Letter-Reason"].startswith(HANDLER_ERROR)
    assert "missing" in letter.headers["Ballast-Error"]
    assert await consumer.run_once(wait_s=0.05) == 0  # acknowledged: never delivered again
    claimed = await own_pool.fetchval("SELECT count(*) FROM processed_events WHERE consumer_group = $1", group)
    assert claimed == 0


async def test_a_payments_decision_applied_before_its_recording_waits_for_it_and_is_not_poison(
    own_pool: asyncpg.Pool, jetstream: tuple[Any, Any, str, str]
) -> None:
    connection, js, stream, prefix = jetstream
    await own_pool.execute("UPDATE outbox SET published_at = now() WHERE published_at IS NULL")  # earlier tests'
    before = {row["id"] for row in await own_pool.fetch("SELECT id::text AS id FROM outbox")}
    database = Database(own_pool)
    # One merchant has another payment in flight, so its decided payment's decision, applied first,
    # would take in_flight below zero; the other merchant has no row in flight at all.
    merchant, alone = (Principal(f"m-{uuid.uuid4().hex[:8]}", Role.SERVICE) for _ in range(2))
    await new_payment(database, merchant, "10.25", key="pending")
    decided = [await new_payment(database, merchant, "50.00", key="big"), await new_payment(database, alone, "7.00")]
    for index, payment_id in enumerate(decided):
        await apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, Evidence("test", f"d{index}"))
    decided_ids = {str(payment_id) for payment_id in decided}

    lost: dict[str, int] = {}

    async def recordings_lost(connection: asyncpg.Connection, subject: str, payload: dict[str, Any]) -> None:
        # The decided payments' recorded events lose their connection more often than MAX_DELIVER, as
        # they did while PostgreSQL's connections were reset: their decisions are delivered first.
        payment_id = payload.get("payment_id", "")
        if payload.get("type") == events.PAYMENT_RECORDED and payment_id in decided_ids:
            lost[payment_id] = lost.get(payment_id, 0) + 1
            if lost[payment_id] <= MAX_DELIVER + 1:
                await _lose(own_pool, connection)
        await exposures.apply_event(connection, subject, payload)

    relay = OutboxRelay(own_pool, connection, subject_prefix=prefix)
    group = f"exposures-{uuid.uuid4().hex[:8]}"
    consumer = ConsumerRunner(
        own_pool, js, stream=stream, subject_prefix=prefix, group=group, handler=recordings_lost, **QUICK_REDELIVERY
    )

    async def settled() -> bool:
        await relay.run_once()
        await consumer.run_once(wait_s=0.05)
        if await _dead_letters(js, stream) > 0:
            return True
        unapplied = await own_pool.fetchval(
            "SELECT count(*) FROM outbox o WHERE NOT o.id::text = ANY($2::text[]) AND NOT EXISTS"
            " (SELECT FROM processed_events p WHERE p.consumer_group = $1 AND p.event_id = o.id::text)",
            group,
            sorted(before),
        )
        return bool(unapplied == 0)

    with structlog.testing.capture_logs() as logs:
        await until(settled, "every event was applied (or one dead-lettered)")

    assert await _dead_letters(js, stream) == 0
    assert lost == {payment_id: MAX_DELIVER + 2 for payment_id in decided_ids}  # lost MAX_DELIVER + 1 times
    redelivered = [entry for entry in logs if entry["event"] == "consumer.redeliver"]
    assert {entry["reason"] for entry in redelivered} == {"infrastructure", "earlier_event_pending"}
    assert not [entry for entry in logs if "check constraint" in str(entry.get("error", ""))]
    in_flight = {
        row["account"]: row["in_flight"]
        for row in await own_pool.fetch(
            "SELECT account, in_flight FROM exposures WHERE account = ANY($1::text[])",
            [f"merchant_payable:{principal.client_id}" for principal in (merchant, alone)],
        )
    }
    assert in_flight == {
        f"merchant_payable:{merchant.client_id}": Decimal("10.25"),  # the pending one only
        f"merchant_payable:{alone.client_id}": Decimal("0"),
    }
