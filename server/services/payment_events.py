"""Applying evidence to a payment: the one path by which a payment's state (and the ledger) changes.

Every application runs in one transaction under the payment's row lock: it records the provider's
status (if any) as evidence, decides through the state machine, appends the transition, posts the
ledger lines the move implies, and writes the outbox event and the audit entry.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from server.db import ledger_repository
from server.db.database import Budget, Database, in_transaction
from server.domain import events
from server.domain.errors import NotFound
from server.domain.ledger import payment_postings
from server.domain.payment_states import EVENT_TARGETS, PaymentEvent, Verdict, decide, judge
from server.domain.payments import PaymentState
from server.domain.state_machine import IllegalTransition
from server.outbox.writer import append_audit, write_event


@dataclass(frozen=True)
class Evidence:
    """Why a payment may move: what caused it and where the proof is."""

    #: "api.refund", "webhook.simulator", "resolver", "reconciliation", ...
    cause: str
    #: an API call id, a provider event id, a report row: whatever lets an auditor find the proof
    reference: str
    #: the provider and its verbatim status, when the evidence is a provider's word
    provider: str | None = None
    provider_status: str | None = None
    #: the provider's own id for the payment, when its answer named one (stored once, never changed)
    provider_payment_id: str | None = None


@dataclass(frozen=True)
class EventOutcome:
    from_state: PaymentState
    #: None when the event was a repeat and changed nothing
    to_state: PaymentState | None
    ledger_entry_ids: tuple[uuid.UUID, ...] = ()
    #: set when the machine refused the event; the provider's status was still kept as evidence
    refused: IllegalTransition | None = None


async def apply_payment_event(
    database: Database, payment_id: uuid.UUID, event: PaymentEvent, evidence: Evidence, budget: Budget
) -> EventOutcome:
    """Apply `event` to the payment.

    A repeat changes nothing. An event the machine forbids raises IllegalTransition and changes
    nothing, except that the provider's status, if given, is kept as evidence.
    """

    async def work(connection: asyncpg.Connection) -> EventOutcome:
        return await apply_on(connection, payment_id, event, evidence)

    outcome = await in_transaction(database, budget, work)
    if outcome.refused is not None:
        raise outcome.refused
    return outcome


CONTRADICTION_CASE = "CONTRADICTORY_EVIDENCE"


@dataclass(frozen=True)
class EvidenceOutcome:
    verdict: Verdict
    outcome: EventOutcome
    #: the investigation case a contradiction opened (or added its evidence to)
    case_id: uuid.UUID | None = None


async def apply_provider_evidence(
    connection: asyncpg.Connection, payment_id: uuid.UUID, event: PaymentEvent, evidence: Evidence
) -> EvidenceOutcome:
    """Apply what a provider said, in the caller's transaction; never raises for a move the machine refuses.

    News moves the payment; a repeat or a late (stale) status is kept as evidence and changes
    nothing; a contradiction of a decided outcome changes nothing and opens an investigation case
    with both pieces of evidence (one open case per payment: later contradictions join it).
    """
    outcome = await apply_on(connection, payment_id, event, evidence)
    if outcome.refused is None:
        return EvidenceOutcome(Verdict.APPLY if outcome.to_state else Verdict.REPEAT, outcome)
    verdict = judge(outcome.from_state, event)
    if verdict is not Verdict.CONTRADICTION:
        return EvidenceOutcome(verdict, outcome)
    decided_by = await connection.fetchrow(
        "SELECT cause, evidence_ref FROM payment_transitions WHERE payment_id = $1 ORDER BY id DESC LIMIT 1",
        payment_id,
    )
    pieces = [
        {"claim": outcome.from_state.value, "cause": decided_by["cause"], "evidence_ref": decided_by["evidence_ref"]},
        {"claim": EVENT_TARGETS[event].value, "cause": evidence.cause, "evidence_ref": evidence.reference},
    ]
    case_id = await connection.fetchval(
        """
        INSERT INTO cases (kind, payment_id, summary, evidence) VALUES ($1, $2, $3, $4)
        ON CONFLICT (kind, payment_id) WHERE status = 'OPEN'
        DO UPDATE SET evidence = cases.evidence || $5::jsonb, updated_at = now()
        RETURNING id
        """,
        CONTRADICTION_CASE,
        payment_id,
        f"payment {payment_id} is {outcome.from_state.value}, but {evidence.cause} says {EVENT_TARGETS[event].value}",
        pieces,
        pieces[1:],
    )
    await write_event(
        connection,
        events.CASE_OPENED,
        str(payment_id),
        {"case_id": str(case_id), "kind": CONTRADICTION_CASE, "payment_id": str(payment_id), "evidence": pieces},
    )
    return EvidenceOutcome(verdict, outcome, case_id)


async def apply_on(
    connection: asyncpg.Connection, payment_id: uuid.UUID, event: PaymentEvent, evidence: Evidence
) -> EventOutcome:
    """The application itself, in the caller's transaction, under the payment's row lock."""
    row = await connection.fetchrow(
        "SELECT state, client_id, amount, currency_code FROM payments WHERE id = $1 FOR UPDATE", payment_id
    )
    if row is None:
        raise NotFound("payment", str(payment_id))
    current = PaymentState(row["state"])
    if evidence.provider is not None and evidence.provider_status is not None:
        await connection.execute(
            "INSERT INTO provider_statuses (payment_id, provider, status, evidence_ref) VALUES ($1, $2, $3, $4)",
            payment_id,
            evidence.provider,
            evidence.provider_status,
            evidence.reference,
        )
        await connection.execute(
            "UPDATE payments SET provider_status = $2,"
            " provider_payment_id = coalesce(provider_payment_id, $3) WHERE id = $1",
            payment_id,
            evidence.provider_status,
            evidence.provider_payment_id,
        )
    try:
        decision = decide(current, event, subject=f"payment {payment_id}")
    except IllegalTransition as refused:
        return EventOutcome(current, None, refused=refused)  # commit the evidence, change nothing
    if decision.to_state is None:
        return EventOutcome(current, None)
    to_state = decision.to_state
    await connection.execute(
        "INSERT INTO payment_transitions (payment_id, from_state, to_state, event, cause, evidence_ref)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        payment_id,
        current.value,
        to_state.value,
        event.value,
        evidence.cause,
        evidence.reference,
    )
    entry_ids = []
    for posting in payment_postings(
        payment_id, row["client_id"], row["amount"], row["currency_code"], current, to_state
    ):
        entry_id = await ledger_repository.insert_posting(connection, posting)
        entry_ids.append(entry_id)
        lines = [(line.account, line.amount, line.currency_code) for line in posting.lines]
        await write_event(
            connection,
            events.LEDGER_POSTED,
            posting.event_key,
            events.ledger_posted(entry_id, posting.event_key, lines),
        )
    change = events.payment_state_changed(
        payment_id,
        current.value,
        to_state.value,
        event.value,
        evidence.cause,
        evidence.reference,
        client_id=row["client_id"],
        amount=row["amount"],
        currency_code=row["currency_code"],
    )
    await write_event(connection, events.PAYMENT_STATE_CHANGED, str(payment_id), change)
    await append_audit(connection, "payment", str(payment_id), events.PAYMENT_STATE_CHANGED, evidence.cause, change)
    return EventOutcome(current, to_state, tuple(entry_ids))
