"""Applying evidence to a payment: the one path by which a payment's state (and the ledger) changes.

Every application runs in one transaction under the payment's row lock: it records the provider's
status (if any) as evidence, decides through the state machine, appends the transition, posts the
ledger lines the move implies, and writes the outbox event and the audit entry.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg

from server.db import cases_repository, ledger_repository
from server.db.database import Budget, Database, in_transaction
from server.domain import events
from server.domain.errors import NotFound
from server.domain.ledger import Posting, payment_postings
from server.domain.payment_states import EVENT_TARGETS, PaymentEvent, Verdict, decide, judge
from server.domain.payments import PaymentState
from server.domain.state_machine import IllegalTransition
from server.outbox.writer import event_rows


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
#: The cause of the evidence the case checker adds: the provider's API asked about a case's payment.
CASE_CHECK_CAUSE = "case_check.inquiry"


@dataclass(frozen=True)
class Application:
    """One piece of evidence to apply to one payment."""

    payment_id: uuid.UUID
    event: PaymentEvent
    evidence: Evidence


# The payments locked (in id order, so that two set-wise appliers never deadlock), and each provider's
# word kept as evidence and beside its payment, in one round trip; the payments as they were. A payment
# that does not exist is not returned, and nothing is written for it.
_LOCK_AND_OBSERVE = """
WITH given AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
        AS g(payment_id, provider, status, evidence_ref, provider_payment_id)
), locked AS (
    SELECT id, state, client_id, amount, currency_code FROM payments
    WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
), observed AS (
    INSERT INTO provider_statuses (payment_id, provider, status, evidence_ref)
    SELECT g.payment_id, g.provider, g.status, g.evidence_ref FROM given g JOIN locked l ON l.id = g.payment_id
    WHERE g.status IS NOT NULL
), noted AS (
    UPDATE payments p
    SET provider_status = g.status, provider_payment_id = coalesce(p.provider_payment_id, g.provider_payment_id)
    FROM given g JOIN locked l ON l.id = g.payment_id
    WHERE p.id = g.payment_id AND g.status IS NOT NULL
)
SELECT id, state, client_id, amount, currency_code FROM locked
"""

# Moves, in one round trip: the transitions (whose trigger moves each payment), the ledger entries and
# lines they imply (balanced per entry, checked at commit), their outbox events and the audit entries.
_MOVE = """
WITH moved AS (
    INSERT INTO payment_transitions (payment_id, from_state, to_state, event, cause, evidence_ref)
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
), entries AS (
    INSERT INTO ledger_entries (id, event_key, payment_id, description)
    SELECT * FROM unnest($7::uuid[], $8::text[], $9::uuid[], $10::text[])
), lines AS (
    INSERT INTO ledger_lines (entry_id, line_number, account, currency_code, amount)
    SELECT * FROM unnest($11::uuid[], $12::smallint[], $13::text[], $14::text[], $15::numeric[])
), announced AS (
    INSERT INTO outbox (id, topic, message_key, payload)
    SELECT * FROM unnest($16::uuid[], $17::text[], $18::text[], $19::jsonb[])
)
INSERT INTO audit_log (aggregate_type, aggregate_id, action, actor, payload)
SELECT 'payment', a.payment_id::text, a.action, a.actor, a.payload
FROM unnest($1::uuid[], $20::text[], $5::text[], $21::jsonb[]) AS a(payment_id, action, actor, payload)
"""


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
    (outcome,) = await apply_provider_evidence_each(connection, [Application(payment_id, event, evidence)])
    if outcome is None:
        raise NotFound("payment", str(payment_id))
    return outcome


async def apply_provider_evidence_each(
    connection: asyncpg.Connection, applications: Sequence[Application]
) -> list[EvidenceOutcome | None]:
    """apply_provider_evidence for several payments at once (each at most once), in a few round trips
    whatever their number; None for a payment that does not exist."""
    outcomes = await apply_each(connection, applications)
    judged: list[EvidenceOutcome | None] = []
    for application, outcome in zip(applications, outcomes, strict=True):
        if outcome is None:
            judged.append(None)
        elif outcome.refused is None:
            judged.append(EvidenceOutcome(Verdict.APPLY if outcome.to_state else Verdict.REPEAT, outcome))
        else:
            judged.append(await _judge_refusal(connection, application, outcome))
    return judged


async def _judge_refusal(
    connection: asyncpg.Connection, application: Application, outcome: EventOutcome
) -> EvidenceOutcome:
    payment_id, event, evidence = application.payment_id, application.event, application.evidence
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
    summary = (
        f"payment {payment_id} is {outcome.from_state.value}, but {evidence.cause} says {EVENT_TARGETS[event].value}"
    )
    case_id = await cases_repository.open_case(
        connection,
        CONTRADICTION_CASE,
        "payment_id",
        payment_id,
        summary,
        pieces,
        evidence_if_open=pieces[1:],
        check_provider=evidence.cause != CASE_CHECK_CAUSE,  # what the provider's API says, asked once
    )
    return EvidenceOutcome(verdict, outcome, case_id)


def _lines(posting: Posting) -> list[tuple[str, Decimal, str]]:
    return [(line.account, line.amount, line.currency_code) for line in posting.lines]


async def apply_on(
    connection: asyncpg.Connection, payment_id: uuid.UUID, event: PaymentEvent, evidence: Evidence
) -> EventOutcome:
    """The application itself, in the caller's transaction, under the payment's row lock."""
    (outcome,) = await apply_each(connection, [Application(payment_id, event, evidence)])
    if outcome is None:
        raise NotFound("payment", str(payment_id))
    return outcome


@dataclass
class _Moves:
    """The rows of several moves, as the column arrays of one _MOVE statement."""

    transitions: list[tuple[uuid.UUID, str, str, str, str, str]] = field(default_factory=list)
    postings: list[Posting] = field(default_factory=list)
    entry_ids: list[uuid.UUID] = field(default_factory=list)
    announcements: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)

    def arguments(self) -> list[Any]:
        payment_ids, from_states, to_states, event_names, causes, references = [
            list(column) for column in zip(*self.transitions, strict=True)
        ]
        return [
            payment_ids,
            from_states,
            to_states,
            event_names,
            causes,
            references,
            *ledger_repository.entry_rows(self.entry_ids, self.postings),
            *event_rows(self.announcements),
            [events.PAYMENT_STATE_CHANGED] * len(self.transitions),
            self.changes,
        ]


async def apply_each(connection: asyncpg.Connection, applications: Sequence[Application]) -> list[EventOutcome | None]:
    """apply_on for several payments at once, in two round trips whatever their number.

    Each payment may appear once (a second piece of evidence about it must see the first one's
    result: apply it in a later call). None for a payment that does not exist; nothing is written for it.
    """
    payment_ids = [application.payment_id for application in applications]
    if len(set(payment_ids)) != len(payment_ids):
        raise ValueError("apply_each takes each payment at most once")
    observed = [  # the provider's word, when the evidence is one
        evidence if evidence.provider is not None and evidence.provider_status is not None else None
        for evidence in (application.evidence for application in applications)
    ]
    rows = await connection.fetch(
        _LOCK_AND_OBSERVE,
        payment_ids,
        [None if evidence is None else evidence.provider for evidence in observed],
        [None if evidence is None else evidence.provider_status for evidence in observed],
        [None if evidence is None else evidence.reference for evidence in observed],
        [None if evidence is None else evidence.provider_payment_id for evidence in observed],
    )
    found = {row["id"]: row for row in rows}
    outcomes: list[EventOutcome | None] = []
    moves = _Moves()
    for application in applications:
        row = found.get(application.payment_id)
        if row is None:
            outcomes.append(None)
            continue
        outcomes.append(_plan(application, row, moves))
    if moves.transitions:
        await connection.execute(_MOVE, *moves.arguments())
    return outcomes


def _plan(application: Application, row: asyncpg.Record, moves: _Moves) -> EventOutcome:
    """Decide one application against its payment as locked, adding its move (if any) to `moves`."""
    payment_id, event, evidence = application.payment_id, application.event, application.evidence
    current = PaymentState(row["state"])
    try:
        decision = decide(current, event, subject=f"payment {payment_id}")
    except IllegalTransition as refused:
        return EventOutcome(current, None, refused=refused)  # commit the evidence, change nothing
    if decision.to_state is None:
        return EventOutcome(current, None)
    to_state = decision.to_state
    postings = payment_postings(payment_id, row["client_id"], row["amount"], row["currency_code"], current, to_state)
    entry_ids = [uuid.uuid4() for _ in postings]
    moves.announcements.extend(
        (events.LEDGER_POSTED, posting.event_key, events.ledger_posted(entry_id, posting.event_key, _lines(posting)))
        for entry_id, posting in zip(entry_ids, postings, strict=True)
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
    moves.announcements.append((events.PAYMENT_STATE_CHANGED, str(payment_id), change))
    moves.transitions.append(
        (payment_id, current.value, to_state.value, event.value, evidence.cause, evidence.reference)
    )
    moves.postings.extend(postings)
    moves.entry_ids.extend(entry_ids)
    moves.changes.append(change)
    return EventOutcome(current, to_state, tuple(entry_ids))
