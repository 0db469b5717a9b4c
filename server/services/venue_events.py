"""Applying a venue's execution report to a leg, in the caller's transaction, never trusting it blindly.

A report moves a leg only as the leg machine allows (fills through apply_fill, once per execution
id). An acknowledgement that arrives after the leg moved on is late and changes nothing. Any other
report the machine refuses (a fill after a rejection, a rejection after fills) contradicts what the
venue said before: nothing moves, and an investigation case is opened for the leg with the evidence.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
import structlog

from server.db import cases_repository
from server.domain.order_legs import Fill, FillError, LegState
from server.domain.provider_status import LEG_STATE_FOR_REPORT, VenueReport
from server.domain.state_machine import IllegalTransition
from server.services.execution import fill_on, venue_state_on

log = structlog.get_logger(__name__)

LEG_CONTRADICTION_CASE = "CONTRADICTORY_VENUE_EVIDENCE"


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
) -> str:
    """'applied' (or a repeat, which changes nothing), 'stale', or 'contradiction'."""
    if venue_order_id is not None:  # the venue's own id for the leg, kept the first time it is named
        await connection.execute(
            "UPDATE legs SET venue_order_id = coalesce(venue_order_id, $2) WHERE id = $1", leg_id, venue_order_id
        )
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
