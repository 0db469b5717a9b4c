"""Webhook intake: a provider's signed event, kept as evidence, applied once, never trusted blindly.

The order matters. The signature is checked over the raw bytes before anything is parsed or stored
(a forgery costs a counter, nothing more). Then one transaction stores the delivery as received
(duplicates included), inserts the (event id, consumer group) row first and only then applies the
event through the state machine, so a second delivery, concurrent or late, finds the row and does
nothing, and a failure rolls back all of it, so the provider's redelivery can succeed.

Deliveries that arrive together share that transaction (a group commit, see Intake): the rules
above hold for each of them, and each is answered only after the commit."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import asyncpg
import structlog
from prometheus_client import Counter, Histogram

from server.db.database import Budget, Database, in_transaction
from server.domain.errors import DeadlineExceeded, NotFound, Unavailable
from server.domain.order_legs import Fill
from server.domain.payment_states import Verdict, Witness
from server.domain.provider_status import UnknownProviderStatus, VenueReport, event_for, venue_report_for
from server.domain.stated import stated
from server.messaging.idempotent import Alongside, claim_new
from server.providers.signatures import signature_problem
from server.services.payment_events import Application, Evidence, apply_provider_evidence_each
from server.services.venue_events import apply_venue_report

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
#: Headers kept with the raw body as evidence (lower case); the rest say nothing about the event.
EVIDENCE_HEADERS = frozenset({"content-type", "user-agent", "simulator-signature", "stripe-signature"})
BODY_BYTES_MAX = 1024 * 1024
HEADER_LENGTH_MAX = 1024
_INSERT_DELIVERY = "INSERT INTO webhook_deliveries (provider, event_id, headers, body) VALUES ($1, $2, $3, $4)"
_INSERT_DELIVERIES = (
    "INSERT INTO webhook_deliveries (provider, event_id, headers, body)"
    " SELECT * FROM unnest($3::text[], $4::text[], $5::jsonb[], $6::bytea[])"
)


@dataclass(frozen=True)
class WebhookSource:
    """A provider that sends webhooks: its name in URLs, its secret, the header carrying the signature."""

    provider: str
    secret: str
    signature_header: str = "Simulator-Signature"

    @property
    def consumer_group(self) -> str:
        return f"webhooks.{self.provider}"


class Outcome(enum.StrEnum):
    APPLIED = "applied"  # news, or for a leg also a repeat
    #: a payment's outcome claimed: kept, and the provider's API is asked at once; its answer decides
    CONFIRMING = "confirming"
    DUPLICATE = "duplicate"
    STALE = "stale"
    #: a venue contradicting what it said of a leg: a case was opened
    CONTRADICTION = "contradiction"
    #: about another amount, currency or provider object than Ballast's: kept, nothing moved, a case opened
    MISFIT = "misfit"
    REPEAT = "repeat"
    IGNORED = "ignored"  # authentic, but about nothing Ballast has (another object type, another merchant's id)


class Unauthentic(Exception):
    """The signature is missing, wrong or too old: nothing was stored."""


class Unreadable(Exception):
    """Signed, stored as evidence, but not an event Ballast can read (answer 400: the provider keeps it)."""


@dataclass(frozen=True)
class _Event:
    event_id: str
    kind: str
    #: Ballast's own payment or leg id, which it sends as the provider's idempotency key
    subject_id: uuid.UUID | None
    provider_object_id: str | None
    #: a payment's status word, or an order's execution type
    status: str | None
    #: an order event's execution (fill), as the venue sent it
    execution: dict[str, Any] | None = None
    reason: str = ""
    #: the event's object as the provider sent it (amounts, currency, symbol: what fit checks compare)
    data: dict[str, Any] = field(default_factory=dict)


def _text(value: object, length_max: int) -> str | None:
    """A provider's text, fit to be stored in a text column: NUL and lone surrogates (which JSON can
    carry and PostgreSQL refuses) replaced; the raw body keeps the original."""
    if not isinstance(value, str):
        return None
    return value[:length_max].replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _header_text(value: str) -> str:
    """A header's value, fit to be stored in JSON: bytes that were not UTF-8 (which the HTTP server
    hands over as lone surrogates) decoded with replacement characters, NUL replaced."""
    with contextlib.suppress(UnicodeEncodeError):  # a surrogate that stands for no byte: _text replaces it
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return cast(str, _text(value, HEADER_LENGTH_MAX))


#: The deepest nesting of objects and arrays an event may have; a provider's events are a few levels deep.
NESTING_DEPTH_MAX = 32


def _deeper_than(value: object, depth_max: int) -> bool:
    """Whether `value` nests objects and arrays deeper than `depth_max` (walked without recursion)."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > depth_max:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _parse(body: bytes) -> _Event:
    try:
        parsed = json.loads(body, parse_float=Decimal)  # an amount sent as a number stays exact
    except RecursionError:  # nested deeper than the parser goes: not an event, but kept as evidence
        raise Unreadable(f"the body nests deeper than {NESTING_DEPTH_MAX} levels") from None
    except ValueError:
        raise Unreadable("the body is not JSON") from None
    if _deeper_than(parsed, NESTING_DEPTH_MAX):
        raise Unreadable(f"the body nests deeper than {NESTING_DEPTH_MAX} levels")
    try:
        event_id, kind, data = parsed["id"], parsed["type"], parsed["data"]["object"]
    except (KeyError, TypeError):
        raise Unreadable("the body is not a provider event (id, type, data.object)") from None
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= 256 or not isinstance(kind, str):
        raise Unreadable("the event id must be a string of 1 to 256 characters")
    if _text(event_id, 256) != event_id:
        raise Unreadable("the event id holds characters no id has (NUL, lone surrogates)")
    if not kind.startswith(("payment.", "order.")) or not isinstance(data, dict):
        return _Event(event_id, kind, None, None, None)
    try:
        subject_id = uuid.UUID(str(data.get("idempotency_key", "")))
    except ValueError:
        subject_id = None
    is_order = kind.startswith("order.")
    execution = data.get("execution") if is_order else None
    return _Event(
        event_id,
        kind,
        subject_id,
        _text(data.get("id"), 255),
        _text(data.get("exec_type") if is_order else data.get("status"), 64),
        execution if isinstance(execution, dict) else None,
        _text(data.get("reject_reason"), 500) or "",
        data,
    )


def _fill(event: _Event) -> tuple[Fill, datetime]:
    """The fill an order event carries; Unreadable if it carries none a leg could take."""
    execution = event.execution or {}
    try:
        execution_id = _text(str(execution["id"]), 128) or ""
        fill = Fill(execution_id, Decimal(str(execution["quantity"])), Decimal(str(execution["price"])))
        fill_time = datetime.fromtimestamp(int(execution["time"]), UTC)
    except (KeyError, ValueError, TypeError, ArithmeticError, OverflowError):
        raise Unreadable(f"event {event.event_id}: a fill without a readable execution") from None
    return fill, fill_time


#: Writers applying batches at once, and the largest batch one transaction takes.
INTAKE_WRITERS = 2
INTAKE_BATCH_MAX = 64
#: A batch's own time limit: its deliveries' callers wait less and are told so if it runs over.
BATCH_BUDGET_S = 10.0


class Intake:
    """Receives webhook deliveries and applies them in group commits.

    Concurrent deliveries are applied together: one transaction keeps every delivery as evidence,
    inserts the processed-event rows first and then applies the new events set-wise, and each
    delivery is answered only after that transaction committed. If the batch fails, each delivery is
    applied again alone, in a transaction of its own, so one bad event cannot fail its neighbours
    (and its own failure leaves nothing behind: the provider's redelivery can succeed). A few writers
    run at once, so PostgreSQL works on one batch while the next one gathers.
    """

    def __init__(self, database: Database, writers: int = INTAKE_WRITERS, batch_max: int = INTAKE_BATCH_MAX) -> None:
        self._database = database
        self._writers_count = writers
        self._batch_max = batch_max
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue()
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
            delivery = self._queue.get_nowait()
            if not delivery.answer.done():
                delivery.answer.set_exception(Unavailable("the server is stopping; deliver the event again"))

    async def receive(self, source: WebhookSource, headers: Mapping[str, str], body: bytes, budget: Budget) -> Outcome:
        """Verify, store, and apply one delivery once. Raises Unauthentic or Unreadable."""
        problem = signature_problem(body, headers.get(source.signature_header), source.secret, int(time.time()))
        if problem is not None:
            WEBHOOKS.labels(source.provider, f"rejected_{problem}").inc()
            raise Unauthentic(f"webhook signature {problem}")
        kept = {
            name.lower(): _header_text(value) for name, value in headers.items() if name.lower() in EVIDENCE_HEADERS
        }
        event: _Event | None = None
        try:
            event = _parse(body)
            delivery = _delivery(source, event, kept, body)
        except Unreadable:
            await _store(self._database, source, None if event is None else event.event_id, kept, body, budget)
            WEBHOOKS.labels(source.provider, "unreadable").inc()
            raise
        if delivery is None:  # authentic, about nothing Ballast keeps (another object type): kept, not applied
            await _store(self._database, source, event.event_id, kept, body, budget)
            outcome = Outcome.IGNORED
        else:
            outcome = await self._applied(delivery, budget)
        WEBHOOKS.labels(source.provider, outcome.value).inc()
        log.info(
            "webhook.received", provider=source.provider, event_id=event.event_id, type=event.kind, outcome=outcome
        )
        return outcome

    async def _applied(self, delivery: _Delivery, budget: Budget) -> Outcome:
        """The delivery's outcome once its batch committed; DeadlineExceeded if that takes longer than `budget`."""
        if not self._writers:
            raise Unavailable("webhook intake is not running; deliver the event again")
        self._queue.put_nowait(delivery)
        # A caller that stops waiting (out of time, or gone) cancels the answer: a writer that has not
        # taken the delivery yet skips it, one that has applies it and the provider's retry finds it done.
        try:
            async with asyncio.timeout(budget.remaining_s()):
                return await delivery.answer
        except TimeoutError:
            raise DeadlineExceeded("the event was not confirmed in time; deliver it again") from None

    async def _write_batches(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [delivery for delivery in batch if not delivery.answer.done()]  # its caller gave up
            try:
                await self._write(batch)
            except asyncio.CancelledError:  # stopping: its transaction rolls back unless it already committed
                for delivery in batch:
                    _answer(delivery, error=Unavailable("the server stopped before the event was confirmed"))
                raise

    async def _write(self, batch: list[_Delivery]) -> None:
        if not batch:
            return
        WEBHOOK_BATCHES.observe(len(batch))
        try:
            outcomes = await _apply_in_transaction(self._database, batch)
        except Exception as error:
            if len(batch) == 1:
                _answer(batch[0], error=error)
                return
            WEBHOOK_BATCHES_SPLIT.inc()
            log.warning("webhook.batch_failed", deliveries=len(batch), error=str(error) or type(error).__name__)
            for delivery in batch:  # one at a time: a bad event fails alone
                try:
                    (outcome,) = await _apply_in_transaction(self._database, [delivery])
                except Exception as alone:
                    _answer(delivery, error=alone)
                else:
                    _answer(delivery, outcome=outcome)
            return
        for delivery, outcome in zip(batch, outcomes, strict=True):
            _answer(delivery, outcome=outcome)


@dataclass(frozen=True)
class _Delivery:
    """A readable, authentic delivery of an event about a payment or a leg, waiting to be applied."""

    source: WebhookSource
    event: _Event
    headers: dict[str, str]
    body: bytes
    #: what the event says about a payment, or what it reports about a leg (exactly one is set)
    payment: Application | None
    leg: Apply | None
    answer: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _answer(delivery: _Delivery, *, outcome: Outcome | None = None, error: BaseException | None = None) -> None:
    if delivery.answer.done():
        return
    if outcome is not None:
        delivery.answer.set_result(outcome)
    else:
        delivery.answer.set_exception(error or RuntimeError("a delivery answered with nothing"))


def _delivery(source: WebhookSource, event: _Event, headers: dict[str, str], body: bytes) -> _Delivery | None:
    """The delivery to apply; None for an event about nothing Ballast keeps. Raises Unreadable."""
    subject_id, status = event.subject_id, event.status
    if subject_id is None or status is None:
        return None
    if event.kind.startswith("payment."):
        return _Delivery(source, event, headers, body, _payment_application(source, event, subject_id, status), None)
    return _Delivery(source, event, headers, body, None, _leg_handler(source, event, subject_id, status))


async def _store(
    database: Database,
    source: WebhookSource,
    event_id: str | None,
    headers: dict[str, str],
    body: bytes,
    budget: Budget,
) -> None:
    async with database.connection(budget) as connection:
        await connection.execute(
            _INSERT_DELIVERY,
            source.provider,
            event_id,
            headers,
            body,
            timeout=budget.remaining_s(),
        )


async def _apply_in_transaction(database: Database, batch: list[_Delivery]) -> list[Outcome]:
    async def work(connection: asyncpg.Connection) -> list[Outcome]:
        return await _apply_batch(connection, batch)

    return await in_transaction(database, Budget.within(BATCH_BUDGET_S), work)


async def _apply_batch(connection: asyncpg.Connection, batch: list[_Delivery]) -> list[Outcome]:
    """Keep every delivery as evidence and apply each new event once, in the caller's transaction.

    Every delivery is kept, duplicates included. If applying fails, the deliveries' evidence rolls
    back with everything else: nothing was decided on it, and the provider's redelivery brings it again.
    """
    kept = Alongside(  # every delivery, duplicates included, in the claim's round trip
        _INSERT_DELIVERIES,
        [
            [delivery.source.provider for delivery in batch],
            [delivery.event.event_id for delivery in batch],
            [delivery.headers for delivery in batch],
            [delivery.body for delivery in batch],
        ],
    )
    claims = [(delivery.source.consumer_group, delivery.event.event_id) for delivery in batch]
    new = await claim_new(connection, claims, alongside=kept)
    outcomes: list[Outcome | None] = [None if is_new else Outcome.DUPLICATE for is_new in new]
    waiting = [(n, delivery.payment) for n, delivery in enumerate(batch) if new[n] and delivery.payment is not None]
    while waiting:  # a payment at most once per round: a later event about it sees the earlier one's result
        round_: list[tuple[int, Application]] = []
        later: list[tuple[int, Application]] = []
        seen: set[uuid.UUID] = set()
        for n, application in waiting:
            (later if application.payment_id in seen else round_).append((n, application))
            seen.add(application.payment_id)
        applied = await apply_provider_evidence_each(connection, [application for _, application in round_])
        for (n, _), evidence in zip(round_, applied, strict=True):
            # None: not one of ours (another environment's, or made up): kept, not applied
            outcomes[n] = Outcome.IGNORED if evidence is None else _OUTCOMES[evidence.verdict]
        waiting = later
    # legs in id order (a leg's own reports in arrival order), as payments are locked: two batches
    # never wait for each other's rows in opposite orders
    legs = sorted(
        (str(delivery.event.subject_id), n, delivery.leg)
        for n, delivery in enumerate(batch)
        if new[n] and delivery.leg is not None
    )
    for _, n, apply in legs:
        try:
            outcomes[n] = await apply(connection)
        except NotFound:
            outcomes[n] = Outcome.IGNORED
    return [cast(Outcome, outcome) for outcome in outcomes]


Apply = Callable[[asyncpg.Connection], Awaitable["Outcome"]]


def _payment_application(source: WebhookSource, event: _Event, payment_id: uuid.UUID, status: str) -> Application:
    try:
        payment_event = event_for(source.provider, status)
    except UnknownProviderStatus:
        raise Unreadable(f"status {status!r} has no mapping for {source.provider}") from None
    evidence = Evidence(
        f"webhook.{source.provider}",
        f"{source.provider}:{event.event_id}",
        provider=source.provider,
        provider_status=status,
        provider_payment_id=event.provider_object_id,
        witness=Witness.WEBHOOK,
        amount=stated(event.data.get("amount")),
        currency_code=stated(event.data.get("currency")),
    )
    return Application(payment_id, payment_event, evidence)


def _leg_handler(source: WebhookSource, event: _Event, leg_id: uuid.UUID, exec_type: str) -> Apply:
    try:
        report = venue_report_for(source.provider, exec_type)
    except UnknownProviderStatus:
        raise Unreadable(f"execution type {exec_type!r} has no mapping for {source.provider}") from None
    fill, fill_time = _fill(event) if report is VenueReport.FILL else (None, None)
    reference = f"{source.provider}:{event.event_id}"  # the delivery, kept by the intake, is the evidence

    async def apply(connection: asyncpg.Connection) -> Outcome:
        verdict = await apply_venue_report(
            connection,
            leg_id,
            report,
            reference,
            fill=fill,
            fill_time=fill_time,
            reason=event.reason,
            venue_order_id=event.provider_object_id,
            order=event.data,  # what it states of the venue's order (id, symbol, side, fills) must fit the leg
            venue=source.provider,
        )
        return Outcome(verdict)

    return apply


#: A webhook is never the API's word, so it is never CORRECTed or HELD; listed to make the map total.
_OUTCOMES = {
    Verdict.APPLY: Outcome.APPLIED,
    Verdict.REPEAT: Outcome.REPEAT,
    Verdict.STALE: Outcome.STALE,
    Verdict.CONFIRM: Outcome.CONFIRMING,
    Verdict.MISFIT: Outcome.MISFIT,
    Verdict.CORRECT: Outcome.APPLIED,
    Verdict.HOLD: Outcome.CONFIRMING,
}
