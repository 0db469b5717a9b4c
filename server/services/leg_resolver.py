"""The resolver for order legs: ask the venue (by the leg's id) what became of legs it may not have told us about.

A leg the venue never saw, still SUBMITTED, is sent again under the same key. A leg the venue has:
its status applied, and, when it has fills, each fill the venue lists, once per execution id, so
fills whose webhooks were dropped are recovered; for a MODIFYING leg, the venue's answer to its
modification, when the venue's order states it (by the key it was sent under), is applied first, so a
dropped `replaced` or `modify_rejected` is recovered too. An answer that does not fit the leg (another
venue order id, symbol, side, currency, or more filled than the leg holds) moves nothing: its status
and fills are not applied, and the leg's evidence-mismatch case keeps the answer. Working legs are
checked again, ever less often; a SUBMITTED leg nobody can find out about ends in a case.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import structlog

from server.db import cases_repository, leg_checks_repository, orders_repository
from server.db.database import BACKGROUND_BUDGET_S, Budget, Database, in_transaction
from server.db.leg_checks_repository import DueLeg
from server.domain.backoff import backoff_s
from server.domain.order_legs import AWAITING_VENUE_STATES, Fill, LegState
from server.domain.orders import LegSpec
from server.domain.provider_status import UnknownProviderStatus, VenueReport, venue_report_for
from server.providers.http import NotSent, OutcomeUnknown, Refused
from server.providers.venue import VenueClient, VenueExecution, VenueOrder
from server.services.check_loop import CheckLoop, CheckSettings
from server.services.payment_resolver import CHECKS, UNRESOLVED_CASE
from server.services.venue_events import LegOutcome, apply_venue_report

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LegResolverSettings(CheckSettings):
    #: A leg still SUBMITTED (its send timed out, or was never answered) is first checked after this;
    #: after checks_max checks without an answer, a case is opened.
    submitted_grace_s: float = 2.0
    #: A working leg (PENDING, PARTIALLY_FILLED, MODIFYING) is checked this long after its last change, in
    #: case fills or answers were reported by webhooks that never arrived; then ever less often, up to
    #: working_check_max_s.
    working_check_s: float = 60.0
    working_check_max_s: float = 3600.0


class LegResolver(CheckLoop[DueLeg]):
    """Checks legs that may have moved at the venue without Ballast hearing of it."""

    def __init__(self, database: Database, venue: VenueClient, settings: LegResolverSettings | None = None) -> None:
        self._database = database
        self._venue = venue
        self._settings = settings or LegResolverSettings()
        self._poll_interval_s = self._settings.poll_interval_s
        self._batch_size = self._settings.batch_size
        self._breaker = getattr(venue, "breaker", None)  # a venue without one is always asked

    async def _claim(self, connection: asyncpg.Connection, limit: int) -> list[DueLeg]:
        config = self._settings
        return await leg_checks_repository.claim_due(
            connection,
            limit=limit,
            submitted_grace_s=config.submitted_grace_s,
            working_check_s=config.working_check_s,
            lease_s=config.lease_s,
        )

    async def _check(self, item: DueLeg) -> None:
        leg_id, state, attempts = item.id, item.state, item.attempts
        key, venue, timeout_s = str(leg_id), self._venue, self._settings.provider_timeout_s
        try:
            answer = await venue.find_leg(key, timeout_s)
            if answer is None and state is LegState.SUBMITTED:
                spec = await self._spec(leg_id)
                answer = await venue.submit_leg(key, spec, key, timeout_s)  # the same key: one order at the venue
                CHECKS.labels("leg_resubmitted").inc()
            if answer is None:
                await self._later(leg_id, state, attempts, f"{venue.provider} has no order for working leg {key}")
                return
            report = venue_report_for(venue.provider, answer.status)
            executions = await venue.executions(answer.venue_order_id, timeout_s) if report is VenueReport.FILL else []
        except NotSent as error:
            if not error.unreachable:  # not asked (an open breaker, a rate limit): the check does not count
                CHECKS.labels("leg_not_asked").inc()
                await self._not_asked(leg_id, error.retry_after_s)
                return
            CHECKS.labels("leg_no_answer").inc()
            await self._later(leg_id, state, attempts, f"{venue.provider} is unreachable: {error}")
            return
        except (OutcomeUnknown, UnknownProviderStatus) as error:
            CHECKS.labels("leg_no_answer").inc()
            await self._later(leg_id, state, attempts, f"no answer from {venue.provider}: {error}")
            return
        except Refused as error:
            report, executions, answer = VenueReport.REJECTED, [], None
            reason = f"refused by {venue.provider}: HTTP {error.status}"
        else:
            reason = ""
        venue_order_id = answer.venue_order_id if answer else None
        reference = f"{venue.provider}:{venue_order_id or 'inquiry:' + key}"
        now_state = await self._apply(leg_id, report, executions, reference, reason, answer)
        CHECKS.labels("leg_checked").inc()
        if now_state in AWAITING_VENUE_STATES:
            await self._later(leg_id, now_state, attempts, "still working at the venue")

    async def _spec(self, leg_id: uuid.UUID) -> LegSpec:
        async def read(connection: asyncpg.Connection) -> LegSpec:
            leg = await orders_repository.lock_leg(connection, leg_id)
            if leg is None:
                raise LookupError(f"leg {leg_id} vanished")  # legs are never deleted
            return leg.spec

        return await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), read)

    async def _apply(
        self,
        leg_id: uuid.UUID,
        report: VenueReport,
        executions: list[VenueExecution],
        reference: str,
        reason: str,
        answer: VenueOrder | None,
    ) -> LegState:
        """Apply the venue's word: a status, or (for fills) an acknowledgement and then each listed fill.
        An answer that does not fit the leg stops at its first report: its fills are not applied."""
        order, body = (answer.order, answer.body) if answer else (None, None)

        async def work(connection: asyncpg.Connection) -> LegState:
            first = VenueReport.ACKNOWLEDGED if report is VenueReport.FILL else report
            outcome = await apply_venue_report(
                connection,
                leg_id,
                first,
                reference,
                reason=reason,
                venue_order_id=answer.venue_order_id if answer else None,
                order=order,
                answer=body,
                venue=self._venue.provider,
            )
            if report is VenueReport.FILL and outcome is not LegOutcome.MISFIT:
                for execution in executions:
                    fill = Fill(execution.execution_id, execution.quantity, execution.price)
                    await apply_venue_report(
                        connection, leg_id, VenueReport.FILL, reference, fill=fill, fill_time=execution.time
                    )
            state = await orders_repository.leg_state(connection, leg_id)
            if state is None:
                raise LookupError(f"leg {leg_id} vanished")  # legs are never deleted
            return state

        return await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)

    async def _not_asked(self, leg_id: uuid.UUID, retry_after_s: float) -> None:
        """The venue was not asked: give the attempt back and check when it may be asked again."""

        async def work(connection: asyncpg.Connection) -> None:
            await leg_checks_repository.give_back(
                connection, leg_id, max(retry_after_s, self._settings.poll_interval_s)
            )

        await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)

    async def _later(self, leg_id: uuid.UUID, state: LegState, attempts: int, reason: str) -> None:
        config = self._settings

        async def work(connection: asyncpg.Connection) -> None:
            if state is not LegState.SUBMITTED:  # working: check again, ever less often, never give up
                delay_s = backoff_s(attempts, config.working_check_s, config.working_check_max_s)
            elif attempts < config.checks_max:
                delay_s = config.backoff_s(attempts)
            else:
                await leg_checks_repository.give_up(connection, leg_id)
                await cases_repository.open_case(
                    connection,
                    UNRESOLVED_CASE,
                    "leg_id",
                    leg_id,
                    f"leg {leg_id} stayed SUBMITTED after {attempts} checks: {reason}",
                    [{"checks": attempts, "last_reason": reason[:500]}],
                )
                return
            await leg_checks_repository.check_in(connection, leg_id, delay_s)

        await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)
