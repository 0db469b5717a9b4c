"""A JetStream consumer runner: durable pull consumer, explicit acks, bounded in flight, and every
message applied through process_if_new so that a redelivery never applies it twice.

A handler error rolls the whole transaction back (the processed-event row too) and the message is
redelivered after a backoff. What the runner does next depends on what failed:

- the infrastructure (the database connection reset, lost or refused, a serialization failure or a
  deadlock) or the order (the handler raised `EarlierEventPending`): nothing is wrong with the event,
  so it is redelivered with a capped backoff for as long as TRANSIENT_MAX_DELIVER deliveries allow;
- anything else is the handler's or the event's own fault: after MAX_DELIVER deliveries the message is
  published to the group's dead-letter subject and acknowledged, so one poison message cannot stall
  the consumer forever.

Every dead letter says why it was given up (`Ballast-Dead-Letter-Reason`, and the log).
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
from server.domain.backoff import backoff_s
from server.messaging.idempotent import process_if_new

log = structlog.get_logger(__name__)

#: Deliveries of a message whose handler keeps failing on its own (a bug, a payload it cannot read)
#: before it is dead-lettered: a few, since the same code run on the same event again rarely does better.
#: JetStream counts deliveries whatever failed, so deliveries lost to transient failures count too.
MAX_DELIVER = 5
#: Messages fetched (and so in flight) per round: the bound on what one runner holds.
BATCH_SIZE = 100
#: How long one round waits for messages: short, so that `run` notices `stopping` within a second.
FETCH_WAIT_S = 1.0
#: How long JetStream waits for an ack before it redelivers: far longer than one batch takes to apply.
ACK_WAIT_S = 30.0
#: The delay before a failed message's second delivery, later ones wait longer (this times the
#: deliveries for a handler's own error, doubling up to REDELIVERY_DELAY_MAX_S for a transient failure):
#: short, since most failures (a lost race, an event ahead of its aggregate's earlier one) are over by then.
REDELIVERY_DELAY_S = 0.5
#: The cap of the doubling delay between deliveries of a message that fails for a transient reason: a
#: recovered database is used again within this many seconds, yet an outage costs a message only one
#: delivery per this many seconds.
REDELIVERY_DELAY_MAX_S = 10.0
#: Deliveries of a message that keeps failing for a transient reason before it is dead-lettered all the
#: same, so that nothing retries forever: 0.5 + 1 + 2 + 4 + 8 s, then 10 s each, about 10 minutes in
#: all, longer than a restart or failover of PostgreSQL or any reset the chaos scenarios inject.
TRANSIENT_MAX_DELIVER = 64

APPLIED = Counter("ballast_consumer_applied", "Events applied by a consumer group", ["group"])
DUPLICATES = Counter("ballast_consumer_duplicates", "Deliveries of events a group had applied already", ["group"])
FAILURES = Counter("ballast_consumer_failures", "Handler failures (the message is redelivered)", ["group"])
CONSUMER_DEAD_LETTERS = Counter("ballast_consumer_dead_letters", "Messages given up as dead letters", ["group"])

#: (connection, subject, payload) -> None; runs inside the transaction process_if_new guards
EventHandler = Callable[[asyncpg.Connection, str, dict[str, Any]], Awaitable[None]]


class EarlierEventPending(Exception):
    """A handler's word that an earlier event of this event's aggregate has not been applied yet, so this
    one cannot be applied now: JetStream's redelivery does not keep an aggregate's order (a payment's
    decision may come before its recording when the recording's first delivery failed). The event is
    not poison: the runner redelivers it later, as after an infrastructure failure, and the earlier
    event comes in the meantime."""


#: Failures that say nothing about the event, only about the database or the moment: the connection
#: reset, lost, refused or timed out (OSError, TimeoutError, class 08, asyncpg's InterfaceError except
#: DataError), a transaction rolled back by a serialization failure or a deadlock (class 40), the server
#: out of connections or memory (class 53), shutting down or cancelling the statement (class 57).
INFRASTRUCTURE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.OperatorInterventionError,
)

#: Why a message is redelivered or given up, in the log and in dead letters' headers.
INFRASTRUCTURE = "infrastructure"
OUT_OF_ORDER = "earlier_event_pending"
HANDLER_ERROR = "handler_error"


def failure_kind(error: Exception, connection: asyncpg.Connection | None = None) -> str:
    """INFRASTRUCTURE, OUT_OF_ORDER or HANDLER_ERROR: whether a failure is the event's own fault.

    A failure on a connection that is closed afterwards is the infrastructure's, whatever it was."""
    if isinstance(error, EarlierEventPending):
        return OUT_OF_ORDER
    if isinstance(error, asyncpg.DataError):  # a value of the event's the database refused: the event's
        return HANDLER_ERROR
    if isinstance(error, INFRASTRUCTURE_ERRORS) or (connection is not None and connection.is_closed()):
        return INFRASTRUCTURE
    return HANDLER_ERROR


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
        transient_max_deliver: int = TRANSIENT_MAX_DELIVER,
        redelivery_delay_s: float = REDELIVERY_DELAY_S,
        redelivery_delay_max_s: float = REDELIVERY_DELAY_MAX_S,
        durable: str | None = None,
        pool_wait_s: float = POOL_WAIT_S,
    ) -> None:
        """`group` names the consumer in the database (which events it applied) and in dead letters;
        `durable` is its durable name on the stream (the group's own by default). The bounds and delays
        default to the module's constants (tests shrink the delays)."""
        self._pool = pool
        self._js = js
        self._stream = stream
        self._subject_prefix = subject_prefix
        self._group = group
        self._durable = durable or group
        self._pool_wait_s = pool_wait_s
        self._handler = handler
        self._max_deliver = max_deliver
        self._transient_max_deliver = transient_max_deliver
        self._redelivery_delay_s = redelivery_delay_s
        self._redelivery_delay_max_s = redelivery_delay_max_s
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
        except Exception as error:  # no connection (the pool busy, the database away): never the event's fault
            await self._failed(message, event_id, error, INFRASTRUCTURE)
            return
        try:
            async with connection.transaction():

                async def work(work_connection: asyncpg.Connection) -> None:
                    await self._handler(work_connection, message.subject, payload)

                applied = await process_if_new(connection, event_id, self._group, work)
        except Exception as error:  # the handler's own errors included: roll back, redeliver
            await self._failed(message, event_id, error, failure_kind(error, connection))
            return
        finally:
            await self._release(connection)
        (APPLIED if applied else DUPLICATES).labels(self._group).inc()
        await message.ack()

    async def _release(self, connection: asyncpg.Connection) -> None:
        """Give the connection back; one that cannot be reset is closed by the pool, which opens another."""
        try:
            await self._pool.release(connection)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("consumer.release_failed", group=self._group, error=str(error)[:200])

    async def _failed(self, message: Msg, event_id: str, error: Exception, kind: str) -> None:
        """Redeliver the message later, or give it up as a dead letter once its kind of failure's bound is
        reached: MAX_DELIVER for the handler's own errors, TRANSIENT_MAX_DELIVER for the others."""
        FAILURES.labels(self._group).inc()
        delivered = message.metadata.num_delivered or 1
        if kind == HANDLER_ERROR:
            bound, delay_s = self._max_deliver, self._redelivery_delay_s * delivered
        else:
            bound = self._transient_max_deliver
            delay_s = backoff_s(delivered, self._redelivery_delay_s, self._redelivery_delay_max_s)
        if delivered < bound:
            report = log.info if kind == OUT_OF_ORDER else log.warning
            report(
                "consumer.redeliver",
                group=self._group,
                event_id=event_id,
                reason=kind,
                delivered=delivered,
                delay_s=delay_s,
                error=str(error)[:200],
            )
            await message.nak(delay=delay_s)
            return
        bound_name = "MAX_DELIVER" if kind == HANDLER_ERROR else "TRANSIENT_MAX_DELIVER"
        why = f"{kind}: still failing after {delivered} deliveries ({bound_name} = {bound})"
        CONSUMER_DEAD_LETTERS.labels(self._group).inc()
        log.error("consumer.dead_letter", group=self._group, event_id=event_id, reason=why, error=str(error)[:200])
        await self._js.publish(
            dead_letter_subject(self._subject_prefix, self._group),
            message.data,
            headers={
                "Nats-Msg-Id": f"{self._group}:{event_id}",
                "Ballast-Error": str(error)[:500],
                "Ballast-Dead-Letter-Reason": why,
            },
        )
        await message.ack()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.run_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("consumer.error", group=self._group, error=str(error)[:200])
                await asyncio.sleep(FETCH_WAIT_S)
