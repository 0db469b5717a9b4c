"""Applying evidence to a payment: the one path by which a payment's state (and the ledger) changes.

Every application runs in one transaction under the payment's row lock: it records the provider's
status (if any) as evidence, judges it (server/domain/payment_evidence.py: who says it, and whether it
fits the payment at all), appends the transition, posts the ledger lines the move implies, and
writes the outbox event and the audit entry. A webhook's claim of an outcome only schedules a check
with the provider's API (CONFIRM); the API's contradiction of a decided state is corrected through
the correction table (server/domain/corrections.py) or held in a case for a person; evidence about
another amount, currency or provider object opens a case and moves nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from server.db import cases_repository, payment_events_repository, refunds_repository
from server.db.payment_events_repository import LockedPayment, Move, Note, Observation
from server.domain.corrections import CORRECTION_CASE, CORRECTION_EVENT, CORRECTIONS, Approval, approval_needed
from server.domain.errors import Defect, NotFound
from server.domain.ledger import correction_postings, payment_postings
from server.domain.payment_evidence import Misfit, judge, misfits
from server.domain.payment_states import (
    EVENT_TARGETS,
    REFUNDED_STATES,
    PaymentEvent,
    PaymentState,
    Verdict,
    Witness,
    event_towards,
)
from server.domain.refund_states import payment_state_after_refunds
from server.domain.state_machine import IllegalTransition
from server.providers.gateway import ProviderPayment


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

    @classmethod
    def of_api_answer(cls, cause: str, provider: str, answer: ProviderPayment) -> Evidence:
        """The provider's API's word about a payment (its answer to a request or to an inquiry)."""
        return cls(
            cause,
            f"{provider}:{answer.provider_payment_id}",
            provider=provider,
            provider_status=answer.status,
            provider_payment_id=answer.provider_payment_id,
            witness=Witness.API,
            amount=answer.amount,
            currency_code=answer.currency_code,
        )


@dataclass(frozen=True)
class PaymentOutcome:
    """What applying a piece of evidence did to a payment: the outcome.

    Ballast has one word for each side of applying evidence. The verdict (Verdict, judged by
    server/domain/payment_evidence.py) is the judgement of the evidence before anything is written,
    pure: what the evidence means for the payment as it stands. The outcome is what was then done, in
    the database: the move made if any, the ledger entries posted, the case opened. A leg's report has
    an outcome too (venue_events, LegOutcome), and so has a webhook delivery as its provider is told
    (webhook_application, Outcome).
    """

    verdict: Verdict
    from_state: PaymentState
    #: None when nothing moved (a repeat, a stale or held word, a webhook's claim, a misfit)
    to_state: PaymentState | None
    ledger_entry_ids: tuple[uuid.UUID, ...] = ()
    #: the case the evidence opened (or added its evidence to): a misfit, or a correction held for a person
    case_id: uuid.UUID | None = None


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


async def apply_provider_evidence(
    connection: asyncpg.Connection, payment_id: uuid.UUID, event: PaymentEvent, evidence: Evidence
) -> PaymentOutcome:
    """Apply evidence about one payment, in the caller's transaction; never raises for a move the machine refuses.

    Evidence that does not fit the payment moves nothing and opens a case. Otherwise it is judged
    (server/domain/payment_evidence.py, `judge`): news moves the payment; a repeat or a late (stale)
    status is kept as evidence and changes nothing; a webhook's claim of an outcome makes the payment
    due for a check with the provider's API; the API's contradiction of a decided state is corrected,
    or held in a case until a person approves the correction. Ballast's own conclusions (no answer
    came, it expired: Witness.BALLAST) move a payment only where the machine has the move.
    """
    (outcome,) = await apply_provider_evidence_each(connection, [Application(payment_id, event, evidence)])
    if outcome is None:
        raise NotFound("payment", str(payment_id))
    return outcome


async def apply_provider_evidence_each(
    connection: asyncpg.Connection, applications: Sequence[Application]
) -> list[PaymentOutcome | None]:
    """apply_provider_evidence for several payments at once, in a few round trips whatever their number;
    None for a payment that does not exist (nothing is written for it).

    Each payment may appear once (a second piece of evidence about it must see the first one's
    result: apply it in a later call).
    """
    found = await _lock_and_observe(connection, applications)
    judged: list[tuple[Application, LockedPayment, Verdict, list[Misfit]] | None] = []
    for application in applications:
        payment = found.get(application.payment_id)
        if payment is None:
            judged.append(None)
            continue
        evidence = application.evidence
        differing = misfits(
            amount=payment.amount,
            currency_code=payment.currency_code,
            provider_payment_id=payment.provider_payment_id,
            claimed_amount=evidence.amount,
            claimed_currency_code=evidence.currency_code,
            claimed_provider_payment_id=evidence.provider_payment_id,
        )
        verdict = (
            Verdict.MISFIT
            if differing
            else judge(
                payment.state,
                application.event,
                evidence.witness,
                refunds_hold_all=payment.refund_held > 0 and payment.refund_held == payment.amount,
            )
        )
        judged.append((application, payment, verdict, differing))
    corrected = await payment_events_repository.corrections_so_far(
        connection, [item[1].id for item in judged if item is not None and item[2] is Verdict.CORRECT]
    )
    outcomes: list[PaymentOutcome | None] = []
    held: list[tuple[int, Application, LockedPayment, Verdict, list[Misfit]]] = []
    moves: list[Move] = []
    notes: list[Note] = []
    for item in judged:
        if item is None:
            outcomes.append(None)
            continue
        application, payment, verdict, differing = item
        current, evidence = payment.state, application.evidence
        target = EVENT_TARGETS[application.event]
        if verdict is Verdict.CORRECT and corrected.get(payment.id, 0) > 0:
            verdict = Verdict.HOLD  # corrected once already: a person decides any further correction
        note = None if verdict is Verdict.MISFIT else _note(payment.id, evidence, confirm=verdict is Verdict.CONFIRM)
        if note is not None:
            notes.append(note)
        if verdict is Verdict.APPLY:
            event = event_towards(current, target)
            if event is None:  # judge() only applies where the machine has a move
                raise Defect(f"no move {current} -> {target}")
            moves.append(_move(payment, event, target, evidence))
            outcomes.append(_moved(verdict, moves[-1]))
        elif verdict is Verdict.CORRECT:
            moves.append(_correct(payment, CORRECTIONS[(current, target)].to_state, evidence, 0))
            outcomes.append(_moved(verdict, moves[-1]))
        else:
            outcomes.append(PaymentOutcome(verdict, current, None))
            if verdict in (Verdict.HOLD, Verdict.MISFIT):
                held.append((len(outcomes) - 1, application, payment, verdict, differing))
    await payment_events_repository.note_and_confirm(connection, notes)
    # the provider said a payment whose own refunds hold all of it is refunded: their answers settle it
    await refunds_repository.confirm_undecided_of(
        connection,
        [
            item[1].id
            for item in judged
            if item is not None
            and item[2] is Verdict.REPEAT
            and item[1].refund_held > 0
            and EVENT_TARGETS[item[0].event] in REFUNDED_STATES
        ],
    )
    await payment_events_repository.insert_moves(connection, moves)
    for position, application, payment, verdict, differing in held:
        case_id = await (
            _open_misfit_case(connection, application, payment, differing)
            if verdict is Verdict.MISFIT
            else _hold_correction(connection, application, payment, corrected.get(payment.id, 0) > 0)
        )
        unchanged = outcomes[position]
        if unchanged is not None:  # always: positions are of outcomes appended above
            outcomes[position] = replace(unchanged, case_id=case_id)
    return outcomes


async def approve_correction_on(
    connection: asyncpg.Connection, payment_id: uuid.UUID, to_state: PaymentState, evidence: Evidence, approved_by: str
) -> PaymentOutcome:
    """A correction a person approved, in the caller's transaction: the payment must still be where the
    case found it (IllegalTransition otherwise), and the table must list the correction."""
    found = await _lock_and_observe(connection, [Application(payment_id, PaymentEvent.SUCCEEDED, evidence)])
    payment = found.get(payment_id)
    if payment is None:
        raise NotFound("payment", str(payment_id))
    if (payment.state, to_state) not in CORRECTIONS:
        raise IllegalTransition("payment correction", payment.state.value, to_state.value, f"payment {payment_id}")
    corrected = await payment_events_repository.corrections_so_far(connection, [payment_id])
    move = _correct(payment, to_state, evidence, corrected.get(payment_id, 0), approved_by)
    await payment_events_repository.insert_moves(connection, [move])
    return _moved(Verdict.CORRECT, move)


async def follow_refunds(connection: asyncpg.Connection, payment_id: uuid.UUID, evidence: Evidence) -> PaymentOutcome:
    """Move a payment to where its own refunds leave it (PARTIALLY_REFUNDED, REFUNDED), in the caller's
    transaction, after one of them succeeded: the refund moves of the machine, made only here. They
    post nothing: each refund posted its own reversal."""
    found = await _lock_and_observe(connection, [Application(payment_id, PaymentEvent.REFUND_SUCCEEDED, evidence)])
    payment = found.get(payment_id)
    if payment is None:
        raise NotFound("payment", str(payment_id))
    target = payment_state_after_refunds(payment.state, payment.amount, payment.refunded)
    event = event_towards(payment.state, target)
    if event is None:
        return PaymentOutcome(Verdict.REPEAT, payment.state, None)
    move = Move.of(payment, target, event.value, evidence.cause, evidence.reference, ())
    await payment_events_repository.insert_moves(connection, [move])
    return _moved(Verdict.APPLY, move)


async def _lock_and_observe(
    connection: asyncpg.Connection, applications: Sequence[Application]
) -> dict[uuid.UUID, LockedPayment]:
    payment_ids = [application.payment_id for application in applications]
    if len(set(payment_ids)) != len(payment_ids):
        raise Defect("a payment's evidence is applied one piece at a time: each payment at most once per call")
    return await payment_events_repository.lock_and_observe(
        connection, [_observation(application) for application in applications]
    )


def _observation(application: Application) -> Observation:
    """The provider's word in the evidence, when the evidence is one, to keep as evidence."""
    evidence = application.evidence
    if evidence.provider is None or evidence.provider_status is None:
        return Observation(application.payment_id)
    return Observation(application.payment_id, evidence.provider, evidence.provider_status, evidence.reference)


def _note(payment_id: uuid.UUID, evidence: Evidence, *, confirm: bool = False) -> Note | None:
    """The provider's word to note beside the payment, and whether to check with its API now; None: nothing."""
    provider_word = evidence.provider is not None and evidence.provider_status is not None
    if not provider_word and not confirm:
        return None
    status = evidence.provider_status if provider_word else None
    # the provider's id for the payment is kept from its API (or its settlement report) only: a webhook
    # names one, but a stale or wrong webhook must not decide which object the API's answers are about
    provider_payment_id = evidence.provider_payment_id if evidence.witness in (Witness.API, Witness.REPORT) else None
    return Note(payment_id, status, provider_payment_id if provider_word else None, confirm)


def _move(payment: LockedPayment, event: PaymentEvent, to_state: PaymentState, evidence: Evidence) -> Move:
    postings = payment_postings(
        payment.id, payment.client_id, payment.amount, payment.currency_code, payment.state, to_state
    )
    return Move.of(payment, to_state, event.value, evidence.cause, evidence.reference, postings)


def _correct(
    payment: LockedPayment,
    to_state: PaymentState,
    evidence: Evidence,
    corrections_so_far: int,
    approved_by: str | None = None,
) -> Move:
    postings = correction_postings(
        payment.id,
        payment.client_id,
        payment.amount,
        payment.currency_code,
        payment.state,
        to_state,
        corrections_so_far + 1,
    )
    return Move.of(payment, to_state, CORRECTION_EVENT, evidence.cause, evidence.reference, postings, approved_by)


def _moved(verdict: Verdict, move: Move) -> PaymentOutcome:
    return PaymentOutcome(verdict, move.payment.state, move.to_state, move.entry_ids)


def _piece(evidence: Evidence, claim: str) -> dict[str, Any]:
    return {
        "claim": claim,
        "cause": evidence.cause,
        "evidence_ref": evidence.reference,
        "witness": evidence.witness.value,
        "provider_status": evidence.provider_status,
    }


async def _open_misfit_case(
    connection: asyncpg.Connection, application: Application, payment: LockedPayment, differing: list[Misfit]
) -> uuid.UUID:
    evidence = application.evidence
    fields = [{"field": m.field, "ballast": m.ballast, "provider": m.provider} for m in differing]
    piece = _piece(evidence, EVENT_TARGETS[application.event].value) | {"differing": fields}
    described = ", ".join(f"{m.field} {m.provider!r} (Ballast: {m.ballast!r})" for m in differing)
    summary = f"payment {payment.id}: {evidence.cause} names another {described}; nothing moved"
    return await cases_repository.open_case(
        connection,
        MISFIT_CASE,
        "payment_id",
        payment.id,
        summary,
        [piece],
        check_provider=evidence.witness is Witness.WEBHOOK,
    )


async def _hold_correction(
    connection: asyncpg.Connection, application: Application, payment: LockedPayment, corrected_before: bool
) -> uuid.UUID:
    evidence, current = application.evidence, payment.state
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
        f"payment {payment.id} is {current.value}, but the provider's API says {target.value}: correcting it to"
        f" {correction.to_state.value} needs a person's approval ({why})"
    )
    return await cases_repository.open_case(
        connection, CORRECTION_CASE, "payment_id", payment.id, summary, [piece], summary_if_open=True
    )
