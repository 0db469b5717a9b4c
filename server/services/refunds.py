"""Refund use cases: RefundPayment (record once per key, then send), GetRefund and ListRefunds.

A refund is recorded in one transaction (its key, the refund counted against its payment, its event)
and then sent to the provider under its own id as the idempotency key, through the same breaker and
budget as payments, its outcome sorted the same way: a definite answer is applied as evidence; a
request that may have reached the provider without an answer makes the refund UNKNOWN (the resolver
asks the provider by that key; server/services/refund_resolver.py); a request that never left leaves
it RECORDED and tells the caller to retry, which sends it under the same key. Nothing is sent twice
under two keys, and nothing is retried blindly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import structlog

from server.db import refunds_repository
from server.db.database import Budget, Database, in_transaction
from server.db.refunds_repository import RefundRecord as RefundRecord  # a result of these use cases
from server.domain.errors import ConcurrencyConflict, IdempotencyKeyReused, NotFound, ProviderUnavailable
from server.domain.identifiers import parse_uuid
from server.domain.identity import Principal, readable_client
from server.domain.payment_states import Witness
from server.domain.provider_status import UnknownProviderStatus, refund_event_for
from server.domain.refund_states import RefundEvent, RefundState
from server.domain.refunds import RefundPayment, refund_terms
from server.failpoints import failpoint
from server.providers.gateway import GatewayClient, NotSent, OutcomeUnknown, Refused, refusal_code
from server.services.outliving import outlive
from server.services.paging import LIST_PAGE, decode_cursor, encode_cursor
from server.services.refund_events import RefundEvidence, apply_refund_evidence

log = structlog.get_logger(__name__)

#: Kept back from the caller's deadline for writing the outcome after the provider answers.
OUTCOME_WRITE_RESERVE_S = 0.1
#: The outcome is written even after the caller's deadline passed: its own limit.
OUTCOME_WRITE_TIMEOUT_S = 5.0
#: PostgreSQL's refusals of a refund another refund (or a move of its payment) got ahead of.
_RACED = frozenset({"ck_payments_refunds_within_amount", "refunds_of_captured_payment"})


@dataclass(frozen=True)
class RefundResult:
    refund: RefundRecord
    #: True when an earlier request with the same key created the refund.
    replayed: bool


async def refund_payment(
    database: Database, gateway: GatewayClient | None, principal: Principal, request: RefundPayment, budget: Budget
) -> RefundResult:
    """RefundPayment: record the refund once per (client, key), then send it unless it was sent before.
    Without a gateway (a development server with no provider) it stays RECORDED."""
    result = await _record(database, principal, request, budget)
    if gateway is None or result.refund.state is not RefundState.RECORDED:
        return result
    if result.replayed:  # a retry: stamp the attempt, unless the refund moved on meanwhile
        async with database.connection(budget) as connection:
            moved_on = await refunds_repository.stamp_submission(
                connection, result.refund.id, timeout_s=budget.remaining_s()
            )
        if moved_on is not None:
            return RefundResult(moved_on, replayed=True)
    return RefundResult(await submit_refund(database, gateway, result.refund, budget), result.replayed)


async def _record(database: Database, principal: Principal, request: RefundPayment, budget: Budget) -> RefundResult:
    """The refund this key stands for, recorded now if the key is new.

    The key is read first: a retry gets its refund back even when nothing is left to refund of the
    payment any more (its own refund took it). A new key's refund is checked against the payment, then
    written; PostgreSQL checks the payment again under its row lock, so a refund that lost a race for
    the same money is told what is left, as if it had come second.
    """
    client_id = principal.client_id
    async with database.connection(budget) as connection:
        existing = await refunds_repository.find_key(
            connection, client_id, request.idempotency_key, timeout_s=budget.remaining_s()
        )
        if existing is None:
            created = await _insert(connection, client_id, request, budget)
            if created is not None:
                return RefundResult(created, replayed=False)
            existing = await refunds_repository.find_key(
                connection, client_id, request.idempotency_key, timeout_s=budget.remaining_s()
            )
    if existing is None:  # the key's row vanished between the two statements (purged): retry afresh
        raise ConcurrencyConflict(f"idempotency_key {request.idempotency_key!r} changed while in use; retry")
    if existing.request_fingerprint != request.fingerprint() or existing.refund is None:
        raise IdempotencyKeyReused(request.idempotency_key, existing.operation)
    return RefundResult(existing.refund, replayed=True)


async def _insert(
    connection: asyncpg.Connection, client_id: str, request: RefundPayment, budget: Budget
) -> RefundRecord | None:
    for _ in range(2):  # a refund that lost a race is checked once more, against the payment as it is now
        payment = await refunds_repository.refundable_payment(
            connection, client_id, request.payment_id, timeout_s=budget.remaining_s()
        )
        if payment is None:
            raise NotFound("payment", str(request.payment_id))
        amount = refund_terms(request, payment)
        try:
            return await refunds_repository.insert_refund_with_key(
                connection, client_id, request, amount, timeout_s=budget.remaining_s()
            )
        except asyncpg.CheckViolationError as error:
            if error.constraint_name not in _RACED:
                raise
    raise ConcurrencyConflict(f"payment {request.payment_id} changed while the refund was recorded; retry")


async def submit_refund(
    database: Database, gateway: GatewayClient, refund: RefundRecord, budget: Budget
) -> RefundRecord:
    """Send `refund` (RECORDED) to the provider; the refund as it stands afterwards.

    Raises ProviderUnavailable when the provider was not asked: the refund is still RECORDED and a
    retry with the same key sends it.
    """
    provider, key = gateway.provider, str(refund.id)
    provider_payment_id = await _provider_payment_id(database, gateway, refund, budget)
    failpoint("refund.before_provider_call")
    try:
        answer = await gateway.create_refund(
            key,
            provider_payment_id,
            refund.amount.amount,
            refund.amount.currency_code,
            refund.reason,
            timeout_s=budget.remaining_s() - OUTCOME_WRITE_RESERVE_S,
        )
    except NotSent as error:
        log.info("provider.refund_not_sent", refund_id=key, provider=provider, reason=error.reason)
        raise ProviderUnavailable(provider, error.reason, error.retry_after_s) from None
    except OutcomeUnknown as error:
        failpoint("refund.after_provider_answer")
        log.warning("provider.refund_outcome_unknown", refund_id=key, provider=provider, reason=str(error))
        event = RefundEvent.OUTCOME_UNKNOWN
        evidence = RefundEvidence("provider.no_answer", f"{provider}:refund:{key}", witness=Witness.BALLAST)
    except Refused as error:
        failpoint("refund.after_provider_answer")
        code = refusal_code(error.body) or "unstated"
        log.warning("provider.refund_refused", refund_id=key, provider=provider, status=error.status, code=code)
        event = RefundEvent.REJECTED
        evidence = RefundEvidence(f"provider.refused_http_{error.status}", f"{provider}:refund:{key}:{code}"[:500])
    else:
        failpoint("refund.after_provider_answer")
        try:
            event = refund_event_for(provider, answer.status)
            evidence = RefundEvidence.of_api_answer("provider.response", provider, answer)
        except UnknownProviderStatus:
            event = RefundEvent.OUTCOME_UNKNOWN
            evidence = RefundEvidence(
                "provider.unknown_status", f"{provider}:refund:{key}:{answer.status[:64]}", witness=Witness.BALLAST
            )
    await _apply(database, refund.id, event, evidence)
    return await _reread(database, refund)


async def _provider_payment_id(database: Database, gateway: GatewayClient, refund: RefundRecord, budget: Budget) -> str:
    """The provider's id of the refund's payment: as Ballast noted it, else asked of the provider by the
    payment's key (its Ballast id). ProviderUnavailable when neither can say: nothing was sent."""
    async with database.connection(budget) as connection:
        noted = await refunds_repository.provider_payment_id_of(
            connection, refund.payment_id, timeout_s=budget.remaining_s()
        )
    if noted is not None:
        return noted
    try:
        found = await gateway.find_payment(str(refund.payment_id), budget.remaining_s() - OUTCOME_WRITE_RESERVE_S)
    except (NotSent, OutcomeUnknown, Refused) as error:
        raise ProviderUnavailable(gateway.provider, f"its id for the payment is unknown: {error}", 1.0) from None
    if found is None:
        raise ProviderUnavailable(gateway.provider, "it has no payment with this payment's key", 1.0)
    return found.provider_payment_id


async def _apply(database: Database, refund_id: uuid.UUID, event: RefundEvent, evidence: RefundEvidence) -> None:
    """Apply the outcome even if the caller gives up meanwhile: what the provider said must not be lost."""

    async def work(connection: asyncpg.Connection) -> None:
        await apply_refund_evidence(connection, refund_id, event, evidence)
        failpoint("refund.before_outcome_commit")

    await outlive(in_transaction(database, Budget.within(OUTCOME_WRITE_TIMEOUT_S), work), f"record refund {refund_id}")


async def _reread(database: Database, refund: RefundRecord) -> RefundRecord:
    async with database.connection(Budget.within(OUTCOME_WRITE_TIMEOUT_S)) as connection:
        current = await refunds_repository.get_refund(
            connection, refund.client_id, refund.id, timeout_s=OUTCOME_WRITE_TIMEOUT_S
        )
    if current is None:
        raise NotFound("refund", str(refund.id))
    return current


def parse_refund_id(raw: str) -> uuid.UUID:
    return parse_uuid(raw, "refund_id")


async def get_refund(database: Database, principal: Principal, refund_id: uuid.UUID, budget: Budget) -> RefundRecord:
    """A refund the caller may read; another client's is NotFound, as if it did not exist."""
    async with database.connection(budget) as connection:
        refund = await refunds_repository.get_refund(
            connection, readable_client(principal), refund_id, timeout_s=budget.remaining_s()
        )
    if refund is None:
        raise NotFound("refund", str(refund_id))
    return refund


@dataclass(frozen=True)
class RefundPage:
    refunds: list[RefundRecord]
    has_more: bool
    payment_id: uuid.UUID

    def token_after(self, last: RefundRecord) -> str:
        return encode_cursor(last.created_at, last.id, str(self.payment_id))

    @property
    def next_page_token(self) -> str:
        return self.token_after(self.refunds[-1]) if self.has_more else ""


async def list_refunds(
    database: Database,
    principal: Principal,
    payment_id: uuid.UUID,
    *,
    page_size: int,
    page_token: str,
    budget: Budget,
) -> RefundPage:
    """A payment's refunds, oldest first; NotFound when the payment is not the caller's to read."""
    limit = LIST_PAGE.limit(page_size)
    after = decode_cursor(page_token, "ListRefunds", str(payment_id)) if page_token else None
    async with database.connection(budget) as connection:
        payment = await refunds_repository.refundable_payment(
            connection, readable_client(principal), payment_id, timeout_s=budget.remaining_s()
        )
        if payment is None:
            raise NotFound("payment", str(payment_id))
        rows = await refunds_repository.list_refunds(
            connection, payment_id, after=after, limit=limit + 1, timeout_s=budget.remaining_s()
        )
    return RefundPage(rows[:limit], has_more=len(rows) > limit, payment_id=payment_id)
