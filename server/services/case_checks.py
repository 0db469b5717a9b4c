"""Cases get the provider's own word: when a webhook's evidence did not fit its payment, ask the API.

A case about a webhook naming another amount, currency or provider object holds what the webhook
said and what Ballast has. What does the provider's API say about the payment? The case checker asks
it (by idempotency key, through the breaker) and adds the answer to the case as evidence, recorded
like any provider status. Nothing moves: settling the case is a person's call, now with the
provider's answer in front of them. (A webhook that merely claims an outcome opens no case: the
resolver asks the API, whose answer decides; server/services/payment_resolver.py.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import structlog

from server.db import cases_repository
from server.db.database import BACKGROUND_BUDGET_S, Budget, Database, in_transaction
from server.domain.payment_states import EVENT_TARGETS
from server.domain.provider_status import UnknownProviderStatus, event_for
from server.providers.gateway import GatewayClient, NotSent, OutcomeUnknown, Refused
from server.services.check_loop import CheckLoop, CheckSettings
from server.services.payment_events import CASE_CHECK_CAUSE

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Due:
    case_id: uuid.UUID
    payment_id: uuid.UUID


class CaseChecker(CheckLoop[_Due]):
    def __init__(self, database: Database, gateway: GatewayClient, settings: CheckSettings | None = None) -> None:
        self._database = database
        self._gateway = gateway
        self._settings = settings or CheckSettings()
        self._poll_interval_s = self._settings.poll_interval_s
        self._batch_size = self._settings.batch_size
        self._breaker = gateway.breaker

    async def _claim(self, connection: asyncpg.Connection, limit: int) -> list[_Due]:
        claimed = await cases_repository.claim_provider_checks(connection, limit, self._settings.lease_s)
        return [_Due(case_id, payment_id) for case_id, payment_id in claimed]

    async def _check(self, item: _Due) -> None:
        provider = self._gateway.provider
        try:
            answer = await self._gateway.find_payment(str(item.payment_id), self._settings.provider_timeout_s)
        except (NotSent, OutcomeUnknown, Refused) as error:  # the lease runs out; asked again then
            log.info("case_check.no_answer", case_id=str(item.case_id), error=str(error)[:200])
            return
        if answer is None:
            status, reference, claim = None, f"{provider}:inquiry:{item.payment_id}", "NOT_FOUND"
        else:
            status, reference = answer.status, f"{provider}:{answer.provider_payment_id}"
            try:
                claim = EVENT_TARGETS[event_for(provider, answer.status)].value
            except UnknownProviderStatus:
                claim = f"UNMAPPED:{answer.status}"
        piece = [{"claim": claim, "cause": CASE_CHECK_CAUSE, "evidence_ref": reference, "provider_status": status}]

        async def work(connection: asyncpg.Connection) -> None:
            await cases_repository.add_provider_answer(
                connection, item.case_id, item.payment_id, provider, status, reference, piece
            )

        await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)
        log.info("case_check.recorded", case_id=str(item.case_id), provider_says=claim)
