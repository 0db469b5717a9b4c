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
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from server.db import cases_repository
from server.db.database import Budget, Database, in_transaction
from server.domain.order_legs import INSTRUCTION_OUTCOME_LENGTH_MAX
from server.domain.provider_status import VenueReport
from server.providers.http import NotSent, OutcomeUnknown, Refused
from server.providers.venue import VenueClient
from server.services.check_loop import CheckLoop, CheckSettings
from server.services.venue_events import apply_venue_report

log = structlog.get_logger(__name__)

UNSENT_CASE = "VENUE_INSTRUCTION_NOT_DELIVERED"

_CLAIM = """
WITH due AS (
    SELECT id FROM venue_instructions
    WHERE done_at IS NULL AND next_attempt_at <= now() AND ($2::uuid[] IS NULL OR leg_id = ANY($2))
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE venue_instructions i SET next_attempt_at = now() + make_interval(secs => $3::float8), attempts = attempts + 1
FROM due, legs l
WHERE i.id = due.id AND l.id = i.leg_id
RETURNING i.id, i.leg_id, i.kind, i.body, i.attempts, l.venue_order_id
"""


@dataclass(frozen=True)
class _Instruction:
    id: uuid.UUID
    leg_id: uuid.UUID
    kind: str
    body: dict[str, Any]
    attempts: int
    venue_order_id: str | None


async def send_now(database: Database, venue: VenueClient, leg_id: uuid.UUID) -> None:
    """Send a leg's due instructions at once, right after the call that queued them; the sender's loop
    sends them again if this fails."""
    try:
        await InstructionSender(database, venue, leg_ids=[leg_id]).run_once()
    except Exception as error:  # queued and durable: the loop will send it
        log.warning("venue.instruction_deferred", leg_id=str(leg_id), error=str(error)[:300])


class InstructionSender(CheckLoop[_Instruction]):
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

    async def _claim(self, connection: asyncpg.Connection, limit: int) -> list[_Instruction]:
        rows = await connection.fetch(_CLAIM, limit, self._leg_ids, self._settings.lease_s)
        return [
            _Instruction(row["id"], row["leg_id"], row["kind"], row["body"], row["attempts"], row["venue_order_id"])
            for row in rows
        ]

    async def _check(self, item: _Instruction) -> None:
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

    async def _done(self, item: _Instruction, outcome: str) -> None:
        await self._database.pool.execute(
            "UPDATE venue_instructions SET done_at = now(), outcome = $2 WHERE id = $1",
            item.id,
            outcome[:INSTRUCTION_OUTCOME_LENGTH_MAX],
        )

    async def _refused(self, item: _Instruction, error: Refused) -> None:
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
            await connection.execute(
                "UPDATE venue_instructions SET done_at = now(), outcome = $2 WHERE id = $1", item.id, reason
            )

        await in_transaction(self._database, Budget.within(10), work)

    async def _later(self, item: _Instruction, reason: str) -> None:
        async def work(connection: asyncpg.Connection) -> None:
            if item.attempts < self._settings.checks_max:
                delay_s = self._settings.backoff_s(item.attempts)
                await connection.execute(
                    "UPDATE venue_instructions SET next_attempt_at = now() + make_interval(secs => $2::float8)"
                    " WHERE id = $1",
                    item.id,
                    delay_s,
                )
                return
            await connection.execute(
                "UPDATE venue_instructions SET done_at = now(), outcome = $2 WHERE id = $1",
                item.id,
                f"not delivered: {reason}"[:INSTRUCTION_OUTCOME_LENGTH_MAX],
            )
            await cases_repository.open_case(
                connection,
                UNSENT_CASE,
                "leg_id",
                item.leg_id,
                f"the venue never took the {item.kind} instruction {item.id} for leg {item.leg_id}: {reason}",
                [{"instruction": str(item.id), "kind": item.kind, "attempts": item.attempts}],
            )

        await in_transaction(self._database, Budget.within(10), work)
