"""A JetStream consumer runner: durable pull consumer, explicit acks, bounded in flight, and every
message applied through process_if_new so that a redelivery never applies it twice.

A handler error rolls the whole transaction back (the processed-event row too) and the message is
redelivered after a backoff; after MAX_DELIVER deliveries it is published to the group's dead-letter
subject and acknowledged, so one poison message cannot stall the consumer forever.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import Counter

from server.db.database import POOL_WAIT_S
from server.messaging.idempotent import process_if_new

log = structlog.get_logger(__name__)

MAX_DELIVER = 5
#: Messages fetched (and so in flight) per round: the bound on what one runner holds.
BATCH_SIZE = 100
FETCH_WAIT_S = 1.0
ACK_WAIT_S = 30.0
REDELIVERY_DELAY_S = 0.5

APPLIED = Counter("ballast_consumer_applied", "Events applied by a consumer group", ["group"])
DUPLICATES = Counter("ballast_consumer_duplicates", "Deliveries of events a group had applied already", ["group"])
FAILURES = Counter("ballast_consumer_failures", "Handler failures (the message is redelivered)", ["group"])
CONSUMER_DEAD_LETTERS = Counter("ballast_consumer_dead_letters", "Messages given up after MAX_DELIVER", ["group"])

#: (connection, subject, payload) -> None; runs inside the transaction process_if_new guards
EventHandler = Callable[[asyncpg.Connection, str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class ConsumerGroup:
    """One of Ballast's own consumers: its group name (in the database and in dead letters) and what it
    does with each event."""

    group: str
    handler: EventHandler


def dead_letter_subject(subject_prefix: str, group: str) -> str:
    return f"{subject_prefix}_dead.{group}"


class ConsumerRunner:
    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        *,
        stream: str,
        subject_prefix: str,
        group: str,
        handler: EventHandler,
        max_deliver: int = MAX_DELIVER,
        durable: str | None = None,
        pool_wait_s: float = POOL_WAIT_S,
    ) -> None:
        """`group` names the consumer in the database (which events it applied) and in dead letters;
        `durable` is its durable name on the stream (the group's own by default)."""
        self._pool = pool
        self._js = js
        self._stream = stream
        self._subject_prefix = subject_prefix
        self._group = group
        self._durable = durable or group
        self._pool_wait_s = pool_wait_s
        self._handler = handler
        self._max_deliver = max_deliver
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        if self._subscription is None:
            config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S, max_ack_pending=BATCH_SIZE * 10)
            self._subscription = await self._js.pull_subscribe(
                f"{self._subject_prefix}.>", durable=self._durable, stream=self._stream, config=config
            )
        return self._subscription

    async def run_once(self, wait_s: float = FETCH_WAIT_S) -> int:
        """Fetch and handle one batch, in order; the number of messages handled."""
        subscription = await self._subscribe()
        try:
            messages = await subscription.fetch(BATCH_SIZE, timeout=wait_s)
        except (NatsTimeoutError, TimeoutError):
            return 0
        for message in messages:
            await self._handle(message)
        return len(messages)

    async def _handle(self, message: Msg) -> None:
        headers = message.headers or {}
        payload: dict[str, Any] = json.loads(message.data)
        event_id = headers.get("Nats-Msg-Id") or str(payload.get("event_id", ""))
        try:
            connection = await self._pool.acquire(timeout=self._pool_wait_s)
        except TimeoutError:  # no pooled connection in time: not the event's fault, try it later
            log.warning("consumer.pool_busy", group=self._group, event_id=event_id, waited_s=self._pool_wait_s)
            await message.nak(delay=REDELIVERY_DELAY_S)
            return
        try:
            async with connection.transaction():

                async def work(work_connection: asyncpg.Connection) -> None:
                    await self._handler(work_connection, message.subject, payload)

                applied = await process_if_new(connection, event_id, self._group, work)
        except Exception as error:  # the handler's own errors included: roll back, redeliver
            await self._failed(message, event_id, error)
            return
        finally:
            await self._pool.release(connection)
        (APPLIED if applied else DUPLICATES).labels(self._group).inc()
        await message.ack()

    async def _failed(self, message: Msg, event_id: str, error: Exception) -> None:
        FAILURES.labels(self._group).inc()
        delivered = message.metadata.num_delivered or 1
        if delivered < self._max_deliver:
            log.warning(
                "consumer.redeliver", group=self._group, event_id=event_id, delivered=delivered, error=str(error)[:200]
            )
            await message.nak(delay=REDELIVERY_DELAY_S * delivered)
            return
        CONSUMER_DEAD_LETTERS.labels(self._group).inc()
        log.error("consumer.dead_letter", group=self._group, event_id=event_id, error=str(error)[:200])
        await self._js.publish(
            dead_letter_subject(self._subject_prefix, self._group),
            message.data,
            headers={"Nats-Msg-Id": f"{self._group}:{event_id}", "Ballast-Error": str(error)[:500]},
        )
        await message.ack()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.run_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("consumer.error", group=self._group, error=str(error)[:200])
                await asyncio.sleep(FETCH_WAIT_S)
