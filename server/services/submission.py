"""Sending a recorded payment to its provider and applying what comes back, honestly.

The first transaction (the payment and its key) has committed before this runs. A definite answer
is applied as evidence through the state machine; a request that may have reached the provider
without an answer makes the payment UNKNOWN (the resolver asks the provider later); a request that
never left leaves it RECORDED and tells the caller to retry, which sends it with the same key.

A payment is sent only while it is RECORDED, and each attempt is stamped first (`submitted_at`, for a
new payment its creation) under the payment's row lock: an abandoned payment expires only when no
attempt began for `BALLAST_PAYMENT_EXPIRY_MS` and the provider, asked, does not have it; once
EXPIRED, a retry with its key is answered EXPIRED and never sent late (server/services/payment_resolver.py).
"""

from __future__ import annotations

import asyncpg
import structlog

from server.db import payments_repository
from server.db.database import Budget, Database, in_transaction
from server.db.payments_repository import PaymentRecord
from server.domain.errors import NotFound, ProviderUnavailable
from server.domain.identity import Principal
from server.domain.payment_states import PaymentEvent, PaymentState, Witness
from server.domain.payments import CreatePayment
from server.domain.provider_status import UnknownProviderStatus, event_for
from server.failpoints import failpoint
from server.providers.gateway import GatewayClient, NotSent, OutcomeUnknown, Refused
from server.services import payments
from server.services.outliving import outlive
from server.services.payment_events import Evidence, apply_provider_evidence
from server.services.payments import CreatePaymentResult

log = structlog.get_logger(__name__)

#: Kept back from the caller's deadline for writing the outcome after the provider answers.
OUTCOME_WRITE_RESERVE_S = 0.1
#: The outcome is written even after the caller's deadline passed: its own limit.
OUTCOME_WRITE_TIMEOUT_S = 5.0


async def create_and_submit(
    database: Database, gateway: GatewayClient | None, principal: Principal, request: CreatePayment, budget: Budget
) -> CreatePaymentResult:
    """CreatePayment: record it once per key, then send it unless it was sent before.

    A payment recorded earlier and never sent (the provider was not asked) is sent by the retry.
    Without a gateway (a development server with no provider) it stays RECORDED.
    """
    result = await payments.create_payment(database, principal, request, budget)
    if gateway is None or result.payment.state is not PaymentState.RECORDED:
        return result
    if result.replayed:  # a retry: stamp the attempt, unless the payment moved on (expired, or sent)
        async with database.connection(budget) as connection:
            moved_on = await payments_repository.stamp_submission(
                connection, result.payment.id, timeout_s=budget.remaining_s()
            )
        if moved_on is not None:
            return CreatePaymentResult(moved_on, replayed=True)
    return CreatePaymentResult(await submit_payment(database, gateway, result.payment, budget), result.replayed)


async def submit_payment(
    database: Database, gateway: GatewayClient, payment: PaymentRecord, budget: Budget
) -> PaymentRecord:
    """Send `payment` (RECORDED) to the provider; the payment as it stands afterwards.

    Raises ProviderUnavailable when the provider was not asked (breaker open, connection refused,
    rate limited): the payment is still RECORDED and a retry with the same key sends it.
    """
    provider = gateway.provider
    # the provider's idempotency key and the reference it reports are Ballast's own payment id
    key = str(payment.id)
    failpoint("submission.before_provider_call")
    try:
        answer = await gateway.create_payment(
            key,
            payment.amount.amount,
            payment.amount.currency_code,
            key,
            timeout_s=budget.remaining_s() - OUTCOME_WRITE_RESERVE_S,
        )
    except NotSent as error:
        failpoint("submission.after_provider_answer")
        log.info("provider.not_sent", payment_id=key, provider=provider, reason=error.reason)
        raise ProviderUnavailable(provider, error.reason, error.retry_after_s) from None
    except OutcomeUnknown as error:
        failpoint("submission.after_provider_answer")
        log.warning("provider.outcome_unknown", payment_id=key, provider=provider, reason=str(error))
        event = PaymentEvent.OUTCOME_UNKNOWN
        evidence = Evidence("provider.no_answer", f"{provider}:create:{key}", witness=Witness.BALLAST)
    except Refused as error:
        failpoint("submission.after_provider_answer")
        event = PaymentEvent.REJECTED
        evidence = Evidence(f"provider.refused_http_{error.status}", f"{provider}:create:{key}")
    else:
        failpoint("submission.after_provider_answer")
        try:
            event = event_for(provider, answer.status)
        except UnknownProviderStatus:
            # it answered, in words Ballast cannot read: whether it took the money is unknown (never guessed);
            # the resolver asks again, and the word is kept in the evidence reference
            log.warning("provider.unknown_status", payment_id=key, provider=provider, status=answer.status[:64])
            await _record(
                database,
                payment,
                PaymentEvent.OUTCOME_UNKNOWN,
                Evidence(
                    "provider.unknown_status", f"{provider}:create:{key}:{answer.status[:64]}", witness=Witness.BALLAST
                ),
            )
            return await _reread(database, payment)
        evidence = Evidence.of_api_answer("provider.response", provider, answer)
    await _record(database, payment, event, evidence)
    return await _reread(database, payment)


async def _record(database: Database, payment: PaymentRecord, event: PaymentEvent, evidence: Evidence) -> None:
    """Apply the outcome even if the caller gives up meanwhile: what the provider said must not be lost.

    A webhook may have brought news first: then this answer is a repeat, stale, or (if it disagrees
    with a decided outcome) a contradiction that opens a case; none of them is the caller's error.
    """

    async def work(connection: asyncpg.Connection) -> None:
        await apply_provider_evidence(connection, payment.id, event, evidence)
        failpoint("submission.before_outcome_commit")

    await outlive(
        in_transaction(database, Budget.within(OUTCOME_WRITE_TIMEOUT_S), work), f"record payment {payment.id}"
    )


async def _reread(database: Database, payment: PaymentRecord) -> PaymentRecord:
    async with database.connection(Budget.within(OUTCOME_WRITE_TIMEOUT_S)) as connection:
        current = await payments_repository.get_payment(
            connection, payment.client_id, payment.id, timeout_s=OUTCOME_WRITE_TIMEOUT_S
        )
    if current is None:
        raise NotFound("payment", str(payment.id))
    return current
