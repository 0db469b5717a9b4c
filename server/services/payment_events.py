"""Applying evidence to a payment: the one path by which a payment's state (and the ledger) changes.

Every application runs in one transaction under the payment's row lock: it records the provider's
status (if any) as evidence, judges it (server/domain/payment_states.py: who says it, and whether it
fits the payment at all), appends the transition, posts the ledger lines the move implies, and
writes the outbox event and the audit entry. A webhook's claim of an outcome only schedules a check
with the provider's API (CONFIRM); the API's contradiction of a decided state is corrected through
the correction table (server/domain/corrections.py) or held in a case for a person; evidence about
another amount, currency or provider object opens a case and moves nothing.
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
from server.db.outbox_writer import event_rows
from server.domain import events
from server.domain.corrections import CORRECTION_CASE, CORRECTION_EVENT, CORRECTIONS, Approval, approval_needed
from server.domain.errors import Defect, NotFound
from server.domain.ledger import Posting, correction_postings, payment_postings
from server.domain.payment_states import (
    EVENT_TARGETS,
    Misfit,
    PaymentEvent,
    Verdict,
    Witness,
    decide,
    event_towards,
    judge,
    misfits,
)
from server.domain.payments import PaymentState
from server.domain.state_machine import IllegalTransition


@dataclass(frozen=True)
class Evidence:
    """Why a payment may move: what caused it, where the proof is, and who says it."""

    #: "provider.response", "webhook.simulator", "resolver.inquiry", "resolver.expired", ...
    cause: str
    #: an API call id, a provider event id, a report row: whatever lets an auditor find the proof
    reference: str
    #: the provider and its verbatim status, when the evidence is a provider's word
    provider: str | None = None
    provider_status: str | None = None
    #: the provider's own id for the payment, when its answer named one (stored once, never changed)
    provider_payment_id: str | None = None
    #: the order of witnesses: the provider's API decides, a webhook only makes Ballast ask it
    witness: Witness = Witness.API
    #: what the provider says the payment is for, verbatim; evidence that names other terms moves nothing
    amount: str | None = None
    currency_code: str | None = None


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
    """Apply `event` to the payment as the state machine says, whoever says it (Ballast's own moves).

    A repeat changes nothing. An event the machine forbids raises IllegalTransition and changes
    nothing, except that the provider's status, if given, is kept as evidence. Provider evidence goes
    through apply_provider_evidence instead, which judges it first.
    """

    async def work(connection: asyncpg.Connection) -> EventOutcome:
        return await apply_on(connection, payment_id, event, evidence)

    outcome = await in_transaction(database, budget, work)
    if outcome.refused is not None:
        raise outcome.refused
    return outcome


#: The case evidence about another amount, currency or provider object opens.
MISFIT_CASE = "EVIDENCE_MISMATCH"
#: The cause of the evidence the case checker adds: the provider's API asked about a case's payment.
CASE_CHECK_CAUSE = "case_check.inquiry"


@dataclass(frozen=True)
class Application:
    """One piece of evidence to apply to one payment."""

    payment_id: uuid.UUID
    event: PaymentEvent
    evidence: Evidence


# The payments locked (in id order, so that two set-wise appliers never deadlock) and each provider's
# word kept as evidence, fitting or not, in one round trip; the payments as they were. A payment that
# does not exist is not returned, and nothing is written for it.
_LOCK_AND_OBSERVE = """
WITH given AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])
        AS g(payment_id, provider, status, evidence_ref)
), locked AS (
    SELECT id, state, client_id, amount, currency_code, provider_payment_id FROM payments
    WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
), observed AS (
    INSERT INTO provider_statuses (payment_id, provider, status, evidence_ref)
    SELECT g.payment_id, g.provider, g.status, g.evidence_ref FROM given g JOIN locked l ON l.id = g.payment_id
    WHERE g.status IS NOT NULL
)
SELECT id, state, client_id, amount, currency_code, provider_payment_id FROM locked
"""

# Fitting provider words noted beside their payments (the latest status; the provider's id, kept the
# first time it is named), and the payments whose webhooks claimed news made due for a check with the
# provider's API now. One UPDATE, so a payment is written once.
_NOTE_AND_CONFIRM = """
UPDATE payments p
SET provider_status = coalesce(n.status, p.provider_status),
    provider_payment_id = coalesce(p.provider_payment_id, n.provider_payment_id),
    next_check_at = CASE WHEN n.confirm THEN now() ELSE p.next_check_at END
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bool[]) AS n(id, status, provider_payment_id, confirm)
WHERE p.id = n.id
"""

# Moves, in one round trip: the transitions (whose trigger moves each payment), the ledger entries and
# lines they imply (balanced per entry, checked at commit), their outbox events and the audit entries.
_MOVE = """
WITH moved AS (
    INSERT INTO payment_transitions (payment_id, from_state, to_state, event, cause, evidence_ref, approved_by)
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
), entries AS (
    INSERT INTO ledger_entries (id, event_key, payment_id, description)
    SELECT * FROM unnest($8::uuid[], $9::text[], $10::uuid[], $11::text[])
), lines AS (
    INSERT INTO ledger_lines (entry_id, line_number, account, currency_code, amount)
    SELECT * FROM unnest($12::uuid[], $13::smallint[], $14::text[], $15::text[], $16::numeric[])
), announced AS (
    INSERT INTO outbox (id, topic, message_key, payload)
    SELECT * FROM unnest($17::uuid[], $18::text[], $19::text[], $20::jsonb[])
)
INSERT INTO audit_log (aggregate_type, aggregate_id, action, actor, payload)
SELECT 'payment', a.payment_id::text, a.action, a.actor, a.payload
FROM unnest($1::uuid[], $21::text[], $5::text[], $22::jsonb[]) AS a(payment_id, action, actor, payload)
"""

_CORRECTIONS_SO_FAR = (
    "SELECT payment_id, count(*) AS corrections FROM payment_transitions"
    f" WHERE payment_id = ANY($1::uuid[]) AND event = '{CORRECTION_EVENT}' GROUP BY payment_id"
)


@dataclass(frozen=True)
class EvidenceOutcome:
    verdict: Verdict
    outcome: EventOutcome
    #: the case the evidence opened (or added its evidence to): a misfit, or a correction held for a person
    case_id: uuid.UUID | None = None


async def apply_provider_evidence(
    connection: asyncpg.Connection, payment_id: uuid.UUID, event: PaymentEvent, evidence: Evidence
) -> EvidenceOutcome:
    """Apply what a provider said, in the caller's transaction; never raises for a move the machine refuses.

    Evidence that does not fit the payment moves nothing and opens a case. Otherwise it is judged
    (server/domain/payment_states.py, `judge`): news moves the payment; a repeat or a late (stale)
    status is kept as evidence and changes nothing; a webhook's claim of an outcome makes the payment
    due for a check with the provider's API; the API's contradiction of a decided state is corrected,
    or held in a case until a person approves the correction.
    """
    (outcome,) = await apply_provider_evidence_each(connection, [Application(payment_id, event, evidence)])
    if outcome is None:
        raise NotFound("payment", str(payment_id))
    return outcome


@dataclass
class _Moves:
    """The rows of several moves, as the column arrays of one _MOVE statement."""

    transitions: list[tuple[uuid.UUID, str, str, str, str, str, str | None]] = field(default_factory=list)
    postings: list[Posting] = field(default_factory=list)
    entry_ids: list[uuid.UUID] = field(default_factory=list)
    announcements: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)

    def arguments(self) -> list[Any]:
        columns = [list(column) for column in zip(*self.transitions, strict=True)]
        return [
            *columns,
            *ledger_repository.entry_rows(self.entry_ids, self.postings),
            *event_rows(self.announcements),
            [events.PAYMENT_STATE_CHANGED] * len(self.transitions),
            self.changes,
        ]

    def add(
        self,
        row: asyncpg.Record,
        to_state: PaymentState,
        event: str,
        evidence: Evidence,
        postings: list[Posting],
        approved_by: str | None = None,
    ) -> EventOutcome:
        payment_id, current = row["id"], PaymentState(row["state"])
        entry_ids = [uuid.uuid4() for _ in postings]
        self.announcements.extend(
            (
                events.LEDGER_POSTED,
                posting.event_key,
                events.ledger_posted(entry_id, posting.event_key, _lines(posting)),
            )
            for entry_id, posting in zip(entry_ids, postings, strict=True)
        )
        change = events.payment_state_changed(
            payment_id,
            current.value,
            to_state.value,
            event,
            evidence.cause,
            evidence.reference,
            client_id=row["client_id"],
            amount=row["amount"],
            currency_code=row["currency_code"],
        )
        self.announcements.append((events.PAYMENT_STATE_CHANGED, str(payment_id), change))
        self.transitions.append(
            (payment_id, current.value, to_state.value, event, evidence.cause, evidence.reference, approved_by)
        )
        self.postings.extend(postings)
        self.entry_ids.extend(entry_ids)
        self.changes.append(change)
        return EventOutcome(current, to_state, tuple(entry_ids))


@dataclass
class _Notes:
    """Provider words to note beside their payments, and payments to check with the API now."""

    rows: list[tuple[uuid.UUID, str | None, str | None, bool]] = field(default_factory=list)

    def add(self, payment_id: uuid.UUID, evidence: Evidence, *, confirm: bool = False) -> None:
        provider_word = evidence.provider is not None and evidence.provider_status is not None
        if provider_word or confirm:
            status = evidence.provider_status if provider_word else None
            # the provider's id for the payment is kept from its API only: a webhook names one, but a stale
            # or wrong webhook must not decide which object the API's answers are about
            provider_payment_id = evidence.provider_payment_id if evidence.witness is Witness.API else None
            self.rows.append((payment_id, status, provider_payment_id if provider_word else None, confirm))

    async def write(self, connection: asyncpg.Connection) -> None:
        if self.rows:
            await connection.execute(_NOTE_AND_CONFIRM, *[list(column) for column in zip(*self.rows, strict=True)])


def _lines(posting: Posting) -> list[tuple[str, Decimal, str]]:
    return [(line.account, line.amount, line.currency_code) for line in posting.lines]


async def _lock_and_observe(
    connection: asyncpg.Connection, applications: Sequence[Application]
) -> dict[uuid.UUID, asyncpg.Record]:
    payment_ids = [application.payment_id for application in applications]
    if len(set(payment_ids)) != len(payment_ids):
        raise Defect("a payment's evidence is applied one piece at a time: each payment at most once per call")
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
    )
    return {row["id"]: row for row in rows}


async def apply_on(
    connection: asyncpg.Connection, payment_id: uuid.UUID, event: PaymentEvent, evidence: Evidence
) -> EventOutcome:
    """The state machine's move, in the caller's transaction, under the payment's row lock."""
    (outcome,) = await apply_each(connection, [Application(payment_id, event, evidence)])
    if outcome is None:
        raise NotFound("payment", str(payment_id))
    return outcome


async def apply_each(connection: asyncpg.Connection, applications: Sequence[Application]) -> list[EventOutcome | None]:
    """apply_on for several payments at once, in a few round trips whatever their number.

    Each payment may appear once (a second piece of evidence about it must see the first one's
    result: apply it in a later call). None for a payment that does not exist; nothing is written for it.
    """
    found = await _lock_and_observe(connection, applications)
    outcomes: list[EventOutcome | None] = []
    moves, notes = _Moves(), _Notes()
    for application in applications:
        row = found.get(application.payment_id)
        if row is None:
            outcomes.append(None)
            continue
        notes.add(application.payment_id, application.evidence)
        current = PaymentState(row["state"])
        try:
            decision = decide(current, application.event, subject=f"payment {application.payment_id}")
        except IllegalTransition as refused:
            outcomes.append(EventOutcome(current, None, refused=refused))  # commit the evidence, change nothing
            continue
        if decision.to_state is None:
            outcomes.append(EventOutcome(current, None))
            continue
        outcomes.append(_move(moves, row, application.event, decision.to_state, application.evidence))
    await notes.write(connection)
    if moves.transitions:
        await connection.execute(_MOVE, *moves.arguments())
    return outcomes


def _move(
    moves: _Moves, row: asyncpg.Record, event: PaymentEvent, to_state: PaymentState, evidence: Evidence
) -> EventOutcome:
    current = PaymentState(row["state"])
    postings = payment_postings(row["id"], row["client_id"], row["amount"], row["currency_code"], current, to_state)
    return moves.add(row, to_state, event.value, evidence, postings)


def _correct(
    moves: _Moves,
    row: asyncpg.Record,
    to_state: PaymentState,
    evidence: Evidence,
    corrections_so_far: int,
    approved_by: str | None = None,
) -> EventOutcome:
    current = PaymentState(row["state"])
    postings = correction_postings(
        row["id"], row["client_id"], row["amount"], row["currency_code"], current, to_state, corrections_so_far + 1
    )
    return moves.add(row, to_state, CORRECTION_EVENT, evidence, postings, approved_by)


async def apply_provider_evidence_each(
    connection: asyncpg.Connection, applications: Sequence[Application]
) -> list[EvidenceOutcome | None]:
    """apply_provider_evidence for several payments at once (each at most once), in a few round trips
    whatever their number; None for a payment that does not exist."""
    found = await _lock_and_observe(connection, applications)
    judged: list[tuple[Application, asyncpg.Record, Verdict, list[Misfit]] | None] = []
    for application in applications:
        row = found.get(application.payment_id)
        if row is None:
            judged.append(None)
            continue
        evidence = application.evidence
        differing = misfits(
            amount=row["amount"],
            currency_code=row["currency_code"],
            provider_payment_id=row["provider_payment_id"],
            claimed_amount=evidence.amount,
            claimed_currency_code=evidence.currency_code,
            claimed_provider_payment_id=evidence.provider_payment_id,
        )
        verdict = (
            Verdict.MISFIT if differing else judge(PaymentState(row["state"]), application.event, evidence.witness)
        )
        judged.append((application, row, verdict, differing))
    corrected = await _corrections_so_far(
        connection, [item[1]["id"] for item in judged if item is not None and item[2] is Verdict.CORRECT]
    )
    outcomes: list[EvidenceOutcome | None] = []
    held: list[tuple[int, Application, asyncpg.Record, Verdict, list[Misfit]]] = []
    moves, notes = _Moves(), _Notes()
    for item in judged:
        if item is None:
            outcomes.append(None)
            continue
        application, row, verdict, differing = item
        current, evidence = PaymentState(row["state"]), application.evidence
        target = EVENT_TARGETS[application.event]
        if verdict is Verdict.CORRECT and corrected.get(row["id"], 0) > 0:
            verdict = Verdict.HOLD  # corrected once already: a person decides any further correction
        if verdict is not Verdict.MISFIT:
            notes.add(row["id"], evidence, confirm=verdict is Verdict.CONFIRM)
        if verdict is Verdict.APPLY:
            event = event_towards(current, target)
            if event is None:  # judge() only applies where the machine has a move
                raise Defect(f"no move {current} -> {target}")
            outcomes.append(EvidenceOutcome(verdict, _move(moves, row, event, target, evidence)))
        elif verdict is Verdict.CORRECT:
            outcome = _correct(moves, row, CORRECTIONS[(current, target)].to_state, evidence, 0)
            outcomes.append(EvidenceOutcome(verdict, outcome))
        else:
            outcomes.append(EvidenceOutcome(verdict, EventOutcome(current, None)))
            if verdict in (Verdict.HOLD, Verdict.MISFIT):
                held.append((len(outcomes) - 1, application, row, verdict, differing))
    await notes.write(connection)
    if moves.transitions:
        await connection.execute(_MOVE, *moves.arguments())
    for position, application, row, verdict, differing in held:
        case_id = await (
            _open_misfit_case(connection, application, row, differing)
            if verdict is Verdict.MISFIT
            else _hold_correction(connection, application, row, corrected.get(row["id"], 0) > 0)
        )
        unchanged = outcomes[position]
        if unchanged is not None:  # always: positions are of outcomes appended above
            outcomes[position] = EvidenceOutcome(verdict, unchanged.outcome, case_id)
    return outcomes


async def _corrections_so_far(connection: asyncpg.Connection, payment_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    if not payment_ids:
        return {}
    rows = await connection.fetch(_CORRECTIONS_SO_FAR, payment_ids)
    return {row["payment_id"]: int(row["corrections"]) for row in rows}


def _piece(evidence: Evidence, claim: str) -> dict[str, Any]:
    return {
        "claim": claim,
        "cause": evidence.cause,
        "evidence_ref": evidence.reference,
        "witness": evidence.witness.value,
        "provider_status": evidence.provider_status,
    }


async def _open_misfit_case(
    connection: asyncpg.Connection, application: Application, row: asyncpg.Record, differing: list[Misfit]
) -> uuid.UUID:
    evidence = application.evidence
    fields = [{"field": m.field, "ballast": m.ballast, "provider": m.provider} for m in differing]
    piece = _piece(evidence, EVENT_TARGETS[application.event].value) | {"differing": fields}
    described = ", ".join(f"{m.field} {m.provider!r} (Ballast: {m.ballast!r})" for m in differing)
    summary = f"payment {row['id']}: {evidence.cause} names another {described}; nothing moved"
    return await cases_repository.open_case(
        connection,
        MISFIT_CASE,
        "payment_id",
        row["id"],
        summary,
        [piece],
        check_provider=evidence.witness is Witness.WEBHOOK,
    )


async def _hold_correction(
    connection: asyncpg.Connection, application: Application, row: asyncpg.Record, corrected_before: bool
) -> uuid.UUID:
    evidence, current = application.evidence, PaymentState(row["state"])
    target = EVENT_TARGETS[application.event]
    correction = CORRECTIONS[(current, target)]
    approval = approval_needed(current, target, corrected_before)
    why = (
        "it was corrected before" if corrected_before and correction.approval is Approval.AUTOMATIC else correction.why
    )
    proposed = {
        "proposed_correction": {"from_state": current.value, "to_state": correction.to_state.value},
        "approval": approval.value,
        "why": why,
    }
    piece = _piece(evidence, target.value) | proposed
    summary = (
        f"payment {row['id']} is {current.value}, but the provider's API says {target.value}: correcting it to"
        f" {correction.to_state.value} needs a person's approval ({why})"
    )
    return await cases_repository.open_case(
        connection, CORRECTION_CASE, "payment_id", row["id"], summary, [piece], summary_if_open=True
    )


async def approve_correction_on(
    connection: asyncpg.Connection, payment_id: uuid.UUID, to_state: PaymentState, evidence: Evidence, approved_by: str
) -> EventOutcome:
    """A correction a person approved, in the caller's transaction: the payment must still be where the
    case found it (IllegalTransition otherwise), and the table must list the correction."""
    found = await _lock_and_observe(connection, [Application(payment_id, PaymentEvent.SUCCEEDED, evidence)])
    row = found.get(payment_id)
    if row is None:
        raise NotFound("payment", str(payment_id))
    current = PaymentState(row["state"])
    if (current, to_state) not in CORRECTIONS:
        raise IllegalTransition("payment correction", current.value, to_state.value, f"payment {payment_id}")
    corrected = await _corrections_so_far(connection, [payment_id])
    moves = _Moves()
    outcome = _correct(moves, row, to_state, evidence, corrected.get(payment_id, 0), approved_by)
    await connection.execute(_MOVE, *moves.arguments())
    return outcome
