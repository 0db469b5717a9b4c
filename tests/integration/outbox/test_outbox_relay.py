"""The outbox relay against real PostgreSQL and a real NATS JetStream: nothing lost, nothing published
twice after de-duplication, each aggregate's events in commit order, failures retried then parked."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from server.db.engine import create_pool
from server.db.migrate import migrate_to_head
from server.messaging.names import DeploymentNames
from server.outbox import admin
from server.outbox.relay import BatchResult, OutboxRelay, ensure_stream
from tests.support import scratch_database


@pytest.fixture(scope="module")
def relay_database_url(server_database_url: str) -> Iterator[str]:
    """A database of its own: the relay claims every pending event, so no other test's events interfere."""
    with scratch_database(server_database_url, "ballast_relay") as url:
        migrate_to_head(url)
        yield url


@pytest.fixture
async def relay_pool(relay_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(relay_database_url, size=10, statement_timeout_ms=30_000)
    await pool.execute("DELETE FROM outbox")
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def broker(nats_url: str) -> AsyncIterator[tuple[NatsClient, JetStreamContext]]:
    connection = await nats.connect(nats_url)
    try:
        yield connection, connection.jetstream()
    finally:
        await connection.close()


@pytest.fixture
async def stream(broker: tuple[NatsClient, JetStreamContext]) -> AsyncIterator[tuple[str, str]]:
    """A stream and subject prefix of this test's own: (stream name, prefix)."""
    name = f"T{uuid.uuid4().hex[:12].upper()}"
    prefix = name.lower()
    await ensure_stream(broker[1], name, prefix)
    try:
        yield name, prefix
    finally:
        await broker[1].delete_stream(name)


async def _insert_events(pool: asyncpg.Pool, aggregates: int, per_aggregate: int) -> None:
    """Events of `aggregates` aggregates, each aggregate's numbered 0.. in commit (position) order."""
    await pool.execute(
        """
        INSERT INTO outbox (id, topic, message_key, payload)
        SELECT gen_random_uuid(), 'test.event', 'agg-' || a, jsonb_build_object('aggregate', a, 'n', n)
        FROM generate_series(0, $2 - 1) AS n, generate_series(0, $1 - 1) AS a
        ORDER BY n, a
        """,
        aggregates,
        per_aggregate,
    )


async def _stream_messages(js: JetStreamContext, stream: str, prefix: str) -> list[tuple[str, dict[str, int]]]:
    """Every message of the stream in stream order: (Nats-Msg-Id, payload)."""
    info = await js.stream_info(stream)
    subscription = await js.pull_subscribe(f"{prefix}.>", durable=None, stream=stream)
    messages: list[tuple[str, dict[str, int]]] = []
    while len(messages) < info.state.messages:
        for message in await subscription.fetch(min(1000, info.state.messages - len(messages)), timeout=10):
            messages.append((message.headers["Nats-Msg-Id"] if message.headers else "", json.loads(message.data)))
            await message.ack()
    await subscription.unsubscribe()
    return messages


async def _drain(relays: list[OutboxRelay]) -> None:
    async def drain_one(relay: OutboxRelay) -> None:
        for _ in range(10_000):
            if (await relay.run_once()).claimed == 0:
                return

    await asyncio.gather(*(drain_one(relay) for relay in relays))


async def test_three_relays_drain_twenty_thousand_events_once_each_in_order_per_aggregate(
    relay_pool: asyncpg.Pool, broker: tuple[NatsClient, JetStreamContext], stream: tuple[str, str]
) -> None:
    name, prefix = stream
    await _insert_events(relay_pool, aggregates=400, per_aggregate=50)
    relays = [OutboxRelay(relay_pool, broker[0], batch_size=500, subject_prefix=prefix) for _ in range(3)]
    await _drain(relays)
    # A late straggler pass: whatever a relay skipped as not-yet-head is published now.
    await _drain(relays)

    assert await relay_pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    messages = await _stream_messages(broker[1], name, prefix)
    ids = [message_id for message_id, _ in messages]
    assert len(ids) == len(set(ids)) == 20_000
    seen: dict[int, int] = {}
    for _, payload in messages:
        aggregate, number = payload["aggregate"], payload["n"]
        assert number == seen.get(aggregate, -1) + 1, f"aggregate {aggregate} out of order"
        seen[aggregate] = number


async def test_a_failing_publish_is_retried_with_backoff_then_parked_as_a_dead_letter(
    relay_pool: asyncpg.Pool, broker: tuple[NatsClient, JetStreamContext]
) -> None:
    await _insert_events(relay_pool, aggregates=2, per_aggregate=2)
    # No stream listens on this prefix: JetStream answers every publish with an error.
    relay = OutboxRelay(relay_pool, broker[0], attempts_max=2, subject_prefix=f"nowhere{uuid.uuid4().hex[:8]}")
    first = await relay.run_once()
    assert (first.claimed, first.published, first.failed) == (2, 0, 2)  # one head per aggregate
    rows = await relay_pool.fetch(
        "SELECT attempts, last_error, next_attempt_at > now() AS later FROM outbox WHERE attempts > 0"
    )
    assert all(row["attempts"] == 1 and row["last_error"] and row["later"] for row in rows)
    assert (await relay.run_once()).claimed == 0  # backing off
    await relay_pool.execute("UPDATE outbox SET next_attempt_at = now()")
    assert (await relay.run_once()).failed == 2
    dead = await relay_pool.fetchval("SELECT count(*) FROM outbox WHERE dead_lettered_at IS NOT NULL")
    assert dead == 2
    await relay_pool.execute("UPDATE outbox SET next_attempt_at = now()")
    # A dead letter holds back the later events of its aggregate: they never overtake it.
    assert (await relay.run_once()).claimed == 0
    async with relay_pool.acquire() as connection:
        listed = await admin.dead_letters(connection)
        assert len(listed) == 2 and all(letter.attempts == 2 and letter.last_error for letter in listed)
        assert await admin.redrive_dead_letters(connection) == 2
    assert (await relay.run_once()).claimed == 2  # due again, from the first attempt


class StandInStream:
    """Answers the JetStream publishes on a subject prefix in a stream's place, over the real broker.

    Every publish that reaches the broker is counted by its Nats-Msg-Id (the outbox id), so the count
    is of real publish attempts, duplicates included, whichever relay made them. Each is refused with
    an error acknowledgement (`refuse`), or acknowledged; the acknowledgement of a message id in `held`
    waits until `release`.
    """

    def __init__(self, prefix: str, *, refuse: bool) -> None:
        self.prefix = prefix
        self.refuse = refuse
        self.publishes: Counter[str] = Counter()
        self.held: set[str] = set()
        self.holding = asyncio.Event()
        self._released = asyncio.Event()
        self._answers: set[asyncio.Task[None]] = set()

    def release(self) -> None:
        self._released.set()

    async def _received(self, message: Msg) -> None:
        message_id = message.headers.get("Nats-Msg-Id", "") if message.headers else ""
        self.publishes[message_id] += 1
        answer = asyncio.create_task(self._answer(message, held=message_id in self.held))
        self._answers.add(answer)
        answer.add_done_callback(self._answers.discard)

    async def _answer(self, message: Msg, *, held: bool) -> None:
        if held:
            self.holding.set()
            await self._released.wait()
        if self.refuse:
            await message.respond(b'{"error": {"code": 500, "err_code": 10000, "description": "refused by the test"}}')
        else:
            await message.respond(b'{"stream": "STANDIN", "seq": 1}')


@asynccontextmanager
async def stand_in_stream(nats_url: str, *, refuse: bool) -> AsyncIterator[StandInStream]:
    stand_in = StandInStream(f"standin{uuid.uuid4().hex[:10]}", refuse=refuse)
    connection = await nats.connect(nats_url)
    try:
        await connection.subscribe(f"{stand_in.prefix}.>", cb=stand_in._received)
        await connection.flush()
        yield stand_in
    finally:
        stand_in.release()
        await connection.drain()


@asynccontextmanager
async def separate_relays(
    database_url: str, nats_url: str, count: int, *, batch_size: int, subject_prefix: str, attempts_max: int = 10
) -> AsyncIterator[list[OutboxRelay]]:
    """`count` relays, each with its own database pool and broker connection, as separate processes have."""
    async with AsyncExitStack() as stack:
        relays = []
        for _ in range(count):
            pool = await create_pool(database_url, size=2, statement_timeout_ms=30_000)
            stack.push_async_callback(pool.close)
            connection = await nats.connect(nats_url)
            stack.push_async_callback(connection.close)
            relays.append(
                OutboxRelay(
                    pool, connection, batch_size=batch_size, attempts_max=attempts_max, subject_prefix=subject_prefix
                )
            )
        yield relays


async def _insert_one_event_each(pool: asyncpg.Pool, aggregates: int) -> list[str]:
    """One event for each of `aggregates` new aggregates; their ids in commit order."""
    rows = await pool.fetch(
        "INSERT INTO outbox (id, topic, message_key, payload)"
        " SELECT gen_random_uuid(), 'test.event', 'agg-' || gen_random_uuid(), jsonb_build_object('a', a)"
        " FROM generate_series(1, $1) AS a ORDER BY a RETURNING id::text",
        aggregates,
    )
    return [row["id"] for row in rows]


async def test_relays_side_by_side_publish_an_event_once_per_attempt_and_park_it_after_exactly_attempts_max(
    relay_database_url: str, relay_pool: asyncpg.Pool, nats_url: str
) -> None:
    """No two relays ever hold one event: each round of attempts publishes each event exactly once, and an
    event is a dead letter after its attempts_max-th real publish, not before and not after."""
    attempts_max = 3
    async with (
        stand_in_stream(nats_url, refuse=True) as stand_in,
        separate_relays(
            relay_database_url, nats_url, 4, batch_size=50, attempts_max=attempts_max, subject_prefix=stand_in.prefix
        ) as relays,
    ):
        ids = await _insert_one_event_each(relay_pool, 400)
        for attempt in range(1, attempts_max + 2):
            await _drain(relays)
            rows = await relay_pool.fetch("SELECT id::text, attempts, dead_lettered_at IS NOT NULL AS dead FROM outbox")
            expected = min(attempt, attempts_max)
            published = {message_id: stand_in.publishes[message_id] for message_id in ids}
            assert set(published.values()) == {expected}, f"after round {attempt}: {Counter(published.values())}"
            assert {(row["attempts"], row["dead"]) for row in rows} == {(expected, expected == attempts_max)}
            await relay_pool.execute("UPDATE outbox SET next_attempt_at = now()")  # no waiting out the backoff


async def test_a_relay_in_a_slow_publish_holds_up_no_other_relay(
    relay_database_url: str, relay_pool: asyncpg.Pool, nats_url: str
) -> None:
    """While one relay waits for the broker to acknowledge its event, another claims and publishes the
    other aggregates' events at once: relays skip each other's row locks, never queue behind them."""
    async with (
        stand_in_stream(nats_url, refuse=False) as stand_in,
        separate_relays(relay_database_url, nats_url, 2, batch_size=1, subject_prefix=stand_in.prefix) as relays,
    ):
        [slow, *others] = await _insert_one_event_each(relay_pool, 21)
        stand_in.held.add(slow)
        slow_relay, other_relay = relays
        slowly = asyncio.create_task(slow_relay.run_once())  # claims the first event, waits for its ack
        try:
            await asyncio.wait_for(stand_in.holding.wait(), 5)

            async def publish_the_others() -> None:
                while (await other_relay.run_once()).published:
                    pass

            await asyncio.wait_for(publish_the_others(), 3)
            assert not slowly.done(), "the slow relay was to be still waiting for its acknowledgement"
            published = await relay_pool.fetch("SELECT id::text FROM outbox WHERE published_at IS NOT NULL")
            assert sorted(row["id"] for row in published) == sorted(others)
        finally:
            stand_in.release()
            result = await asyncio.wait_for(slowly, 10)
    assert (result.claimed, result.published) == (1, 1)
    assert stand_in.publishes[slow] == 1


async def test_a_committed_event_wakes_a_waiting_relay_faster_than_the_poll(
    relay_pool: asyncpg.Pool, broker: tuple[NatsClient, JetStreamContext], stream: tuple[str, str]
) -> None:
    _, prefix = stream
    relay = OutboxRelay(relay_pool, broker[0], subject_prefix=prefix)
    first_round = asyncio.Event()
    run_once = relay.run_once

    async def noted_round() -> BatchResult:
        result = await run_once()
        first_round.set()  # the relay goes on to wait for a NOTIFY before the spec runs again
        return result

    relay.run_once = noted_round  # type: ignore[method-assign]
    stopping = asyncio.Event()
    running = asyncio.create_task(relay.run(stopping))
    try:
        await first_round.wait()  # idle on LISTEN
        loop = asyncio.get_running_loop()
        started = loop.time()
        await _insert_events(relay_pool, aggregates=1, per_aggregate=1)
        for _ in range(200):
            if await relay_pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"):
                break
            await asyncio.sleep(0.01)
        latency_s = loop.time() - started
    finally:
        stopping.set()
        await running
    assert latency_s < 0.5, f"published {latency_s:.3f}s after commit; the poll interval is 1s"


async def test_a_broker_outage_loses_nothing_and_burns_no_attempts(
    relay_pool: asyncpg.Pool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The relay waits while NATS is down, and delivers everything once it is back."""
    from server.messaging.embedded_nats import start_nats_process
    from server.outbox.supervisor import RelayConfig, run_relays

    store = tmp_path_factory.mktemp("outage")
    url, process = start_nats_process(store)
    port = int(url.rsplit(":", 1)[1])
    config = RelayConfig(url, workers=2, batch_size=100, names=DeploymentNames("outage"))
    stopping = asyncio.Event()
    relaying = asyncio.create_task(run_relays(relay_pool, config, stopping))
    try:
        await _insert_events(relay_pool, aggregates=10, per_aggregate=10)
        await _wait_for(lambda: _unpublished(relay_pool), 0)
        process.terminate()
        process.wait(10)
        await _insert_events(relay_pool, aggregates=10, per_aggregate=30)
        # the behaviour under test: an outage longer than the poll interval, in which the relay notices and
        # must neither publish nor count attempts
        await asyncio.sleep(1.5)
        assert await _unpublished(relay_pool) == 300
        assert await relay_pool.fetchval("SELECT max(attempts) FROM outbox WHERE published_at IS NULL") == 0
        url, process = start_nats_process(store, port)
        await _wait_for(lambda: _unpublished(relay_pool), 0, timeout_s=30)
        connection = await nats.connect(url)
        try:
            info = await connection.jetstream().stream_info("OUTAGE")
        finally:
            await connection.close()
        assert info.state.messages == 400
    finally:
        stopping.set()
        await asyncio.wait_for(relaying, timeout=20)
        process.terminate()
        process.wait(10)


async def _unpublished(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def _wait_for(read: Callable[[], Awaitable[int]], expected: int, timeout_s: float = 10) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if await read() == expected:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"still {await read()} after {timeout_s}s, expected {expected}")


async def test_published_events_are_pruned_after_their_retention_and_gauges_report_the_backlog(
    relay_pool: asyncpg.Pool,
) -> None:
    from server.outbox import maintenance

    await _insert_events(relay_pool, aggregates=5, per_aggregate=4)  # 20 events
    await relay_pool.execute(
        "UPDATE outbox SET published_at = now() - interval '200 hours'"
        " WHERE id IN (SELECT id FROM outbox ORDER BY position LIMIT 8)"
    )
    await relay_pool.execute(
        "UPDATE outbox SET published_at = now() - interval '2 hours'"
        " WHERE id IN (SELECT id FROM outbox WHERE published_at IS NULL ORDER BY position LIMIT 4)"
    )
    await relay_pool.execute(
        "UPDATE outbox SET dead_lettered_at = now()"
        " WHERE id IN (SELECT id FROM outbox WHERE published_at IS NULL ORDER BY position LIMIT 1)"
    )
    assert await maintenance.prune(relay_pool, retention_hours=168) == 8
    assert await relay_pool.fetchval("SELECT count(*) FROM outbox") == 12
    await maintenance.sample(relay_pool)
    assert maintenance.PENDING._value.get() == 7  # 20 - 8 pruned - 4 published - 1 dead
    assert maintenance.DEAD_LETTERED._value.get() == 1
    assert maintenance.OLDEST_PENDING_AGE._value.get() >= 0


def _rounds_given_up() -> float:
    return REGISTRY.get_sample_value("ballast_outbox_rounds_given_up_total", {"reason": "TimeoutError"}) or 0.0


async def test_a_relay_that_finds_the_pool_taken_waits_a_bounded_time_and_relays_once_a_connection_frees(
    relay_database_url: str, broker: tuple[NatsClient, JetStreamContext], stream: tuple[str, str]
) -> None:
    """Every pooled connection held elsewhere: each round gives up after its pool wait, and the relay
    goes on running; once a connection is free, the events go out."""
    pool = await create_pool(relay_database_url, size=2, statement_timeout_ms=30_000)
    observer = await create_pool(relay_database_url, size=1, statement_timeout_ms=30_000)
    held: list[asyncpg.Connection] = []
    try:
        await pool.execute("DELETE FROM outbox")
        await _insert_events(pool, aggregates=2, per_aggregate=3)
        relay = OutboxRelay(pool, broker[0], subject_prefix=stream[1], pool_wait_s=0.2)
        held += [await pool.acquire(), await pool.acquire()]
        with pytest.raises(TimeoutError):
            await relay.run_once()  # a bounded wait, not a hang
        given_up = _rounds_given_up()
        stopping = asyncio.Event()
        running = asyncio.create_task(relay.run(stopping))
        try:
            await pool.release(held.pop())  # its listener takes this one; its rounds still find none
            deadline = time.monotonic() + 10
            while _rounds_given_up() == given_up:
                assert time.monotonic() < deadline, "the relay never gave up a round"
                await asyncio.sleep(0.01)
            assert not running.done()  # it gave up the round, not the work
            assert await _unpublished(observer) == 6
            await pool.release(held.pop())
            await _wait_for(lambda: _unpublished(observer), 0)
        finally:
            stopping.set()
            await asyncio.wait_for(running, timeout=20)
    finally:
        for connection in held:
            await pool.release(connection)
        await pool.close()
        await observer.close()
