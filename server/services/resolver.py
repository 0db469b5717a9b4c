"""The resolver: undecided payments settled by asking the provider, never by guessing or blind retries.

A payment is undecided when it is UNKNOWN (a request may have reached the provider, no answer came)
or PENDING for longer than the provider should take. Workers claim due ones with FOR UPDATE SKIP
LOCKED and, in the same short transaction, push their next check out (a lease), so any number of
workers in any number of processes never ask about the same payment at once and hold no lock
while they wait for the provider. Then each is asked about by its idempotency key (Ballast's
payment id), through the breaker:

- the provider has it: its status is applied as evidence, like any other;
- the provider never saw it (an UNKNOWN payment whose request was lost): it is sent again with the
  same key, which the provider de-duplicates, so it can never be charged twice;
- no answer: the next check comes later, with backoff; after `checks_max` a case is opened for a person.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
import structlog
from prometheus_client import Counter

from server.db import cases_repository
from server.db.database import Budget, Database, in_transaction
from server.domain.payment_states import PaymentEvent
from server.domain.payments import PaymentState
from server.domain.provider_status import UnknownProviderStatus, event_for
from server.providers.gateway import GatewayClient, NotSent, OutcomeUnknown, ProviderPayment, Refused
from server.services.check_loop import CheckLoop, CheckSettings
from server.services.payment_events import Evidence, apply_provider_evidence

log = structlog.get_logger(__name__)

CHECKS = Counter("ballast_resolver_checks", "Resolver checks of undecided payments, by result", ["result"])

UNRESOLVED_CASE = "UNRESOLVED_OUTCOME"


@dataclass(frozen=True)
class ResolverSettings(CheckSettings):
    #: An UNKNOWN payment is first checked this long after it became UNKNOWN (the provider may still be working).
    unknown_grace_s: float = 1.0
    #: A PENDING payment is overdue, and checked, when no decision came this long after it became PENDING.
    pending_overdue_s: float = 30.0


_CLAIM = """
WITH due AS (
    SELECT id FROM payments
    WHERE state IN ('UNKNOWN', 'PENDING')
      AND coalesce(
            next_check_at,
            updated_at + make_interval(secs => CASE state WHEN 'UNKNOWN' THEN $2::float8 ELSE $3::float8 END)
          ) <= now()
    ORDER BY coalesce(next_check_at, updated_at)
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE payments p SET next_check_at = now() + make_interval(secs => $4::float8), check_attempts = check_attempts + 1
FROM due WHERE p.id = due.id
RETURNING p.id, p.state, p.amount, p.currency_code, p.check_attempts
"""


@dataclass(frozen=True)
class _Claimed:
    id: uuid.UUID
    state: PaymentState
    amount: Decimal
    currency_code: str
    attempts: int


class Resolver(CheckLoop[_Claimed]):
    def __init__(self, database: Database, gateway: GatewayClient, settings: ResolverSettings | None = None) -> None:
        self._database = database
        self._gateway = gateway
        self._settings = settings or ResolverSettings()
        self._poll_interval_s = self._settings.poll_interval_s

    async def _claim(self, connection: asyncpg.Connection) -> list[_Claimed]:
        config = self._settings
        rows = await connection.fetch(
            _CLAIM, config.batch_size, config.unknown_grace_s, config.pending_overdue_s, config.lease_s
        )
        return [
            _Claimed(row["id"], PaymentState(row["state"]), row["amount"], row["currency_code"], row["check_attempts"])
            for row in rows
        ]

    async def _check(self, payment: _Claimed) -> None:
        key = str(payment.id)
        provider = self._gateway.provider
        try:
            answer = await self._gateway.find_payment(key, self._settings.provider_timeout_s)
            if answer is None and payment.state is PaymentState.UNKNOWN:
                # the request never arrived: send it again, under the same key
                answer = await self._gateway.create_payment(
                    key, payment.amount, payment.currency_code, key, self._settings.provider_timeout_s
                )
                CHECKS.labels("resubmitted").inc()
        except (NotSent, OutcomeUnknown) as error:
            CHECKS.labels("no_answer").inc()
            await self._later(payment, f"no answer from {provider}: {error}")
            return
        except Refused as error:
            CHECKS.labels("refused").inc()
            await self._apply(
                payment,
                PaymentEvent.REJECTED,
                Evidence(f"resolver.refused_http_{error.status}", f"{provider}:inquiry:{key}"),
            )
            return
        if answer is None:
            CHECKS.labels("not_found").inc()  # PENDING, yet the provider has no such payment
            await self._later(payment, f"{provider} has no payment with key {key}, though it said pending")
            return
        await self._apply_answer(payment, answer)

    async def _apply_answer(self, payment: _Claimed, answer: ProviderPayment) -> None:
        provider = self._gateway.provider
        try:
            event = event_for(provider, answer.status)
        except UnknownProviderStatus as error:
            await self._later(payment, str(error))
            return
        evidence = Evidence(
            "resolver.inquiry",
            f"{provider}:{answer.provider_payment_id}",
            provider=provider,
            provider_status=answer.status,
            provider_payment_id=answer.provider_payment_id,
        )
        await self._apply(payment, event, evidence)
        CHECKS.labels("still_pending" if event is PaymentEvent.ACCEPTED else "decided").inc()
        if event is PaymentEvent.ACCEPTED:
            await self._later(payment, f"{provider} still says {answer.status}")

    async def _apply(self, payment: _Claimed, event: PaymentEvent, evidence: Evidence) -> None:
        async def work(connection: asyncpg.Connection) -> None:
            await apply_provider_evidence(connection, payment.id, event, evidence)

        await in_transaction(self._database, Budget.within(10), work)
        log.info("resolver.applied", payment_id=str(payment.id), payment_event=event.value, evidence=evidence.reference)

    async def _later(self, payment: _Claimed, reason: str) -> None:
        """Check again after a backoff; after checks_max, stop and open a case for a person."""

        async def work(connection: asyncpg.Connection) -> None:
            if payment.attempts < self._settings.checks_max:
                await connection.execute(
                    "UPDATE payments SET next_check_at = now() + make_interval(secs => $2::float8)"
                    " WHERE id = $1 AND state IN ('UNKNOWN', 'PENDING')",
                    payment.id,
                    self._settings.backoff_s(payment.attempts),
                )
                return
            await connection.execute(
                "UPDATE payments SET next_check_at = 'infinity' WHERE id = $1 AND state IN ('UNKNOWN', 'PENDING')",
                payment.id,
            )
            await cases_repository.open_case(
                connection,
                UNRESOLVED_CASE,
                "payment_id",
                payment.id,
                f"payment {payment.id} stayed {payment.state.value} after {payment.attempts} checks: {reason}",
                [{"checks": payment.attempts, "last_reason": reason[:500]}],
            )
            log.warning("resolver.gave_up", payment_id=str(payment.id), checks=payment.attempts, reason=reason)

        await in_transaction(self._database, Budget.within(10), work)
