"""Applying a venue's execution report to a leg, in the caller's transaction, never trusting it blindly.

First, the report must fit the leg (server/domain/venue_evidence.py): one whose venue order id,
symbol, side, currency or filled quantity contradicts what Ballast knows of the leg moves nothing,
records nothing on the leg (not even the venue's order id), and opens (or joins) the leg's
evidence-mismatch case naming each differing field. A report that fits moves a leg only as the leg
machine allows (fills through apply_fill, once per execution id). An acknowledgement that arrives
after the leg moved on is late and changes nothing. Any other report the machine refuses (a fill
after a rejection, a rejection after fills) contradicts what the venue said before: nothing moves,
and an investigation case is opened for the leg with the evidence.

The venue's answer to a modification (confirmed, refused) applies to the leg's pending modification,
named by its key (the id it was sent under) or by none. An answer naming another modification, or
arriving when none is pending, is late and changes nothing. A confirmation must state the terms the
modification asked, or it is a misfit. Any report that states the pending modification as answered
(a fill made under the new terms, overtaking the `replaced` report; the status inquiry's answer)
applies that answer first, on its own evidence, as a fill proves an acknowledgement.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from server.db import cases_repository, orders_repository
from server.domain.errors import NotFound
from server.domain.order_legs import Fill, FillError, LegState
from server.domain.provider_status import (
    LEG_STATE_FOR_REPORT,
    MODIFICATION_ANSWERS,
    VenueReport,
    modification_answer_for,
)
from server.domain.state_machine import IllegalTransition
from server.domain.stated import stated
from server.domain.venue_evidence import (
    KnownLeg,
    Misfit,
    PendingModification,
    VenueClaims,
    answers_pending,
    claims_from_order,
    misfits,
)
from server.services.execution import fill_on, modification_answer_on, venue_state_on

log = structlog.get_logger(__name__)


class LegOutcome(enum.StrEnum):
    """What applying a venue's report did to a leg: its outcome, as payment_events.PaymentOutcome is a
    payment's (a leg's report is judged and applied in one pass, so it has no separate verdict)."""

    #: news applied; or a repeat of what the leg already holds, which changes nothing
    APPLIED = "applied"
    #: late: the leg has moved past what it reports (an acknowledgement after fills, an answer to a
    #: modification no longer waiting); changes nothing
    STALE = "stale"
    #: the leg's machine refuses it, against what the venue said before: nothing moves, a case is opened
    CONTRADICTION = "contradiction"
    #: about another order than the leg's (ids, terms or fills differ): nothing moves, a case is opened
    MISFIT = "misfit"


LEG_CONTRADICTION_CASE = "CONTRADICTORY_VENUE_EVIDENCE"
#: A report about another order than the leg's (its id, instrument, side, currency or fills differ).
EVIDENCE_MISMATCH_CASE = "EVIDENCE_MISMATCH"
#: A venue's answer kept in a case is cut at this many characters (a webhook's body is kept whole
#: by the intake; an inquiry's answer is kept nowhere else).
ANSWER_KEPT_LENGTH_MAX = 8000


async def apply_venue_report(
    connection: asyncpg.Connection,
    leg_id: uuid.UUID,
    report: VenueReport,
    evidence_ref: str,
    *,
    fill: Fill | None = None,
    fill_time: datetime | None = None,
    reason: str = "",
    venue_order_id: str | None = None,
    order: Mapping[str, Any] | None = None,
    answer: bytes | None = None,
    venue: str | None = None,
    modification_id: str | None = None,
) -> LegOutcome:
    """Apply the venue's report to the leg, in the caller's transaction; what became of it (LegOutcome).

    `order` is the venue's order object as it sent it (a webhook's `data.object`, an inquiry's
    answer): what it states must fit the leg. `venue_order_id` stands for the order's id when it
    states none, `modification_id` for the key of the modification it answers. `venue` names whose
    words the order's modification status is in. `answer`, the venue's answer as received, is kept in
    a misfit's case (a webhook's delivery is kept by the intake). Raises NotFound for a leg Ballast
    does not have.
    """
    said = VenueClaims() if order is None else claims_from_order(order)
    if said.venue_order_id is None and venue_order_id is not None:
        said = replace(said, venue_order_id=venue_order_id)
    if said.modification_key is None and modification_id is not None:
        said = replace(said, modification_key=modification_id)
    known = await _known_leg(connection, leg_id)
    confirmed = _answer(report, said, known, venue)
    found = misfits(known, said, confirms_modification=confirmed is True)
    if found:
        await _open_misfit_case(connection, leg_id, report, evidence_ref, found, said, fill, answer)
        return LegOutcome.MISFIT
    if said.venue_order_id is not None and known.venue_order_id is None:  # kept the first time it is named
        await orders_repository.record_venue_order_id(connection, leg_id, said.venue_order_id)
    if report in MODIFICATION_ANSWERS and confirmed is None:
        return LegOutcome.STALE  # an answer to a modification that is no longer pending (or never was)
    answered = False
    try:
        if confirmed is not None:
            why = reason or said.modification_reason or ""
            await modification_answer_on(connection, leg_id, confirmed, evidence_ref, why)
            answered = True
        if report is VenueReport.FILL:
            if fill is None or fill_time is None:
                raise FillError(f"leg {leg_id}: a fill report without its execution")
            await _fill(connection, leg_id, fill, fill_time, evidence_ref)
        elif report not in MODIFICATION_ANSWERS:
            await venue_state_on(connection, leg_id, LEG_STATE_FOR_REPORT[report], evidence_ref, reason)
    except (IllegalTransition, FillError) as refused:
        if report is VenueReport.ACKNOWLEDGED:  # an acknowledgement overtaken by what followed it
            return LegOutcome.APPLIED if answered else LegOutcome.STALE
        await _open_case(connection, leg_id, report, evidence_ref, str(refused))
        return LegOutcome.CONTRADICTION
    return LegOutcome.APPLIED


def _answer(report: VenueReport, said: VenueClaims, known: KnownLeg, venue: str | None) -> bool | None:
    """Does this report answer the leg's pending modification: True confirmed, False refused, None not?

    The venue's answer (MODIFIED, MODIFY_REFUSED) answers it unless it names another modification; any
    other report only by naming the pending modification's key with a status that answers it."""
    if report in MODIFICATION_ANSWERS:
        return report is VenueReport.MODIFIED if answers_pending(known, said, key_required=False) else None
    if venue is None or said.modification_status is None or not answers_pending(known, said, key_required=True):
        return None
    stated_answer = modification_answer_for(venue, said.modification_status)
    return None if stated_answer is None else stated_answer is VenueReport.MODIFIED


async def _fill(
    connection: asyncpg.Connection, leg_id: uuid.UUID, fill: Fill, fill_time: datetime, evidence_ref: str
) -> None:
    """A fill; one that overtook the venue's acknowledgement (the leg still SUBMITTED) proves it: the
    leg is acknowledged on the fill's evidence first. Both raise before writing anything."""
    try:
        await fill_on(connection, leg_id, fill, fill_time, evidence_ref)
    except IllegalTransition as refused:
        if refused.from_state != LegState.SUBMITTED.value:
            raise
        await venue_state_on(connection, leg_id, LegState.PENDING, evidence_ref)
        await fill_on(connection, leg_id, fill, fill_time, evidence_ref)


async def _open_case(
    connection: asyncpg.Connection, leg_id: uuid.UUID, report: VenueReport, evidence_ref: str, refusal: str
) -> None:
    piece = [{"claim": report.value, "evidence_ref": evidence_ref, "refused_because": refusal[:500]}]
    summary = f"leg {leg_id}: the venue reported {report.value}, which contradicts what it said before"
    await cases_repository.open_case(connection, LEG_CONTRADICTION_CASE, "leg_id", leg_id, summary, piece)
    log.warning("venue.contradiction", leg_id=str(leg_id), report=report.value, evidence=evidence_ref)


async def _known_leg(connection: asyncpg.Connection, leg_id: uuid.UUID) -> KnownLeg:
    """What Ballast knows of the leg, under its row lock (held to the transaction's end)."""
    terms = await orders_repository.lock_leg_terms(connection, leg_id)
    if terms is None:
        raise NotFound("leg", str(leg_id))
    quantity, pending = terms.quantity, None
    if terms.modification_pending:
        pending = PendingModification(
            str(terms.modification_id),
            terms.requested_quantity or quantity,
            terms.requested_limit_price or terms.limit_price,
        )
    return KnownLeg(
        terms.venue_order_id,
        terms.instrument_symbol,
        terms.side,
        terms.currency_code,
        quantity if pending is None else max(quantity, pending.quantity),
        pending,
    )


async def _open_misfit_case(
    connection: asyncpg.Connection,
    leg_id: uuid.UUID,
    report: VenueReport,
    evidence_ref: str,
    found: tuple[Misfit, ...],
    said: VenueClaims,
    fill: Fill | None,
    answer: bytes | None,
) -> None:
    piece: dict[str, Any] = {
        "claim": report.value,
        "evidence_ref": evidence_ref,
        "misfits": [misfit.as_evidence() for misfit in found],
        "venue_says": said.as_evidence(),
    }
    if fill is not None:
        piece["fill"] = {
            "execution_id": stated(fill.execution_id),
            "quantity": format(fill.quantity, "f"),
            "price": format(fill.price, "f"),
        }
    if answer is not None:
        text = answer[: ANSWER_KEPT_LENGTH_MAX * 4].decode("utf-8", "replace")[:ANSWER_KEPT_LENGTH_MAX]
        piece["venue_answer"] = text.replace("\x00", "\ufffd")
    named = ", ".join(f"{m.field.value} (Ballast {m.ballast or 'none'}, venue {m.venue})" for m in found)
    summary = f"leg {leg_id}: the venue's {report.value} report does not fit the leg: {named}"
    await cases_repository.open_case(connection, EVIDENCE_MISMATCH_CASE, "leg_id", leg_id, summary, [piece])
    log.warning(
        "venue.misfit",
        leg_id=str(leg_id),
        report=report.value,
        fields=[m.field.value for m in found],
        evidence=evidence_ref,
    )
