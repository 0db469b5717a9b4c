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
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
import structlog
from prometheus_client import Counter

from server.db.database import Budget, Database, in_transaction
from server.domain.errors import NotFound
from server.domain.payment_states import Verdict
from server.domain.provider_status import UnknownProviderStatus, event_for
from server.messaging.idempotent import process_if_new
from server.providers.signatures import signature_problem
from server.services.payment_events import Evidence, apply_provider_evidence

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
    APPLIED = "applied"
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
    payment_id: uuid.UUID | None
    provider_payment_id: str | None
    status: str | None


def _parse(body: bytes) -> _Event:
    try:
        parsed = json.loads(body)
        event_id, kind, data = parsed["id"], parsed["type"], parsed["data"]["object"]
    except (ValueError, KeyError, TypeError):
        raise Unreadable("the body is not a provider event (id, type, data.object)") from None
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= 256 or not isinstance(kind, str):
        raise Unreadable("the event id must be a string of 1 to 256 characters")
    if not kind.startswith("payment.") or not isinstance(data, dict):
        return _Event(event_id, kind, None, None, None)
    # Ballast sends its own payment id as the provider's idempotency key
    try:
        payment_id = uuid.UUID(str(data.get("idempotency_key", "")))
    except ValueError:
        payment_id = None
    status, provider_payment_id = data.get("status"), data.get("id")
    return _Event(
        event_id,
        kind,
        payment_id,
        provider_payment_id[:255] if isinstance(provider_payment_id, str) else None,
        status[:64] if isinstance(status, str) else None,
    )


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
    if event.payment_id is None or event.status is None:
        await _store(database, source, event.event_id, headers, body, budget)
        return Outcome.IGNORED
    payment_id, status = event.payment_id, event.status
    try:
        payment_event = event_for(source.provider, status)
    except UnknownProviderStatus:
        await _store(database, source, event.event_id, headers, body, budget)
        raise Unreadable(f"status {status!r} has no mapping for {source.provider}") from None
    evidence = Evidence(
        f"webhook.{source.provider}",
        f"{source.provider}:{event.event_id}",
        provider=source.provider,
        provider_status=status,
        provider_payment_id=event.provider_payment_id,
    )

    async def work(connection: asyncpg.Connection) -> Outcome:
        outcomes: list[Outcome] = []  # what the handler did, if it ran (afresh on every attempt)
        await connection.execute(_INSERT_DELIVERY, source.provider, event.event_id, headers, body)

        async def handle(connection: asyncpg.Connection) -> None:
            try:
                applied = await apply_provider_evidence(connection, payment_id, payment_event, evidence)
            except NotFound:  # not one of ours (another environment's, or made up): kept, not applied
                outcomes.append(Outcome.IGNORED)
                return
            outcomes.append(_OUTCOMES[applied.verdict])

        ran = await process_if_new(connection, event.event_id, source.consumer_group, handle)
        return outcomes[0] if ran else Outcome.DUPLICATE

    return await in_transaction(database, budget, work)


_OUTCOMES = {
    Verdict.APPLY: Outcome.APPLIED,
    Verdict.REPEAT: Outcome.REPEAT,
    Verdict.STALE: Outcome.STALE,
    Verdict.CONTRADICTION: Outcome.CONTRADICTION,
}
