"""The outbox relay: committed events to NATS JetStream, at least once, de-duplicated by the broker,
in commit order per aggregate.

Each batch is one transaction: claim due events with FOR UPDATE SKIP LOCKED (only the head event of
each aggregate, so that two relays never publish one aggregate's events out of order), publish them
concurrently with `Nats-Msg-Id` = the outbox id, then mark them published, or schedule a retry with
backoff, or park them as dead letters after ATTEMPTS_MAX. A relay killed mid-batch leaves its rows
unmarked; they are published again and the broker drops the copies within its duplicate window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Histogram

from server.db.database import POOL_WAIT_S
from server.domain.backoff import backoff_s
from server.messaging.names import DeploymentNames
from server.outbox.publisher import AckedPublisher, Outgoing

log = structlog.get_logger(__name__)

STREAM_NAME = DeploymentNames().stream
SUBJECT_PREFIX = DeploymentNames().subject_prefix
#: How long the broker remembers a message id: re-publishes within it are dropped as duplicates.
DUPLICATE_WINDOW_S = 600
#: Rows per batch: one transaction, one round of concurrent publishes.
BATCH_SIZE_DEFAULT = 500
ATTEMPTS_MAX = 10
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 300.0
PUBLISH_TIMEOUT_S = 5.0
#: The safety net when a NOTIFY is missed (a dropped listener connection, a notification before LISTEN).
POLL_INTERVAL_S = 1.0
NOTIFY_CHANNEL = "ballast_outbox"

PUBLISHED = Counter("ballast_outbox_published", "Outbox events published to JetStream")
PUBLISH_FAILURES = Counter("ballast_outbox_publish_failures", "Outbox publishes that failed and will be retried")
DEAD_LETTERS = Counter("ballast_outbox_dead_letters", "Outbox events parked after too many failed publishes")
ROUNDS_GIVEN_UP = Counter(
    "ballast_outbox_rounds_given_up",
    "Relay rounds given up (no pooled connection in time, the database away) and tried again later",
    ["reason"],
)
COMMIT_TO_PUBLISH_SECONDS = Histogram(
    "ballast_outbox_commit_to_publish_seconds",
    "Time from an event's insert to its publish acknowledgement",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)

# Ids travel as text and times as float8: decoding UUIDs and NUMERIC into Python objects, only to turn
# them back into strings and floats, costs more per row than the rest of the relay's Python.
# Only the head of each aggregate: an event waits while an earlier one of its aggregate is unpublished
# (dead letters included, so a poison event stops its aggregate rather than let later events overtake it).
_CLAIM = """
SELECT o.id::text AS id, o.topic, o.payload::text AS payload, o.attempts,
       extract(epoch FROM o.created_at)::float8 AS created_epoch
FROM outbox o
WHERE o.published_at IS NULL AND o.dead_lettered_at IS NULL AND o.next_attempt_at <= now()
  AND NOT EXISTS (
      SELECT 1 FROM outbox earlier
      WHERE earlier.published_at IS NULL AND earlier.message_key = o.message_key AND earlier.position < o.position
  )
ORDER BY o.position
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
# clock_timestamp(), not now(): the moment the broker acknowledged, not when the batch began
_MARK_PUBLISHED = (
    "UPDATE outbox SET published_at = clock_timestamp(), attempts = attempts + 1 WHERE id = ANY($1::uuid[])"
)
_MARK_FAILED = """
UPDATE outbox AS o SET attempts = o.attempts + 1,
                       last_error = failed.error,
                       next_attempt_at = now() + make_interval(secs => failed.delay_s),
                       dead_lettered_at = CASE WHEN o.attempts + 1 >= $4 THEN now() END
FROM unnest($1::uuid[], $2::text[], $3::float8[]) AS failed(id, error, delay_s)
WHERE o.id = failed.id
"""


def retry_in_s(attempts: int) -> float:
    """When a row that failed `attempts` times is due again (server/domain/backoff.py)."""
    return backoff_s(attempts, BACKOFF_BASE_S, BACKOFF_MAX_S)


async def ensure_stream(js: JetStreamContext, stream: str = STREAM_NAME, subject_prefix: str = SUBJECT_PREFIX) -> None:
    """The stream that holds every Ballast event, with broker-side de-duplication by message id."""
    config = StreamConfig(name=stream, subjects=[f"{subject_prefix}.>"], duplicate_window=DUPLICATE_WINDOW_S)
    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(config)
    else:
        await js.update_stream(config)


@dataclass(frozen=True)
class BatchResult:
    claimed: int
    published: int
    failed: int


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        connection: NatsClient,
        *,
        batch_size: int = BATCH_SIZE_DEFAULT,
        attempts_max: int = ATTEMPTS_MAX,
        subject_prefix: str = SUBJECT_PREFIX,
        broker_connected: Callable[[], bool] = lambda: True,
        pool_wait_s: float = POOL_WAIT_S,
    ) -> None:
        self._pool = pool
        self._pool_wait_s = pool_wait_s
        self._publisher = AckedPublisher(connection)
        self._batch_size = batch_size
        self._attempts_max = attempts_max
        self._subject_prefix = subject_prefix
        # While the broker is away, events wait: publishing would only burn their attempts.
        self._broker_connected = broker_connected

    async def _publish_all(self, rows: list[asyncpg.Record]) -> list[str | None]:
        """Publish the batch with pipelined acknowledgements; per row, None if acknowledged (a duplicate
        counts), else the error."""
        prefix = self._subject_prefix
        errors = await self._publisher.publish(
            [Outgoing(f"{prefix}.{row['topic']}", row["payload"].encode(), row["id"]) for row in rows],
            timeout_s=PUBLISH_TIMEOUT_S,
        )
        now = time.time()
        for row, error in zip(rows, errors, strict=True):
            if error is None:
                COMMIT_TO_PUBLISH_SECONDS.observe(max(now - row["created_epoch"], 0.0))
        return errors

    async def run_once(self) -> BatchResult:
        """Claim, publish and mark one batch; a bounded amount of work that tests call directly."""
        async with self._pool.acquire(timeout=self._pool_wait_s) as connection, connection.transaction():
            rows = await connection.fetch(_CLAIM, self._batch_size)
            if not rows:
                return BatchResult(0, 0, 0)
            errors = await self._publish_all(list(rows))
            published = [row["id"] for row, error in zip(rows, errors, strict=True) if error is None]
            failed = [(row, error) for row, error in zip(rows, errors, strict=True) if error is not None]
            if published:
                await connection.execute(_MARK_PUBLISHED, published)
            if failed:
                await connection.execute(
                    _MARK_FAILED,
                    [row["id"] for row, _ in failed],
                    [error for _, error in failed],
                    [retry_in_s(row["attempts"] + 1) for row, _ in failed],
                    self._attempts_max,
                )
        PUBLISHED.inc(len(published))
        if failed:
            PUBLISH_FAILURES.inc(len(failed))
            dead = sum(row["attempts"] + 1 >= self._attempts_max for row, _ in failed)
            DEAD_LETTERS.inc(dead)
            log.warning("outbox.publish_failed", failed=len(failed), dead_lettered=dead, first_error=failed[0][1])
        return BatchResult(len(rows), len(published), len(failed))

    async def run(self, stopping: asyncio.Event) -> None:
        """Relay until `stopping` is set: straight on while batches publish; idle, wait for a NOTIFY or the poll."""
        wake = asyncio.Event()
        listener = await _listen(self._pool, wake.set)
        try:
            while not stopping.is_set():
                if not self._broker_connected():
                    await _first_of(stopping.wait(), timeout_s=POLL_INTERVAL_S)
                    continue
                try:
                    result = await self.run_once()
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    # TimeoutError: no pooled connection within the pool wait
                    ROUNDS_GIVEN_UP.labels(type(error).__name__).inc()
                    log.warning(
                        "outbox.relay_error",
                        error=str(error)[:300] or type(error).__name__,
                        hint="retrying after the poll interval",
                    )
                    result = BatchResult(0, 0, 0)
                if result.published:
                    continue  # more may be due at once: the next events of the aggregates just published
                wake.clear()
                await _first_of(stopping.wait(), wake.wait(), timeout_s=POLL_INTERVAL_S)
        finally:
            await listener()


async def _listen(pool: asyncpg.Pool, wake: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    """LISTEN on a connection of its own; returns the coroutine function that stops listening."""
    connection = await pool.acquire(timeout=POOL_WAIT_S)

    def on_notify(*_: object) -> None:
        wake()

    await connection.add_listener(NOTIFY_CHANNEL, on_notify)

    async def stop() -> None:
        try:
            await connection.remove_listener(NOTIFY_CHANNEL, on_notify)
        finally:
            await pool.release(connection)

    return stop


async def _first_of(*waits: Awaitable[object], timeout_s: float) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
