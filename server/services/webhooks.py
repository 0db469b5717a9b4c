"""Webhook intake: a provider's signed event, kept as evidence, applied once, never trusted blindly.

The order matters. The signature is checked over the raw bytes before anything is parsed or stored
(a forgery costs a counter, nothing more). The body is read by the provider's parser
(server/providers/simulator_events.py), then applied with others that arrived together in one
transaction (a group commit, see Intake; the rules of one delivery are in webhook_application.py),
and each delivery is answered only after that commit.

The deliveries waiting for a writer are bounded, in number and in bytes: beyond either bound a
delivery is refused at once (503 with Retry-After; the provider delivers it again later) rather than
held in memory while the database falls behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import asyncpg
import structlog
from prometheus_client import Counter, Gauge, Histogram

from server.db import webhook_deliveries_repository
from server.db.database import Budget, Database, in_transaction
from server.db.webhook_deliveries_repository import Kept
from server.domain.errors import DeadlineExceeded, Defect, Unavailable
from server.domain.evidence import WEBHOOK_BODY_BYTES_MAX
from server.providers.signatures import signature_problem
from server.providers.simulator_events import ProviderEvent, Unreadable, header_text, parse_event
from server.services.webhook_application import Delivery, Outcome, WebhookSource, apply_deliveries, delivery_of

log = structlog.get_logger(__name__)

WEBHOOKS = Counter(
    "ballast_webhooks", "Webhook deliveries by provider and what became of them", ["provider", "outcome"]
)
WEBHOOK_BATCHES = Histogram(
    "ballast_webhook_batch_deliveries",
    "Deliveries applied together in one webhook intake transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
WEBHOOK_BATCHES_SPLIT = Counter(
    "ballast_webhook_batches_split", "Webhook batches that failed and were applied again one delivery at a time"
)
WEBHOOK_QUEUED = Gauge("ballast_webhook_intake_queued", "Webhook deliveries waiting for a writer")
WEBHOOK_QUEUED_BYTES = Gauge("ballast_webhook_intake_queued_bytes", "Bytes of webhook bodies waiting for a writer")
#: Headers kept with the raw body as evidence (lower case); the rest say nothing about the event.
EVIDENCE_HEADERS = frozenset({"content-type", "user-agent", "simulator-signature", "stripe-signature"})
#: The largest body the intake reads (a larger one is refused 413 before anything is parsed or stored).
BODY_BYTES_MAX = WEBHOOK_BODY_BYTES_MAX

#: Writers applying batches at once, and the largest batch one transaction takes.
INTAKE_WRITERS = 2
INTAKE_BATCH_MAX = 64
#: Deliveries waiting for a writer, at most, and their bodies' bytes: beyond either, 503 at once.
INTAKE_QUEUE_MAX = 1024
INTAKE_QUEUE_BYTES_MAX = 64 * 1024 * 1024
#: What a provider refused because the intake is full is told to wait before delivering again.
INTAKE_FULL_RETRY_AFTER_S = 1
#: A batch's own time limit: its deliveries' callers wait less and are told so if it runs over.
BATCH_BUDGET_S = 10.0


class Unauthentic(Exception):
    """The signature is missing, wrong or too old: nothing was stored."""


class IntakeFull(Unavailable):
    """Too many deliveries wait for a writer already: this one was neither stored nor applied."""

    def __init__(self, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"the webhook intake is full; deliver the event again in {retry_after_s} s")


class Intake:
    """Receives webhook deliveries and applies them in group commits.

    Concurrent deliveries are applied together: one transaction keeps every delivery as evidence,
    inserts the processed-event rows first and then applies the new events set-wise, and each
    delivery is answered only after that transaction committed. If the batch fails, each delivery is
    applied again alone, in a transaction of its own, so one bad event cannot fail its neighbours
    (and its own failure leaves nothing behind: the provider's redelivery can succeed). A few writers
    run at once, so PostgreSQL works on one batch while the next one gathers. The deliveries waiting
    are bounded (`queue_max`, `queue_bytes_max`); one that would pass either bound is refused.
    """

    def __init__(
        self,
        database: Database,
        writers: int = INTAKE_WRITERS,
        batch_max: int = INTAKE_BATCH_MAX,
        queue_max: int = INTAKE_QUEUE_MAX,
        queue_bytes_max: int = INTAKE_QUEUE_BYTES_MAX,
    ) -> None:
        self._database = database
        self._writers_count = writers
        self._batch_max = batch_max
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(queue_max)
        self._queue_bytes_max = queue_bytes_max
        self._queued_bytes = 0
        self._writers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._writers = [
            asyncio.create_task(self._write_batches(), name=f"webhook-writer-{n}") for n in range(self._writers_count)
        ]

    async def stop(self) -> None:
        """Stop the writers; deliveries still queued are answered as not applied (the provider retries)."""
        for writer in self._writers:
            writer.cancel()
        await asyncio.gather(*self._writers, return_exceptions=True)
        self._writers = []
        while not self._queue.empty():
            delivery = self._taken()
            if not delivery.answer.done():
                delivery.answer.set_exception(Unavailable("the server is stopping; deliver the event again"))

    async def receive(self, source: WebhookSource, headers: Mapping[str, str], body: bytes, budget: Budget) -> Outcome:
        """Verify, store, and apply one delivery once. Raises Unauthentic, Unreadable or IntakeFull."""
        problem = signature_problem(body, headers.get(source.signature_header), source.secret, int(time.time()))
        if problem is not None:
            WEBHOOKS.labels(source.provider, f"rejected_{problem}").inc()
            raise Unauthentic(f"webhook signature {problem}")
        kept = {name.lower(): header_text(value) for name, value in headers.items() if name.lower() in EVIDENCE_HEADERS}
        event: ProviderEvent | None = None
        try:
            event = parse_event(body)
            delivery = delivery_of(source, event, kept, body)
        except Unreadable:
            await self._keep(Kept(source.provider, None if event is None else event.event_id, kept, body), budget)
            WEBHOOKS.labels(source.provider, "unreadable").inc()
            raise
        if delivery is None:  # authentic, about nothing Ballast keeps (another object type): kept, not applied
            await self._keep(Kept(source.provider, event.event_id, kept, body), budget)
            outcome = Outcome.IGNORED
        else:
            outcome = await self._applied(delivery, budget)
        WEBHOOKS.labels(source.provider, outcome.value).inc()
        log.info(
            "webhook.received", provider=source.provider, event_id=event.event_id, type=event.kind, outcome=outcome
        )
        return outcome

    async def _keep(self, delivery: Kept, budget: Budget) -> None:
        async with self._database.connection(budget) as connection:
            await webhook_deliveries_repository.keep_delivery(connection, delivery, timeout_s=budget.remaining_s())

    def _enqueue(self, delivery: Delivery) -> None:
        """Queue the delivery for a writer, or refuse it (IntakeFull) if either bound would be passed.
        A delivery is always taken into an empty queue, however large (its size is bounded apart)."""
        size = len(delivery.body)
        if self._queue.full() or (self._queued_bytes + size > self._queue_bytes_max and not self._queue.empty()):
            WEBHOOKS.labels(delivery.source.provider, "refused_intake_full").inc()
            log.warning(
                "webhook.intake_full",
                provider=delivery.source.provider,
                queued=self._queue.qsize(),
                queued_bytes=self._queued_bytes,
            )
            raise IntakeFull(INTAKE_FULL_RETRY_AFTER_S)
        self._queue.put_nowait(delivery)
        self._queued_bytes += size
        WEBHOOK_QUEUED.set(self._queue.qsize())
        WEBHOOK_QUEUED_BYTES.set(self._queued_bytes)

    def _taken(self, delivery: Delivery | None = None) -> Delivery:
        """The next delivery off the queue (or `delivery`, just taken by a writer), counted out."""
        if delivery is None:
            delivery = self._queue.get_nowait()
        self._queued_bytes -= len(delivery.body)
        WEBHOOK_QUEUED.set(self._queue.qsize())
        WEBHOOK_QUEUED_BYTES.set(self._queued_bytes)
        return delivery

    async def _applied(self, delivery: Delivery, budget: Budget) -> Outcome:
        """The delivery's outcome once its batch committed; DeadlineExceeded if that takes longer than `budget`."""
        if not self._writers:
            raise Unavailable("webhook intake is not running; deliver the event again")
        self._enqueue(delivery)
        # A caller that stops waiting (out of time, or gone) cancels the answer: a writer that has not
        # taken the delivery yet skips it, one that has applies it and the provider's retry finds it done.
        try:
            async with asyncio.timeout(budget.remaining_s()):
                return await delivery.answer
        except TimeoutError:
            raise DeadlineExceeded("the event was not confirmed in time; deliver it again") from None

    async def _write_batches(self) -> None:
        while True:
            batch = [self._taken(await self._queue.get())]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._taken())
            batch = [delivery for delivery in batch if not delivery.answer.done()]  # its caller gave up
            try:
                await self._write(batch)
            except asyncio.CancelledError:  # stopping: its transaction rolls back unless it already committed
                for delivery in batch:
                    _answer(delivery, error=Unavailable("the server stopped before the event was confirmed"))
                raise

    async def _write(self, batch: list[Delivery]) -> None:
        if not batch:
            return
        WEBHOOK_BATCHES.observe(len(batch))
        try:
            outcomes = await self._apply_in_transaction(batch)
        except Exception as error:
            if len(batch) == 1:
                _answer(batch[0], error=error)
                return
            WEBHOOK_BATCHES_SPLIT.inc()
            log.warning("webhook.batch_failed", deliveries=len(batch), error=str(error) or type(error).__name__)
            for delivery in batch:  # one at a time: a bad event fails alone
                try:
                    (outcome,) = await self._apply_in_transaction([delivery])
                except Exception as alone:
                    _answer(delivery, error=alone)
                else:
                    _answer(delivery, outcome=outcome)
            return
        for delivery, outcome in zip(batch, outcomes, strict=True):
            _answer(delivery, outcome=outcome)

    async def _apply_in_transaction(self, batch: list[Delivery]) -> list[Outcome]:
        async def work(connection: asyncpg.Connection) -> list[Outcome]:
            return await apply_deliveries(connection, batch)

        return await in_transaction(self._database, Budget.within(BATCH_BUDGET_S), work)


def _answer(delivery: Delivery, *, outcome: Outcome | None = None, error: BaseException | None = None) -> None:
    if delivery.answer.done():
        return
    if outcome is not None:
        delivery.answer.set_result(outcome)
    else:
        delivery.answer.set_exception(error or Defect("a delivery answered with nothing"))
