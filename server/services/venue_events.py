"""Applying a venue's execution report to a leg, in the caller's transaction, never trusting it blindly.

First, the report must fit the leg (server/domain/venue_evidence.py): one whose venue order id,
symbol, side, currency or filled quantity contradicts what Ballast knows of the leg moves nothing,
records nothing on the leg (not even the venue's order id), and opens (or joins) the leg's
evidence-mismatch case naming each differing field. A report that fits moves a leg only as the leg
machine allows (fills through apply_fill, once per execution id). An acknowledgement that arrives
after the leg moved on is late and changes nothing. Any other report the machine refuses (a fill
after a rejection, a rejection after fills) contradicts what the venue said before: nothing moves,
and an investigation case is opened for the leg with the evidence.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from server.db import cases_repository
from server.domain.errors import NotFound
from server.domain.order_legs import Fill, FillError, LegState
from server.domain.provider_status import LEG_STATE_FOR_REPORT, VenueReport
from server.domain.state_machine import IllegalTransition
from server.domain.stated import stated
from server.domain.venue_evidence import KnownLeg, Misfit, VenueClaims, claims_from_order, misfits
from server.services.execution import fill_on, venue_state_on

log = structlog.get_logger(__name__)

LEG_CONTRADICTION_CASE = "CONTRADICTORY_VENUE_EVIDENCE"
#: A report about another order than the leg's (its id, instrument, side, currency or fills differ).
EVIDENCE_MISMATCH_CASE = "EVIDENCE_MISMATCH"
#: A venue's answer kept in a case is cut at this many characters (a webhook's body is kept whole
#: by the intake; an inquiry's answer is kept nowhere else).
ANSWER_KEPT_LENGTH_MAX = 8000

_KNOWN_LEG = """
SELECT venue_order_id, instrument_symbol, side, currency_code, greatest(quantity, requested_quantity) AS quantity_max
FROM legs WHERE id = $1 FOR UPDATE
"""


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
) -> str:
    """'applied' (or a repeat, which changes nothing), 'stale', 'contradiction', or 'misfit'.

    `order` is the venue's order object as it sent it (a webhook's `data.object`, an inquiry's
    answer): what it states must fit the leg. `venue_order_id` stands for the order's id when it
    states none. `answer`, the venue's answer as received, is kept in a misfit's case (a webhook's
    delivery is kept by the intake). Raises NotFound for a leg Ballast does not have.
    """
    said = VenueClaims() if order is None else claims_from_order(order)
    if said.venue_order_id is None and venue_order_id is not None:
        said = replace(said, venue_order_id=venue_order_id)
    known = await _known_leg(connection, leg_id)
    found = misfits(known, said)
    if found:
        await _open_misfit_case(connection, leg_id, report, evidence_ref, found, said, fill, answer)
        return "misfit"
    if said.venue_order_id is not None and known.venue_order_id is None:  # kept the first time it is named
        await connection.execute("UPDATE legs SET venue_order_id = $2 WHERE id = $1", leg_id, said.venue_order_id)
    try:
        if report is VenueReport.FILL:
            if fill is None or fill_time is None:
                raise FillError(f"leg {leg_id}: a fill report without its execution")
            await _fill(connection, leg_id, fill, fill_time, evidence_ref)
        else:
            await venue_state_on(connection, leg_id, LEG_STATE_FOR_REPORT[report], evidence_ref, reason)
    except (IllegalTransition, FillError) as refused:
        if report is VenueReport.ACKNOWLEDGED:
            return "stale"  # an acknowledgement overtaken by what followed it
        await _open_case(connection, leg_id, report, evidence_ref, str(refused))
        return "contradiction"
    return "applied"


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
    row = await connection.fetchrow(_KNOWN_LEG, leg_id)
    if row is None:
        raise NotFound("leg", str(leg_id))
    return KnownLeg(
        row["venue_order_id"], row["instrument_symbol"], row["side"], row["currency_code"], row["quantity_max"]
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
