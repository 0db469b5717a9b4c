"""The payment resolver: payments settled by asking the provider, never by guessing, blind retries or clients.

Workers claim due payments with FOR UPDATE SKIP LOCKED and, in the same short transaction, push
their next check out (a lease), so any number of workers in any number of processes never ask about
the same payment at once and hold no lock while they wait for the provider. A payment is due:

- UNKNOWN (a request may have reached the provider, no answer came): after a short grace;
- PENDING for longer than the provider should take;
- RECORDED quiet for twice the provider's time limit since its last submission attempt: a server
  that died during or after the provider call left it so, and no client has to come back for it;
- any state whose `next_check_at` has passed: a webhook claimed news (the provider's API decides,
  not the webhook), or an earlier check asked to be repeated.

Each is asked about by its idempotency key (Ballast's payment id), through the breaker, and the
answer, the authoritative witness, is applied as evidence (judged as any other: it may correct a
decided state, or hold the correction for a person). When the provider never saw it:

- UNKNOWN: it is sent again with the same key, which the provider de-duplicates (never twice);
- RECORDED: it was never sent, or never arrived; it is never sent by Ballast on its own. Once no
  submission attempt began for `expiry_s`, it EXPIRES (its client was told UNAVAILABLE and never
  came back): the exposure stops counting it, and a retry with its key is answered EXPIRED;
- anything else: the next check comes later.

No answer: the next check comes later, with backoff; after `checks_max` a case is opened for a person.
A check that did not ask (the breaker is open, or the provider said 429) does not count: it waits
for the provider instead, and while the breaker refuses calls nothing is claimed, so a provider
under strain does not use up payments' checks that were never made. A refused connection is a
check that failed: a provider down for good still ends in cases, as slowly as its breaker lets
probes through.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg
import structlog
from prometheus_client import Counter

from server.db import cases_repository, payment_checks_repository
from server.db.database import BACKGROUND_BUDGET_S, Budget, Database, in_transaction
from server.db.payment_checks_repository import Checked
from server.domain.payment_states import (
    MONEY_OUTCOMES,
    UNDECIDED_STATES,
    MoneyOutcome,
    PaymentEvent,
    PaymentState,
    Witness,
)
from server.domain.provider_status import UnknownProviderStatus, event_for
from server.providers.gateway import GatewayClient, NotSent, OutcomeUnknown, ProviderPayment, Refused
from server.services.check_loop import CheckLoop, CheckSettings
from server.services.payment_events import Evidence, apply_provider_evidence

log = structlog.get_logger(__name__)

CHECKS = Counter("ballast_resolver_checks", "Resolver checks of undecided payments, by result", ["result"])

UNRESOLVED_CASE = "UNRESOLVED_OUTCOME"


@dataclass(frozen=True)
class PaymentResolverSettings(CheckSettings):
    #: An UNKNOWN payment is first checked this long after it became UNKNOWN (the provider may still be working).
    unknown_grace_s: float = 1.0
    #: A PENDING payment is overdue, and checked, when no decision came this long after it became PENDING.
    pending_overdue_s: float = 30.0
    #: A RECORDED payment with no submission attempt for this long, and unknown to the provider, expires.
    expiry_s: float = 600.0

    @property
    def recorded_quiet_s(self) -> float:
        """A RECORDED payment is first asked about this long after its last submission attempt: by then
        no request for it can still be on its way (each is cut at the provider's time limit)."""
        return 2 * self.provider_timeout_s


@dataclass(frozen=True)
class Claimed:
    """A payment or refund a check holds the lease of."""

    id: uuid.UUID
    state: str
    amount: Decimal
    currency_code: str
    attempts: int
    #: the lease this check holds (its claim's next_check_at)
    lease: datetime


class ScheduledChecks(CheckLoop[Claimed]):
    """What the payment and refund resolvers share: the schedule of checks of rows in `_table`, and what
    a check does when it could not ask, got no answer, or is done."""

    #: the table whose rows this resolver checks (each subclass names its own)
    _table: Checked

    def __init__(
        self, database: Database, gateway: GatewayClient, settings: PaymentResolverSettings | None = None
    ) -> None:
        self._database = database
        self._gateway = gateway
        self._settings = settings or PaymentResolverSettings()
        self._poll_interval_s = self._settings.poll_interval_s
        self._batch_size = self._settings.batch_size
        self._breaker = gateway.breaker

    async def _claim(self, connection: asyncpg.Connection, limit: int) -> list[Claimed]:
        config = self._settings
        assert isinstance(config, PaymentResolverSettings)
        rows = await payment_checks_repository.claim_due(
            connection,
            self._table,
            limit=limit,
            unknown_grace_s=config.unknown_grace_s,
            pending_overdue_s=config.pending_overdue_s,
            lease_s=config.lease_s,
            recorded_quiet_s=config.recorded_quiet_s,
        )
        return [
            Claimed(
                row["id"],
                row["state"],
                row["amount"],
                row["currency_code"],
                row["check_attempts"],
                row["next_check_at"],
            )
            for row in rows
        ]

    async def _give_up_case(self, connection: asyncpg.Connection, item: Claimed, reason: str) -> None:
        """Open the case of an item that stayed undecided after checks_max checks."""
        raise NotImplementedError

    async def _done(self, item: Claimed) -> None:
        """A decided payment or refund needs no further check (unless a webhook asked for one meanwhile)."""

        async def work(connection: asyncpg.Connection) -> None:
            await payment_checks_repository.reschedule_at(connection, self._table, item.id, item.lease, None)

        await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)

    async def _not_sent(self, item: Claimed, error: NotSent) -> None:
        """A provider that could not be reached is a failed check; one that was not asked is none."""
        if error.unreachable:
            CHECKS.labels("no_answer").inc()
            await self._later(item, f"{self._gateway.provider} is unreachable: {error}")
            return
        CHECKS.labels("not_asked").inc()
        await self._not_asked(item, error.retry_after_s)

    async def _not_asked(self, item: Claimed, retry_after_s: float) -> None:
        """The provider was not asked (its breaker is open, it refused the connection, it rate limited us):
        the check does not count, and the next one comes when the provider may be asked again."""

        async def work(connection: asyncpg.Connection) -> None:
            delay_s = max(retry_after_s, self._settings.poll_interval_s)
            await payment_checks_repository.give_back(connection, self._table, item.id, item.lease, delay_s)

        await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)

    async def _later(self, item: Claimed, reason: str) -> None:
        """Check again after a backoff; after checks_max, stop and open a case for a person."""

        async def work(connection: asyncpg.Connection) -> None:
            if item.attempts < self._settings.checks_max:
                delay_s = self._settings.backoff_s(item.attempts)
                await payment_checks_repository.reschedule_in(connection, self._table, item.id, item.lease, delay_s)
                return
            if not await payment_checks_repository.give_up(
                connection, self._table, item.id, item.lease
            ):  # it moved, or a webhook asked for a check: not the end of the road
                return
            await self._give_up_case(connection, item, reason)
            log.warning(
                "resolver.gave_up", table=self._table.value, item_id=str(item.id), checks=item.attempts, reason=reason
            )

        await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)


class PaymentResolver(ScheduledChecks):
    """Checks payments the provider may have decided without Ballast hearing of it (the leg resolver,
    server/services/leg_resolver.py, does the same for legs at the venue)."""

    _table = Checked.PAYMENTS

    async def _check(self, payment: Claimed) -> None:
        key = str(payment.id)
        provider = self._gateway.provider
        timeout_s = self._settings.provider_timeout_s
        try:
            answer = await self._gateway.find_payment(key, timeout_s)
        except NotSent as error:
            await self._not_sent(payment, error)
            return
        except (OutcomeUnknown, Refused) as error:
            CHECKS.labels("no_answer").inc()
            await self._later(payment, f"no answer from {provider}: {error}")
            return
        if answer is None:
            await self._not_found(payment)
            return
        await self._apply_answer(payment, answer)

    async def _not_found(self, payment: Claimed) -> None:
        """The provider has no payment with this key."""
        key, provider = str(payment.id), self._gateway.provider
        if payment.state == PaymentState.RECORDED:
            await self._expire_or_wait(payment)
            return
        if MONEY_OUTCOMES.get(PaymentState(payment.state)) is MoneyOutcome.NOT_TAKEN:
            CHECKS.labels("decided").inc()  # nothing at the provider is what Ballast holds: the claim was not news
            await self._done(payment)
            return
        if payment.state != PaymentState.UNKNOWN:
            CHECKS.labels("not_found").inc()  # PENDING or decided, yet the provider has no such payment
            await self._later(payment, f"{provider} has no payment with key {key}, though it had one")
            return
        try:  # the request never arrived: send it again, under the same key
            answer = await self._gateway.create_payment(
                key, payment.amount, payment.currency_code, key, self._settings.provider_timeout_s
            )
        except NotSent as error:
            await self._not_sent(payment, error)
            return
        except OutcomeUnknown as error:
            CHECKS.labels("no_answer").inc()
            await self._later(payment, f"no answer from {provider}: {error}")
            return
        except Refused as error:
            CHECKS.labels("refused").inc()
            await self._apply(
                payment,
                PaymentEvent.REJECTED,
                Evidence(f"resolver.refused_http_{error.status}", f"{provider}:create:{key}"),
            )
            return
        CHECKS.labels("resubmitted").inc()
        await self._apply_answer(payment, answer)

    async def _expire_or_wait(self, payment: Claimed) -> None:
        """A RECORDED payment the provider does not have: expire it once no attempt began for expiry_s."""
        expiry_s = self._settings.expiry_s

        async def work(connection: asyncpg.Connection) -> bool:
            if not await payment_checks_repository.lock_if_expirable(connection, self._table, payment.id, expiry_s):
                expires_at = await payment_checks_repository.expires_at(connection, self._table, payment.id, expiry_s)
                if expires_at is not None:
                    await payment_checks_repository.reschedule_at(
                        connection, self._table, payment.id, payment.lease, expires_at
                    )
                return False
            evidence = Evidence(
                "resolver.expired",
                f"{self._gateway.provider}:inquiry:{payment.id}",
                witness=Witness.BALLAST,
            )
            await apply_provider_evidence(connection, payment.id, PaymentEvent.EXPIRED, evidence)
            return True

        expired = await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)
        CHECKS.labels("expired" if expired else "not_sent_yet").inc()
        if expired:
            log.info("resolver.expired", payment_id=str(payment.id))

    async def _apply_answer(self, payment: Claimed, answer: ProviderPayment) -> None:
        provider = self._gateway.provider
        try:
            event = event_for(provider, answer.status)
        except UnknownProviderStatus as error:
            await self._later(payment, str(error))
            return
        evidence = Evidence.of_api_answer("resolver.inquiry", provider, answer)
        state = await self._apply(payment, event, evidence)
        if state in UNDECIDED_STATES:
            CHECKS.labels("still_pending").inc()
            await self._later(payment, f"{provider} still says {answer.status}")
        else:
            CHECKS.labels("decided").inc()
            await self._done(payment)

    async def _apply(self, payment: Claimed, event: PaymentEvent, evidence: Evidence) -> PaymentState:
        """Apply the evidence; the payment's state afterwards."""

        async def work(connection: asyncpg.Connection) -> PaymentState:
            judged = await apply_provider_evidence(connection, payment.id, event, evidence)
            return judged.to_state or judged.from_state

        state = await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), work)
        log.info("resolver.applied", payment_id=str(payment.id), payment_event=event.value, evidence=evidence.reference)
        return state

    async def _give_up_case(self, connection: asyncpg.Connection, item: Claimed, reason: str) -> None:
        await cases_repository.open_case(
            connection,
            UNRESOLVED_CASE,
            "payment_id",
            item.id,
            f"payment {item.id} stayed {item.state} after {item.attempts} checks: {reason}",
            [{"checks": item.attempts, "last_reason": reason[:500]}],
        )
