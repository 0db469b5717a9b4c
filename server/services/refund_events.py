"""Applying evidence to a refund: the one path by which a refund's state (and its ledger entry) changes.

Every application runs in the caller's transaction under the refund's row lock. Evidence about
another amount, currency, payment or provider object moves nothing and opens a case. Otherwise it is
judged (server/domain/refund_states.py, `judge_refund`): news moves the refund along its machine; a
webhook's claim of an outcome makes the refund due for a check with the provider's API; the API's
contradiction of a decided refund is held in a case for a person (never a backward move). A refund
that SUCCEEDED posts its reversal (once: its ledger event key is unique) and moves its payment to
where its refunds leave it (PARTIALLY_REFUNDED or REFUNDED).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from server.db import cases_repository, refunds_repository
from server.db.refunds_repository import LockedRefund, RefundMove
from server.domain.errors import Defect, NotFound
from server.domain.ledger import refund_postings
from server.domain.payment_evidence import id_misfit, misfits
from server.domain.payment_states import Verdict, Witness
from server.domain.refund_states import (
    REFUND_EVENT_TARGETS,
    RefundEvent,
    RefundState,
    judge_refund,
    refund_event_towards,
)
from server.providers.gateway import ProviderRefund
from server.services.payment_events import Evidence, follow_refunds

#: The case evidence about another amount, currency or object opens (about the refund's payment).
REFUND_MISFIT_CASE = "REFUND_EVIDENCE_MISMATCH"
#: The case the API's contradiction of a decided refund opens.
REFUND_CONTRADICTION_CASE = "REFUND_CONTRADICTION"
#: The case a refund Ballast never asked for opens on its payment (made on the provider's dashboard,
#: by its support staff, by another system holding the same credentials).
UNASKED_REFUND_CASE = "UNASKED_REFUND"


@dataclass(frozen=True)
class RefundEvidence:
    """Why a refund may move: the same fields as a payment's Evidence, about a refund."""

    cause: str
    reference: str
    provider: str | None = None
    provider_status: str | None = None
    provider_refund_id: str | None = None
    witness: Witness = Witness.API
    amount: str | None = None
    currency_code: str | None = None
    #: the provider's id of the payment the evidence says the refund is of
    provider_payment_id: str | None = None

    @classmethod
    def of_api_answer(cls, cause: str, provider: str, answer: ProviderRefund) -> RefundEvidence:
        return cls(
            cause,
            f"{provider}:{answer.provider_refund_id}",
            provider=provider,
            provider_status=answer.status,
            provider_refund_id=answer.provider_refund_id,
            witness=Witness.API,
            amount=answer.amount,
            currency_code=answer.currency_code,
            provider_payment_id=answer.provider_payment_id,
        )


@dataclass(frozen=True)
class RefundOutcome:
    verdict: Verdict
    from_state: RefundState
    #: None when nothing moved
    to_state: RefundState | None
    case_id: uuid.UUID | None = None

    @property
    def state(self) -> RefundState:
        return self.to_state or self.from_state


async def apply_refund_evidence(
    connection: asyncpg.Connection, refund_id: uuid.UUID, event: RefundEvent, evidence: RefundEvidence
) -> RefundOutcome:
    """Apply evidence about one refund in the caller's transaction; never raises for a move the machine refuses."""
    refund = await refunds_repository.lock_refund(connection, refund_id)
    if refund is None:
        raise NotFound("refund", str(refund_id))
    differing = _misfits(refund, evidence)
    if differing:
        case_id = await _open_case(connection, refund, event, evidence, REFUND_MISFIT_CASE, differing)
        return RefundOutcome(Verdict.MISFIT, refund.state, None, case_id)
    verdict = judge_refund(refund.state, event, evidence.witness)
    provider_word = evidence.provider_status is not None
    if provider_word or verdict is Verdict.CONFIRM:
        # the provider's id for the refund is kept from its API only (a stale webhook must not decide it)
        await refunds_repository.note(
            connection,
            refund.id,
            status=evidence.provider_status,
            provider_refund_id=evidence.provider_refund_id if evidence.witness is Witness.API else None,
            confirm=verdict is Verdict.CONFIRM,
        )
    if verdict is Verdict.HOLD:
        case_id = await _open_case(connection, refund, event, evidence, REFUND_CONTRADICTION_CASE, [])
        return RefundOutcome(verdict, refund.state, None, case_id)
    if verdict is not Verdict.APPLY:
        return RefundOutcome(verdict, refund.state, None)
    target = REFUND_EVENT_TARGETS[event]
    towards = refund_event_towards(refund.state, target)
    if towards is None:  # judge_refund applies only where the machine has a move
        raise Defect(f"no refund move {refund.state} -> {target}")
    postings = (
        refund_postings(refund.id, refund.payment_id, refund.client_id, refund.amount, refund.currency_code)
        if target is RefundState.SUCCEEDED
        else []
    )
    move = RefundMove(
        refund, target, towards.value, evidence.cause, evidence.reference, evidence.provider_status, tuple(postings)
    )
    await refunds_repository.insert_refund_move(connection, move)
    if target is RefundState.SUCCEEDED:
        await follow_refunds(
            connection, refund.payment_id, Evidence("refund.succeeded", f"refund:{refund.id}", witness=Witness.BALLAST)
        )
    return RefundOutcome(verdict, refund.state, target)


def _misfits(refund: LockedRefund, evidence: RefundEvidence) -> list[dict[str, str]]:
    """The refund's terms the evidence names differently: amount, currency, the provider's id of the
    refund (from its API only: a stale webhook must not decide it) and of its payment."""
    found = misfits(
        amount=refund.amount,
        currency_code=refund.currency_code,
        provider_payment_id=None,
        claimed_amount=evidence.amount,
        claimed_currency_code=evidence.currency_code,
        claimed_provider_payment_id=None,
    )
    api_refund_id = evidence.provider_refund_id if evidence.witness is Witness.API else None
    found += [
        misfit
        for misfit in (
            id_misfit("provider_refund_id", refund.provider_refund_id, api_refund_id),
            id_misfit("provider_payment_id", refund.provider_payment_id, evidence.provider_payment_id),
        )
        if misfit is not None
    ]
    return [{"field": m.field, "ballast": m.ballast, "provider": m.provider} for m in found]


async def _open_case(
    connection: asyncpg.Connection,
    refund: LockedRefund,
    event: RefundEvent,
    evidence: RefundEvidence,
    kind: str,
    differing: list[dict[str, str]],
) -> uuid.UUID:
    claim = REFUND_EVENT_TARGETS[event].value
    piece = {
        "refund_id": str(refund.id),
        "claim": claim,
        "cause": evidence.cause,
        "evidence_ref": evidence.reference,
        "witness": evidence.witness.value,
        "provider_status": evidence.provider_status,
    }
    if differing:
        piece["differing"] = differing  # type: ignore[assignment]
        described = ", ".join(f"{m['field']} {m['provider']!r} (Ballast: {m['ballast']!r})" for m in differing)
        summary = f"refund {refund.id} of payment {refund.payment_id}: {evidence.cause} names another {described}"
    else:
        summary = (
            f"refund {refund.id} of payment {refund.payment_id} is {refund.state.value}, but the provider's API says"
            f" {claim}: a person decides (nothing moved)"
        )
    return await cases_repository.open_case(connection, kind, "payment_id", refund.payment_id, summary[:2000], [piece])


async def note_unasked_refund(
    connection: asyncpg.Connection, provider_payment_id: str | None, piece: dict[str, object]
) -> uuid.UUID | None:
    """A refund Ballast never asked for, of a payment the provider knows by `provider_payment_id`: it
    moves nothing (nobody here decided to give that money back, and its amount may be part of the
    payment only), and opens an UNASKED_REFUND case on the payment with the provider's word as evidence,
    for a person to decide. None when the payment is not one of Ballast's."""
    if provider_payment_id is None:
        return None
    payment_id = await refunds_repository.payment_of_provider_id(connection, provider_payment_id)
    if payment_id is None:
        return None
    summary = (
        f"payment {payment_id}: the provider reports a refund Ballast never asked for"
        f" ({piece.get('provider_refund_id')}, {piece.get('amount')} {piece.get('currency_code')},"
        f" {piece.get('provider_status')}); nothing moved: a person decides"
    )
    return await cases_repository.open_case(
        connection, UNASKED_REFUND_CASE, "payment_id", payment_id, summary[:2000], [piece]
    )
