"""Evidence applied the way production applies it: a provider's word to a payment, a venue's report to a leg."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from server.db.database import Budget, Database, in_transaction
from server.domain.order_legs import Fill
from server.domain.payment_states import PaymentEvent, Witness
from server.domain.provider_status import VenueReport
from server.services.payment_events import Evidence, PaymentOutcome, apply_provider_evidence
from server.services.venue_events import LegOutcome, apply_venue_report
from tests.support.requests import create_payment_request
from tests.support.servers import Caller, World


async def apply_evidence(
    database: Database, payment_id: uuid.UUID, event: PaymentEvent, evidence: Evidence, *, timeout_s: float = 10.0
) -> PaymentOutcome:
    """Apply evidence to a payment through apply_provider_evidence, the path the submission, the resolver
    and the webhooks take, judged by the order of witnesses, in a transaction of its own.

    Evidence witnessed by Ballast (Witness.BALLAST) moves a payment wherever the machine has the move and
    nowhere else; the API's word may also correct a decided payment; a webhook's claim only makes Ballast ask.
    """

    async def work(connection: asyncpg.Connection) -> PaymentOutcome:
        return await apply_provider_evidence(connection, payment_id, event, evidence)

    return await in_transaction(database, Budget.within(timeout_s), work)


async def conclude(
    database: Database, payment_id: uuid.UUID, event: PaymentEvent, provider_status: str | None = None
) -> PaymentOutcome:
    """The machine's move, as Ballast's own conclusion (applied wherever the machine has it, else stale),
    with the provider's status word kept as evidence when given."""
    evidence = Evidence(
        cause="webhook.simulator" if provider_status else "test",
        reference=f"evt-{uuid.uuid4()}",
        provider="simulator" if provider_status else None,
        provider_status=provider_status,
        witness=Witness.BALLAST,
    )
    return await apply_evidence(database, payment_id, event, evidence, timeout_s=20)


async def captured_payment(
    world: World, database: Database, amount: str, currency: str = "EUR", caller: Caller | None = None
) -> uuid.UUID:
    """A payment of the merchant's (or the caller's) created over gRPC and captured: its capture is posted."""
    created = await world.payments.CreatePayment(
        create_payment_request(value=amount, currency=currency),
        metadata=(caller or world.merchant).metadata,
        timeout=5,
    )
    payment_id = uuid.UUID(created.payment.id)
    await conclude(database, payment_id, PaymentEvent.SUCCEEDED)
    return payment_id


async def report_to_leg(
    database: Database,
    leg_id: uuid.UUID | str,
    report: VenueReport,
    evidence_ref: str,
    *,
    fill: Fill | None = None,
    reason: str = "",
    timeout_s: float = 10.0,
) -> LegOutcome:
    """A venue's report about a leg applied through apply_venue_report, the path the webhooks, the leg
    resolver and the instruction sender take, in a transaction of its own (a fill made now).

    A refusal (an illegal move, a fill the leg cannot hold) is a CONTRADICTION: it changes nothing of the
    leg and is named in the leg's case (`refused_because`).
    """

    async def work(connection: asyncpg.Connection) -> LegOutcome:
        return await apply_venue_report(
            connection,
            uuid.UUID(str(leg_id)),
            report,
            evidence_ref,
            fill=fill,
            fill_time=None if fill is None else datetime.now(UTC),
            reason=reason,
        )

    return await in_transaction(database, Budget.within(timeout_s), work)
