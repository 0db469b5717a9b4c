"""Applying webhook deliveries: in one transaction, every delivery is kept as evidence (duplicates
included), each event is claimed insert-first for its consumer group, and only the new ones are applied
through the state machines, so a second delivery, concurrent or late, finds its claim and does nothing,
and a failure rolls back all of it, so the provider's redelivery can succeed.

A webhook is a signal, never the provider's word: a payment event goes through the order of witnesses
(payment_events), a refund's through the refund's (refund_events: it may say PENDING, any other news
makes Ballast ask the provider's API), a venue's report through the leg's rules (venue_events)."""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import asyncpg

from server.db.webhook_deliveries_repository import INSERT_DELIVERIES, Kept, deliveries_arguments
from server.domain.errors import NotFound
from server.domain.payment_states import Verdict, Witness
from server.domain.provider_status import (
    UnknownProviderStatus,
    VenueReport,
    event_for,
    refund_event_for,
    venue_report_for,
)
from server.domain.stated import stated
from server.messaging.idempotent import Alongside, claim_new
from server.providers.simulator_events import ProviderEvent, Unreadable, fill_of
from server.services.payment_events import Application, Evidence, apply_provider_evidence_each
from server.services.refund_events import RefundEvidence, apply_refund_evidence, note_unasked_refund
from server.services.venue_events import apply_venue_report


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
    """What became of one delivery, as the provider is told (and counted)."""

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
    #: a refund Ballast never asked for, of one of its payments: kept, nothing moved, a case opened
    UNASKED = "unasked"


Apply = Callable[[asyncpg.Connection], Awaitable[Outcome]]


@dataclass(frozen=True)
class Delivery:
    """A readable, authentic delivery of an event about a payment, a refund or a leg, waiting to be applied."""

    source: WebhookSource
    event: ProviderEvent
    headers: dict[str, str]
    body: bytes
    #: what the event says about a payment, or how to apply what it says of a refund or a leg (exactly one is set)
    payment: Application | None
    other: Apply | None
    answer: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def kept(self) -> Kept:
        return Kept(self.source.provider, self.event.event_id, self.headers, self.body)


def delivery_of(source: WebhookSource, event: ProviderEvent, headers: dict[str, str], body: bytes) -> Delivery | None:
    """The delivery to apply; None for an event about nothing Ballast keeps. Raises Unreadable."""
    subject_id, status = event.subject_id, event.status
    if event.about_a_refund and subject_id is None and status is not None:
        return Delivery(source, event, headers, body, None, _unasked_refund_handler(source, event, status))
    if subject_id is None or status is None:
        return None
    if event.about_a_refund:
        return Delivery(source, event, headers, body, None, _refund_handler(source, event, subject_id, status))
    if event.about_a_payment:
        return Delivery(source, event, headers, body, _payment_application(source, event, subject_id, status), None)
    return Delivery(source, event, headers, body, None, _leg_handler(source, event, subject_id, status))


async def apply_deliveries(connection: asyncpg.Connection, batch: list[Delivery]) -> list[Outcome]:
    """Keep every delivery as evidence and apply each new event once, in the caller's transaction.

    Every delivery is kept, duplicates included. If applying fails, the deliveries' evidence rolls
    back with everything else: nothing was decided on it, and the provider's redelivery brings it again.
    """
    # every delivery, duplicates included, in the claim's round trip
    kept = Alongside(INSERT_DELIVERIES, deliveries_arguments([delivery.kept for delivery in batch]))
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
    # refunds and legs in id order (each one's own events in arrival order), as payments are locked: two
    # batches never wait for each other's rows in opposite orders
    others = sorted(
        (str(delivery.event.subject_id), n, delivery.other)
        for n, delivery in enumerate(batch)
        if new[n] and delivery.other is not None
    )
    for _, n, apply in others:
        try:
            outcomes[n] = await apply(connection)
        except NotFound:
            outcomes[n] = Outcome.IGNORED
    return [cast(Outcome, outcome) for outcome in outcomes]


def _payment_application(
    source: WebhookSource, event: ProviderEvent, payment_id: uuid.UUID, status: str
) -> Application:
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


def _refund_handler(source: WebhookSource, event: ProviderEvent, refund_id: uuid.UUID, status: str) -> Apply:
    try:
        refund_event = refund_event_for(source.provider, status)
    except UnknownProviderStatus:
        raise Unreadable(f"refund status {status!r} has no mapping for {source.provider}") from None
    evidence = RefundEvidence(
        f"webhook.{source.provider}",
        f"{source.provider}:{event.event_id}",
        provider=source.provider,
        provider_status=status,
        provider_refund_id=event.provider_object_id,
        witness=Witness.WEBHOOK,
        amount=stated(event.data.get("amount")),
        currency_code=stated(event.data.get("currency")),
        provider_payment_id=stated(event.data.get("payment")),
    )

    async def apply(connection: asyncpg.Connection) -> Outcome:
        return _OUTCOMES[(await apply_refund_evidence(connection, refund_id, refund_event, evidence)).verdict]

    return apply


def _unasked_refund_handler(source: WebhookSource, event: ProviderEvent, status: str) -> Apply:
    piece: dict[str, object] = {
        "claim": "UNASKED_REFUND",
        "cause": f"webhook.{source.provider}",
        "evidence_ref": f"{source.provider}:{event.event_id}",
        "witness": Witness.WEBHOOK.value,
        "provider_status": status,
        "provider_refund_id": event.provider_object_id,
        "amount": stated(event.data.get("amount")),
        "currency_code": stated(event.data.get("currency")),
    }

    async def apply(connection: asyncpg.Connection) -> Outcome:
        case_id = await note_unasked_refund(connection, stated(event.data.get("payment")), piece)
        return Outcome.IGNORED if case_id is None else Outcome.UNASKED

    return apply


def _leg_handler(source: WebhookSource, event: ProviderEvent, leg_id: uuid.UUID, exec_type: str) -> Apply:
    try:
        report = venue_report_for(source.provider, exec_type)
    except UnknownProviderStatus:
        raise Unreadable(f"execution type {exec_type!r} has no mapping for {source.provider}") from None
    fill, fill_time = fill_of(event) if report is VenueReport.FILL else (None, None)
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
