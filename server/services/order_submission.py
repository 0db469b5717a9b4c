"""Sending a submitted order's legs to the venue and applying what it answers, honestly.

The order (its legs SUBMITTED) has committed before this runs; each leg goes to the venue with its
own id as the venue's idempotency key, all legs at once, within the caller's deadline. An answer is
applied as a venue report. A leg whose request may have reached the venue without an answer stays
SUBMITTED: the venue's webhooks tell what became of it. A leg the venue was not asked about stays
SUBMITTED too, and the caller is told to retry (UNAVAILABLE), which sends it under the same key.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import structlog

from server.db.database import Budget, Database, in_transaction
from server.db.orders_repository import LegRecord
from server.domain.errors import ProviderUnavailable
from server.domain.identity import Principal
from server.domain.order_legs import LegState
from server.domain.orders import CloseLeg, ModifyLeg, SubmitOrder
from server.domain.provider_status import UnknownProviderStatus, VenueReport, venue_report_for
from server.providers.http import NotSent, OutcomeUnknown, Refused
from server.providers.venue import VenueClient
from server.services import execution
from server.services.execution import LegResult, OrderResult
from server.services.outliving import outlive
from server.services.venue_events import apply_venue_report
from server.services.venue_instructions import send_now

log = structlog.get_logger(__name__)

#: Kept back from the caller's deadline for writing the answers after the venue gives them.
OUTCOME_WRITE_RESERVE_S = 0.1
OUTCOME_WRITE_TIMEOUT_S = 5.0


async def submit_and_send(
    database: Database, venue: VenueClient | None, principal: Principal, request: SubmitOrder, budget: Budget
) -> OrderResult:
    """SubmitOrder: record the order once per key, then send each leg not sent before."""
    result = await execution.submit_order(database, principal, request, budget)
    if venue is None:
        return result
    unsent = [leg for leg in result.order.legs if leg.state is LegState.SUBMITTED]
    outcomes = await asyncio.gather(*(_send(database, venue, leg, budget) for leg in unsent))
    refusals = [outcome for outcome in outcomes if outcome is not None]
    order = await execution.get_order(database, principal, result.order.id, Budget.within(OUTCOME_WRITE_TIMEOUT_S))
    if refusals:
        raise ProviderUnavailable(venue.provider, refusals[0].reason, max(r.retry_after_s for r in refusals))
    return OrderResult(order, result.replayed)


async def _send(database: Database, venue: VenueClient, leg: LegRecord, budget: Budget) -> NotSent | None:
    """Send one leg and apply the answer; the NotSent if the venue was not asked."""
    key = str(leg.id)
    reason = ""
    venue_order_id: str | None = None
    order: dict[str, Any] | None = None
    answer_body: bytes | None = None
    try:
        answer = await venue.submit_leg(key, leg.spec, key, timeout_s=budget.remaining_s() - OUTCOME_WRITE_RESERVE_S)
    except NotSent as error:
        return error
    except OutcomeUnknown as error:
        log.warning("venue.outcome_unknown", leg_id=key, venue=venue.provider, reason=str(error))
        return None
    except Refused as error:
        report, reference = VenueReport.REJECTED, f"{venue.provider}:submit:{key}"
        reason = f"refused by {venue.provider}: HTTP {error.status}"
    else:
        try:
            report = venue_report_for(venue.provider, answer.status)
        except UnknownProviderStatus as error:
            log.warning("venue.unknown_status", leg_id=key, status=answer.status, error=str(error))
            return None
        reference, venue_order_id = f"{venue.provider}:{answer.venue_order_id}", answer.venue_order_id
        order, answer_body = answer.order, answer.body  # its terms must fit the leg, as any venue report's

    async def work(connection: asyncpg.Connection) -> None:
        await apply_venue_report(
            connection,
            leg.id,
            report,
            reference,
            reason=reason,
            venue_order_id=venue_order_id,
            order=order,
            answer=answer_body,
        )

    # written even if the caller gives up meanwhile: what the venue said must not be lost
    await outlive(in_transaction(database, Budget.within(OUTCOME_WRITE_TIMEOUT_S), work), f"record leg {leg.id}")
    return None


async def modify_and_send(
    database: Database, venue: VenueClient | None, principal: Principal, request: ModifyLeg, budget: Budget
) -> LegResult:
    """ModifyLeg: the leg goes MODIFYING and the instruction is queued with it, then sent at once."""
    result = await execution.modify_leg(database, principal, request, budget)
    if venue is not None:
        await send_now(database, venue, result.leg.id)
    return result


async def close_and_send(
    database: Database, venue: VenueClient | None, principal: Principal, request: CloseLeg, budget: Budget
) -> LegResult:
    """CloseLeg: the leg is CLOSED and the cancel queued with it, then sent at once."""
    result = await execution.close_leg(database, principal, request, budget)
    if venue is not None:
        await send_now(database, venue, result.leg.id)
    return result
