"""Webhook intake: a provider's signed event, kept as evidence, applied once, never trusted blindly.

The order matters. The signature is checked over the raw bytes before anything is parsed or stored
(a forgery costs a counter, nothing more). Then one transaction stores the delivery as received
(duplicates included), inserts the (event id, consumer group) row first and only then applies the
event through the state machine, so a second delivery, concurrent or late, finds the row and does
nothing, and a failure rolls back all of it, so the provider's redelivery can succeed.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter

from server.db.database import Budget, Database, in_transaction
from server.domain.errors import NotFound
from server.domain.order_legs import Fill
from server.domain.payment_states import Verdict
from server.domain.provider_status import UnknownProviderStatus, VenueReport, event_for, venue_report_for
from server.messaging.idempotent import process_if_new
from server.providers.signatures import signature_problem
from server.services.payment_events import Evidence, apply_provider_evidence
from server.services.venue_events import apply_venue_report

log = structlog.get_logger(__name__)

WEBHOOKS = Counter(
    "ballast_webhooks", "Webhook deliveries by provider and what became of them", ["provider", "outcome"]
)
#: Headers kept with the raw body as evidence (lower case); the rest say nothing about the event.
EVIDENCE_HEADERS = frozenset({"content-type", "user-agent", "simulator-signature", "stripe-signature"})
BODY_BYTES_MAX = 1024 * 1024
_INSERT_DELIVERY = "INSERT INTO webhook_deliveries (provider, event_id, headers, body) VALUES ($1, $2, $3, $4)"


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
    DUPLICATE = "duplicate"
    STALE = "stale"
    CONTRADICTION = "contradiction"
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


def _text(value: object, length_max: int) -> str | None:
    """A provider's text, fit to be stored in a text column: NUL and lone surrogates (which JSON can
    carry and PostgreSQL refuses) replaced; the raw body keeps the original."""
    if not isinstance(value, str):
        return None
    return value[:length_max].replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _parse(body: bytes) -> _Event:
    try:
        parsed = json.loads(body)
        event_id, kind, data = parsed["id"], parsed["type"], parsed["data"]["object"]
    except (ValueError, KeyError, TypeError):
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


async def receive(
    database: Database, source: WebhookSource, headers: Mapping[str, str], body: bytes, budget: Budget
) -> Outcome:
    """Verify, store, and apply one delivery once. Raises Unauthentic or Unreadable."""
    problem = signature_problem(body, headers.get(source.signature_header), source.secret, int(time.time()))
    if problem is not None:
        WEBHOOKS.labels(source.provider, f"rejected_{problem}").inc()
        raise Unauthentic(f"webhook signature {problem}")
    kept = {name.lower(): value for name, value in headers.items() if name.lower() in EVIDENCE_HEADERS}
    try:
        event = _parse(body)
    except Unreadable:
        await _store(database, source, None, kept, body, budget)
        WEBHOOKS.labels(source.provider, "unreadable").inc()
        raise
    outcome = await _apply_once(database, source, event, kept, body, budget)
    WEBHOOKS.labels(source.provider, outcome.value).inc()
    log.info("webhook.received", provider=source.provider, event_id=event.event_id, type=event.kind, outcome=outcome)
    return outcome


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


async def _apply_once(
    database: Database, source: WebhookSource, event: _Event, headers: dict[str, str], body: bytes, budget: Budget
) -> Outcome:
    """Keep the delivery as evidence and apply its event once, in one transaction.

    Every delivery is kept, duplicates included. If applying fails, the delivery's evidence rolls
    back with everything else: nothing was decided on it, and the provider's redelivery brings it again.
    """
    subject_id, status = event.subject_id, event.status
    if subject_id is None or status is None:
        await _store(database, source, event.event_id, headers, body, budget)
        return Outcome.IGNORED
    try:
        if event.kind.startswith("payment."):
            apply = _payment_handler(source, event, subject_id, status)
        else:
            apply = _leg_handler(source, event, subject_id, status)
    except Unreadable:
        await _store(database, source, event.event_id, headers, body, budget)
        raise

    async def work(connection: asyncpg.Connection) -> Outcome:
        outcomes: list[Outcome] = []  # what the handler did, if it ran (afresh on every attempt)
        await connection.execute(_INSERT_DELIVERY, source.provider, event.event_id, headers, body)

        async def handle(connection: asyncpg.Connection) -> None:
            try:
                outcomes.append(await apply(connection))
            except NotFound:  # not one of ours (another environment's, or made up): kept, not applied
                outcomes.append(Outcome.IGNORED)

        ran = await process_if_new(connection, event.event_id, source.consumer_group, handle)
        return outcomes[0] if ran else Outcome.DUPLICATE

    return await in_transaction(database, budget, work)


Apply = Callable[[asyncpg.Connection], Awaitable["Outcome"]]


def _payment_handler(source: WebhookSource, event: _Event, payment_id: uuid.UUID, status: str) -> Apply:
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
    )

    async def apply(connection: asyncpg.Connection) -> Outcome:
        applied = await apply_provider_evidence(connection, payment_id, payment_event, evidence)
        return _OUTCOMES[applied.verdict]

    return apply


def _leg_handler(source: WebhookSource, event: _Event, leg_id: uuid.UUID, exec_type: str) -> Apply:
    try:
        report = venue_report_for(source.provider, exec_type)
    except UnknownProviderStatus:
        raise Unreadable(f"execution type {exec_type!r} has no mapping for {source.provider}") from None
    fill, fill_time = _fill(event) if report is VenueReport.FILL else (None, None)
    reference = f"{source.provider}:{event.event_id}"

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
        )
        return Outcome(verdict)

    return apply


_OUTCOMES = {
    Verdict.APPLY: Outcome.APPLIED,
    Verdict.REPEAT: Outcome.REPEAT,
    Verdict.STALE: Outcome.STALE,
    Verdict.CONTRADICTION: Outcome.CONTRADICTION,
}
