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

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Generic, TypeVar

import asyncpg
import structlog
from prometheus_client import Counter

from server.db import cases_repository, orders_repository
from server.db.database import Budget, Database, in_transaction
from server.domain.order_legs import Fill, LegState
from server.domain.orders import LegSpec
from server.domain.payment_states import PaymentEvent
from server.domain.payments import PaymentState
from server.domain.provider_status import UnknownProviderStatus, VenueReport, event_for, venue_report_for
from server.providers.gateway import GatewayClient, NotSent, OutcomeUnknown, ProviderPayment, Refused
from server.providers.venue import VenueClient, VenueExecution
from server.services.payment_events import Evidence, apply_provider_evidence
from server.services.venue_events import apply_venue_report

log = structlog.get_logger(__name__)

CHECKS = Counter("ballast_resolver_checks", "Resolver checks of undecided payments, by result", ["result"])

UNRESOLVED_CASE = "UNRESOLVED_OUTCOME"


@dataclass(frozen=True)
class ResolverSettings:
    #: An UNKNOWN payment is first checked this long after it became UNKNOWN (the provider may still be working).
    unknown_grace_s: float = 1.0
    #: A PENDING payment is overdue, and checked, when no decision came this long after it became PENDING.
    pending_overdue_s: float = 30.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    #: Checks without a decision before an investigation case is opened (and checks stop).
    checks_max: int = 12
    #: How long a claimed payment is left alone by other workers while this one asks about it.
    lease_s: float = 30.0
    batch_size: int = 20
    provider_timeout_s: float = 5.0
    poll_interval_s: float = 1.0

    def backoff_s(self, attempts: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(attempts - 1, 0)))


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


ClaimedT = TypeVar("ClaimedT")


class _CheckLoop(Generic[ClaimedT]):
    """The shape of every resolver: claim a bounded batch in one short transaction, check each item
    concurrently outside it, and loop (straight on while there is work, else poll)."""

    _database: Database
    _poll_interval_s: float

    async def _claim(self, connection: asyncpg.Connection) -> list[ClaimedT]:
        raise NotImplementedError

    async def _check(self, item: ClaimedT) -> None:
        raise NotImplementedError

    async def run_once(self) -> int:
        """Claim a batch of due items and check each; how many were claimed. Tests call this directly."""
        claimed = await in_transaction(self._database, Budget.within(10), self._claim)
        outcomes = await asyncio.gather(*(self._check(item) for item in claimed), return_exceptions=True)
        for item, outcome in zip(claimed, outcomes, strict=True):
            if isinstance(outcome, Exception):  # its lease runs out and another check comes
                log.warning("resolver.check_failed", item=str(item)[:200], error=repr(outcome)[:300])
        return len(claimed)

    async def run(self, stopping: asyncio.Event) -> None:
        """Check due items until `stopping` is set."""
        while not stopping.is_set():
            try:
                claimed = await self.run_once()
            except Exception as error:  # the database is away: try again at the next poll
                log.warning("resolver.error", error=str(error)[:300])
                claimed = 0
            if claimed == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self._poll_interval_s)


class Resolver(_CheckLoop[_Claimed]):
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


_CLAIM_LEGS = """
WITH due AS (
    SELECT id FROM legs
    WHERE state IN ('SUBMITTED', 'PENDING', 'PARTIALLY_FILLED')
      AND coalesce(
            next_check_at,
            updated_at + make_interval(secs => CASE state WHEN 'SUBMITTED' THEN $2::float8 ELSE $3::float8 END)
          ) <= now()
    ORDER BY coalesce(next_check_at, updated_at)
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE legs l SET next_check_at = now() + make_interval(secs => $4::float8), check_attempts = check_attempts + 1
FROM due WHERE l.id = due.id
RETURNING l.id, l.state, l.check_attempts
"""


@dataclass(frozen=True)
class _ClaimedLeg:
    id: uuid.UUID
    state: LegState
    attempts: int


@dataclass(frozen=True)
class OrderResolverSettings:
    #: A leg still SUBMITTED (its send timed out, or was never answered) is first checked after this.
    submitted_grace_s: float = 2.0
    #: A working leg (PENDING, PARTIALLY_FILLED) is checked this long after its last change, in case
    #: fills were reported by webhooks that never arrived; then with backoff up to working_check_max_s.
    working_check_s: float = 60.0
    working_check_max_s: float = 3600.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    #: Checks of a SUBMITTED leg without an answer before a case is opened (and its checks stop).
    checks_max: int = 12
    lease_s: float = 30.0
    batch_size: int = 20
    provider_timeout_s: float = 5.0
    poll_interval_s: float = 1.0


class OrderResolver(_CheckLoop["_ClaimedLeg"]):
    """The resolver for legs: ask the venue (by the leg's id) what became of legs it may not have told us about.

    A leg the venue never saw, still SUBMITTED, is sent again under the same key. A leg the venue
    has: its status applied, and, when it has fills, each fill the venue lists, once per execution
    id, so fills whose webhooks were dropped are recovered. Working legs are checked again, ever
    less often; a SUBMITTED leg nobody can find out about ends in a case.
    """

    def __init__(self, database: Database, venue: VenueClient, settings: OrderResolverSettings | None = None) -> None:
        self._database = database
        self._venue = venue
        self._settings = settings or OrderResolverSettings()
        self._poll_interval_s = self._settings.poll_interval_s

    async def _claim(self, connection: asyncpg.Connection) -> list[_ClaimedLeg]:
        config = self._settings
        rows = await connection.fetch(
            _CLAIM_LEGS, config.batch_size, config.submitted_grace_s, config.working_check_s, config.lease_s
        )
        return [_ClaimedLeg(row["id"], LegState(row["state"]), row["check_attempts"]) for row in rows]

    async def _check(self, item: _ClaimedLeg) -> None:
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
        except (NotSent, OutcomeUnknown, UnknownProviderStatus) as error:
            CHECKS.labels("leg_no_answer").inc()
            await self._later(leg_id, state, attempts, f"no answer from {venue.provider}: {error}")
            return
        except Refused as error:
            report, executions, answer = VenueReport.REJECTED, [], None
            reason = f"refused by {venue.provider}: HTTP {error.status}"
        else:
            reason = ""
        reference = f"{venue.provider}:{answer.venue_order_id if answer else 'inquiry:' + key}"
        now_state = await self._apply(leg_id, report, executions, reference, reason)
        CHECKS.labels("leg_checked").inc()
        if now_state in (LegState.SUBMITTED, LegState.PENDING, LegState.PARTIALLY_FILLED):
            await self._later(leg_id, now_state, attempts, "still working at the venue")

    async def _spec(self, leg_id: uuid.UUID) -> LegSpec:
        async def read(connection: asyncpg.Connection) -> LegSpec:
            leg = await orders_repository.lock_leg(connection, leg_id)
            if leg is None:
                raise LookupError(f"leg {leg_id} vanished")  # legs are never deleted
            return leg.spec

        return await in_transaction(self._database, Budget.within(10), read)

    async def _apply(
        self,
        leg_id: uuid.UUID,
        report: VenueReport,
        executions: list[VenueExecution],
        reference: str,
        reason: str,
    ) -> LegState:
        """Apply the venue's word: a status, or (for fills) an acknowledgement and then each listed fill."""

        async def work(connection: asyncpg.Connection) -> LegState:
            if report is not VenueReport.FILL:
                await apply_venue_report(connection, leg_id, report, reference, reason=reason)
            else:
                await apply_venue_report(connection, leg_id, VenueReport.ACKNOWLEDGED, reference)
                for execution in executions:
                    fill = Fill(execution.execution_id, execution.quantity, execution.price)
                    await apply_venue_report(
                        connection, leg_id, VenueReport.FILL, reference, fill=fill, fill_time=execution.time
                    )
            state = await connection.fetchval("SELECT state FROM legs WHERE id = $1", leg_id)
            return LegState(state)

        return await in_transaction(self._database, Budget.within(10), work)

    async def _later(self, leg_id: uuid.UUID, state: LegState, attempts: int, reason: str) -> None:
        config = self._settings

        async def work(connection: asyncpg.Connection) -> None:
            if state is not LegState.SUBMITTED:  # working: check again, ever less often, never give up
                delay_s = min(config.working_check_s * 2 ** max(attempts - 1, 0), config.working_check_max_s)
            elif attempts < config.checks_max:
                delay_s = min(config.backoff_base_s * 2 ** max(attempts - 1, 0), config.backoff_max_s)
            else:
                await connection.execute("UPDATE legs SET next_check_at = 'infinity' WHERE id = $1", leg_id)
                await cases_repository.open_case(
                    connection,
                    UNRESOLVED_CASE,
                    "leg_id",
                    leg_id,
                    f"leg {leg_id} stayed SUBMITTED after {attempts} checks: {reason}",
                    [{"checks": attempts, "last_reason": reason[:500]}],
                )
                return
            await connection.execute(
                "UPDATE legs SET next_check_at = now() + make_interval(secs => $2::float8) WHERE id = $1",
                leg_id,
                delay_s,
            )

        await in_transaction(self._database, Budget.within(10), work)
