"""Sending queued instructions (modify, cancel) to the venue until it has them.

ModifyLeg and CloseLeg queue their instruction in the transaction that moves the leg, so it cannot
be lost. The sender claims due instructions with FOR UPDATE SKIP LOCKED and a lease, and sends each
under its own id as the venue's idempotency key, so a resend is the same instruction. Sent: done.
Refused: a refused modification is the venue's answer to it (the leg leaves MODIFYING under its old
terms); a refused cancel means the order is final at the venue already. No answer: it is sent again with backoff;
after `checks_max` attempts a case is opened for the leg. The API call that queued it sends it at once too.
"""

from __future__ import annotations

import uuid

import asyncpg
import structlog

from server.db import cases_repository, venue_instructions_repository
from server.db.database import BACKGROUND_BUDGET_S, Budget, Database, in_transaction
from server.db.venue_instructions_repository import DueInstruction
from server.domain.provider_status import VenueReport
from server.providers.http import NotSent, OutcomeUnknown, Refused
from server.providers.venue import VenueClient
from server.services.check_loop import CheckLoop, CheckSettings
from server.services.venue_events import apply_venue_report

log = structlog.get_logger(__name__)

UNSENT_CASE = "VENUE_INSTRUCTION_NOT_DELIVERED"


async def send_now(database: Database, venue: VenueClient, leg_id: uuid.UUID) -> None:
    """Send a leg's due instructions at once, right after the call that queued them; the sender's loop
    sends them again if this fails."""
    try:
        await InstructionSender(database, venue, leg_ids=[leg_id]).run_once()
    except Exception as error:  # queued and durable: the loop will send it
        log.warning("venue.instruction_deferred", leg_id=str(leg_id), error=str(error)[:300])


class InstructionSender(CheckLoop[DueInstruction]):
    def __init__(
        self,
        database: Database,
        venue: VenueClient,
        *,
        settings: CheckSettings | None = None,
        leg_ids: list[uuid.UUID] | None = None,
    ) -> None:
        self._database = database
        self._venue = venue
        self._settings = settings or CheckSettings()
        self._poll_interval_s = self._settings.poll_interval_s
        self._batch_size = self._settings.batch_size
        #: only these legs' instructions (None: every due one)
        self._leg_ids = leg_ids

    async def _claim(self, connection: asyncpg.Connection, limit: int) -> list[DueInstruction]:
        return await venue_instructions_repository.claim_due(connection, limit, self._leg_ids, self._settings.lease_s)

    async def _check(self, item: DueInstruction) -> None:
        venue, key = self._venue, str(item.id)
        try:
            venue_order_id = item.venue_order_id or await self._venue_order_id(item.leg_id)
            if venue_order_id is None:
                raise NotSent(f"{venue.provider} has no order for leg {item.leg_id} yet", 1.0)
            if item.kind == "modify":
                await venue.modify_leg(venue_order_id, key, item.body, self._settings.provider_timeout_s)
            else:
                await venue.cancel_leg(venue_order_id, key, self._settings.provider_timeout_s)
        except (NotSent, OutcomeUnknown) as error:
            await self._later(item, str(error))
            return
        except Refused as error:
            await self._refused(item, error)
            return
        await self._done(item, "sent")

    async def _venue_order_id(self, leg_id: uuid.UUID) -> str | None:
        order = await self._venue.find_leg(str(leg_id), self._settings.provider_timeout_s)
        return None if order is None else order.venue_order_id

    async def _done(self, item: DueInstruction, outcome: str) -> None:
        await venue_instructions_repository.finish(self._database.pool, item.id, outcome)

    async def _refused(self, item: DueInstruction, error: Refused) -> None:
        reason = f"refused by {self._venue.provider}: HTTP {error.status}"
        log.info("venue.instruction_refused", instruction=str(item.id), kind=item.kind, reason=reason)

        async def work(connection: asyncpg.Connection) -> None:
            if item.kind == "modify":  # the venue's answer to this modification: refused
                reference = f"{self._venue.provider}:instruction:{item.id}"
                await apply_venue_report(
                    connection,
                    item.leg_id,
                    VenueReport.MODIFY_REFUSED,
                    reference,
                    reason=reason,
                    venue=self._venue.provider,
                    modification_id=str(item.id),
                )
            await venue_instructions_repository.finish(connection, item.id, reason)

        await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)

    async def _later(self, item: DueInstruction, reason: str) -> None:
        async def work(connection: asyncpg.Connection) -> None:
            if item.attempts < self._settings.checks_max:
                delay_s = self._settings.backoff_s(item.attempts)
                await venue_instructions_repository.retry_in(connection, item.id, delay_s)
                return
            await venue_instructions_repository.finish(connection, item.id, f"not delivered: {reason}")
            await cases_repository.open_case(
                connection,
                UNSENT_CASE,
                "leg_id",
                item.leg_id,
                f"the venue never took the {item.kind} instruction {item.id} for leg {item.leg_id}: {reason}",
                [{"instruction": str(item.id), "kind": item.kind, "attempts": item.attempts}],
            )

        await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)
