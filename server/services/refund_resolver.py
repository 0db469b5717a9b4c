"""The refund resolver: refunds settled by asking the provider by id, never by guessing or blind retries.

It keeps the payment resolver's schedule (server/services/payment_resolver.py, ScheduledChecks): a
refund is due when UNKNOWN after a short grace, PENDING for longer than the provider should take,
RECORDED and quiet since its last submission attempt, or whenever its `next_check_at` has passed (a
webhook claimed news: the provider's API decides). Each is asked about by its idempotency key
(Ballast's refund id) and the answer is applied as evidence (server/services/refund_events.py).
When the provider never saw it:

- UNKNOWN: it is sent again under the same key, which the provider de-duplicates (never twice);
- RECORDED: it was never sent, or never arrived, and Ballast never sends it on its own. Once no
  submission attempt began for `expiry_s` it EXPIRES, and its amount no longer counts against the
  payment; a retry with its key is answered EXPIRED;
- anything else: the next check comes later.

No answer: the next check comes later, with backoff; after `checks_max` a case is opened.
"""

from __future__ import annotations

import asyncpg
import structlog
from prometheus_client import Counter

from server.db import cases_repository, payment_checks_repository, refunds_repository
from server.db.database import BACKGROUND_BUDGET_S, Budget, in_transaction
from server.db.payment_checks_repository import Checked
from server.domain.payment_states import Witness
from server.domain.provider_status import UnknownProviderStatus, refund_event_for
from server.domain.refund_states import RELEASED_REFUND_STATES, UNDECIDED_REFUND_STATES, RefundEvent, RefundState
from server.providers.gateway import NotSent, OutcomeUnknown, ProviderRefund, Refused
from server.services.payment_resolver import Claimed, ScheduledChecks
from server.services.refund_events import RefundEvidence, apply_refund_evidence

log = structlog.get_logger(__name__)

CHECKS = Counter("ballast_refund_resolver_checks", "Resolver checks of undecided refunds, by result", ["result"])

UNRESOLVED_REFUND_CASE = "UNRESOLVED_REFUND"


class RefundResolver(ScheduledChecks):
    """Checks refunds the provider may have decided without Ballast hearing of it."""

    _table = Checked.REFUNDS

    async def _check(self, refund: Claimed) -> None:
        key, provider = str(refund.id), self._gateway.provider
        try:
            answer = await self._gateway.find_refund(key, self._settings.provider_timeout_s)
        except NotSent as error:
            await self._not_sent(refund, error)
            return
        except (OutcomeUnknown, Refused) as error:
            CHECKS.labels("no_answer").inc()
            await self._later(refund, f"no answer from {provider}: {error}")
            return
        if answer is None:
            await self._not_found(refund)
            return
        await self._apply_answer(refund, answer)

    async def _not_found(self, refund: Claimed) -> None:
        key, provider, state = str(refund.id), self._gateway.provider, RefundState(refund.state)
        if state is RefundState.RECORDED:
            await self._expire_or_wait(refund)
            return
        if state in RELEASED_REFUND_STATES:
            CHECKS.labels("decided").inc()  # nothing at the provider is what Ballast holds
            await self._done(refund)
            return
        if state is not RefundState.UNKNOWN:
            CHECKS.labels("not_found").inc()
            await self._later(refund, f"{provider} has no refund with key {key}, though it had one")
            return
        async with self._database.connection(Budget.within(BACKGROUND_BUDGET_S)) as connection:
            record = await refunds_repository.get_refund(connection, None, refund.id, timeout_s=BACKGROUND_BUDGET_S)
            provider_payment_id = (
                None
                if record is None
                else await refunds_repository.provider_payment_id_of(
                    connection, record.payment_id, timeout_s=BACKGROUND_BUDGET_S
                )
            )
        if record is None or provider_payment_id is None:
            await self._later(refund, "the provider's id of the refund's payment is not known")
            return
        try:  # the request never arrived: send it again, under the same key
            answer = await self._gateway.create_refund(
                key,
                provider_payment_id,
                record.amount.amount,
                record.amount.currency_code,
                record.reason,
                self._settings.provider_timeout_s,
            )
        except NotSent as error:
            await self._not_sent(refund, error)
            return
        except OutcomeUnknown as error:
            CHECKS.labels("no_answer").inc()
            await self._later(refund, f"no answer from {provider}: {error}")
            return
        except Refused as error:
            CHECKS.labels("refused").inc()
            evidence = RefundEvidence(f"resolver.refused_http_{error.status}", f"{provider}:refund:{key}")
            await self._apply(refund, RefundEvent.REJECTED, evidence)
            return
        CHECKS.labels("resubmitted").inc()
        await self._apply_answer(refund, answer)

    async def _expire_or_wait(self, refund: Claimed) -> None:
        """A RECORDED refund the provider does not have: expire it once no attempt began for expiry_s."""
        expiry_s = self._settings.expiry_s

        async def work(connection: asyncpg.Connection) -> bool:
            if not await payment_checks_repository.lock_if_expirable(connection, self._table, refund.id, expiry_s):
                expires_at = await payment_checks_repository.expires_at(connection, self._table, refund.id, expiry_s)
                if expires_at is not None:
                    await payment_checks_repository.reschedule_at(
                        connection, self._table, refund.id, refund.lease, expires_at
                    )
                return False
            evidence = RefundEvidence(
                "resolver.expired", f"{self._gateway.provider}:inquiry:{refund.id}", witness=Witness.BALLAST
            )
            await apply_refund_evidence(connection, refund.id, RefundEvent.EXPIRED, evidence)
            return True

        expired = await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)
        CHECKS.labels("expired" if expired else "not_sent_yet").inc()

    async def _apply_answer(self, refund: Claimed, answer: ProviderRefund) -> None:
        provider = self._gateway.provider
        try:
            event = refund_event_for(provider, answer.status)
        except UnknownProviderStatus as error:
            await self._later(refund, str(error))
            return
        state = await self._apply(refund, event, RefundEvidence.of_api_answer("resolver.inquiry", provider, answer))
        if state in UNDECIDED_REFUND_STATES:
            CHECKS.labels("still_pending").inc()
            await self._later(refund, f"{provider} still says {answer.status}")
        else:
            CHECKS.labels("decided").inc()
            await self._done(refund)

    async def _apply(self, refund: Claimed, event: RefundEvent, evidence: RefundEvidence) -> RefundState:
        async def work(connection: asyncpg.Connection) -> RefundState:
            return (await apply_refund_evidence(connection, refund.id, event, evidence)).state

        state = await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)
        log.info("refund_resolver.applied", refund_id=str(refund.id), refund_event=event.value)
        return state

    async def _give_up_case(self, connection: asyncpg.Connection, item: Claimed, reason: str) -> None:
        record = await refunds_repository.get_refund(connection, None, item.id, timeout_s=BACKGROUND_BUDGET_S)
        if record is None:
            return
        await cases_repository.open_case(
            connection,
            UNRESOLVED_REFUND_CASE,
            "payment_id",
            record.payment_id,
            f"refund {item.id} of payment {record.payment_id} stayed {item.state} after {item.attempts} checks:"
            f" {reason}"[:2000],
            [{"refund_id": str(item.id), "checks": item.attempts, "last_reason": reason[:500]}],
        )
