"""Order use cases: submit, read, modify and close legs (from the API), and the moves the venue's
answers make (acknowledge, reject, fill, confirm or refuse a modification) once venue_events has held
them to the leg.

Every change runs in one transaction under the leg's row lock and writes the leg transition, the
outbox event and the audit entry with it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from server.db import orders_repository, venue_instructions_repository
from server.db.database import Budget, Database, in_transaction
from server.db.idempotency_repository import claim_key

# results of these use cases, as the handlers read them
from server.db.orders_repository import LegRecord as LegRecord
from server.db.orders_repository import ModificationRecord as ModificationRecord
from server.db.orders_repository import OrderRecord as OrderRecord
from server.db.outbox_writer import append_audit, write_event
from server.domain.errors import NotFound
from server.domain.identity import Principal, readable_client
from server.domain.order_legs import (
    LEG_MACHINE,
    REASON_LENGTH_MAX,
    Fill,
    FillError,
    Leg,
    LegState,
    ModificationStatus,
    answer_modification,
    apply_fill,
    check_venue_state,
)
from server.domain.orders import (
    CLOSE_LEG_OPERATION,
    MODIFY_LEG_OPERATION,
    SUBMIT_ORDER_OPERATION,
    CloseLeg,
    ModifyLeg,
    SubmitOrder,
    check_modification,
    check_modification_fits_type,
)
from server.services.paging import LIST_PAGE, decode_cursor, encode_cursor

ORDER_SUBMITTED = "orders.submitted"
LEG_STATE_CHANGED = "orders.leg_state_changed"
LEG_FILLED = "orders.leg_filled"


@dataclass(frozen=True)
class OrderResult:
    order: OrderRecord
    replayed: bool


@dataclass(frozen=True)
class LegResult:
    leg: LegRecord
    replayed: bool


async def submit_order(database: Database, principal: Principal, request: SubmitOrder, budget: Budget) -> OrderResult:
    async def work(connection: asyncpg.Connection) -> OrderResult:
        claimed = await claim_key(
            connection,
            principal.client_id,
            request.idempotency_key,
            SUBMIT_ORDER_OPERATION,
            request.fingerprint(),
            uuid.uuid4(),
        )
        if not claimed.replayed:
            order_id = claimed.resource_id
            await orders_repository.insert_order(
                connection,
                order_id,
                principal.client_id,
                request.idempotency_key,
                request.client_order_reference,
                request.legs,
            )
            event = {
                "type": ORDER_SUBMITTED,
                "order_id": str(order_id),
                "client_id": principal.client_id,
                "legs": len(request.legs),
            }
            await write_event(connection, ORDER_SUBMITTED, str(order_id), event)
            await append_audit(connection, "order", str(order_id), ORDER_SUBMITTED, principal.client_id, event)
        order = await orders_repository.get_order(connection, principal.client_id, claimed.resource_id)
        if order is None:  # the key names an order of this client, written in the same transaction or before
            raise NotFound("order", str(claimed.resource_id))
        return OrderResult(order, claimed.replayed)

    return await in_transaction(database, budget, work)


async def get_order(database: Database, principal: Principal, order_id: uuid.UUID, budget: Budget) -> OrderRecord:
    async with database.connection(budget) as connection:
        order = await orders_repository.get_order(connection, readable_client(principal), order_id)
    if order is None:
        raise NotFound("order", str(order_id))
    return order


@dataclass(frozen=True)
class OrderPage:
    orders: list[OrderRecord]
    has_more: bool

    @staticmethod
    def token_after(last: OrderRecord) -> str:
        return encode_cursor(last.created_at, last.id)

    @property
    def next_page_token(self) -> str:
        return self.token_after(self.orders[-1]) if self.has_more else ""


async def list_orders(
    database: Database, principal: Principal, *, page_size: int, page_token: str, budget: Budget
) -> OrderPage:
    limit = LIST_PAGE.limit(page_size)
    after = decode_cursor(page_token, "ListOrders") if page_token else None
    async with database.connection(budget) as connection:
        orders = await orders_repository.list_orders(connection, readable_client(principal), after, limit + 1)
    return OrderPage(orders[:limit], has_more=len(orders) > limit)


async def _change_leg_state(
    connection: asyncpg.Connection,
    leg: LegRecord,
    to_state: LegState,
    cause: str,
    evidence_ref: str,
    actor: str,
    extra: dict[str, str] | None = None,
) -> None:
    LEG_MACHINE.check(leg.state, to_state, subject=f"leg {leg.id}")
    await orders_repository.insert_leg_transition(connection, leg.id, leg.state, to_state, cause, evidence_ref)
    event = {
        "type": LEG_STATE_CHANGED,
        "order_id": str(leg.order_id),
        "leg_id": str(leg.id),
        "from_state": leg.state.value,
        "to_state": to_state.value,
        "cause": cause,
        "evidence_ref": evidence_ref,
    } | (extra or {})
    await write_event(connection, LEG_STATE_CHANGED, str(leg.id), event)
    await append_audit(connection, "leg", str(leg.id), LEG_STATE_CHANGED, actor, event)


async def _client_leg(
    connection: asyncpg.Connection, principal: Principal, order_id: uuid.UUID, leg_id: uuid.UUID
) -> LegRecord:
    leg = await orders_repository.lock_leg(connection, leg_id, client_id=principal.client_id, order_id=order_id)
    if leg is None:
        raise NotFound("leg", f"{order_id}/{leg_id}")
    return leg


async def _reread(connection: asyncpg.Connection, leg_id: uuid.UUID) -> LegRecord:
    leg = await orders_repository.lock_leg(connection, leg_id)
    if leg is None:  # legs are never deleted
        raise NotFound("leg", str(leg_id))
    return leg


async def modify_leg(database: Database, principal: Principal, request: ModifyLeg, budget: Budget) -> LegResult:
    """A cancel/replace of the leg's order at the venue: the leg goes MODIFYING under its old terms,
    and the modification is queued for the venue with it; the venue's answer comes later.

    Checks run in the order a caller can act on: what no leg of its type takes (INVALID_ARGUMENT),
    the key (a replay, or FAILED_PRECONDITION for a reused key), then the leg as it stands: its state
    (FAILED_PRECONDITION) and the terms it can take (INVALID_ARGUMENT). A refusal keeps no key.
    """

    async def work(connection: asyncpg.Connection) -> LegResult:
        leg = await _client_leg(connection, principal, request.order_id, request.leg_id)
        check_modification_fits_type(request, leg.spec.order_type)
        claimed = await claim_key(
            connection,
            principal.client_id,
            request.idempotency_key,
            MODIFY_LEG_OPERATION,
            request.fingerprint(),
            leg.id,
        )
        if claimed.replayed:
            return LegResult(leg, replayed=True)
        check_modification(request, leg.state, leg.spec, leg.filled_quantity, f"leg {leg.id}")
        terms = {"quantity": request.new_quantity, "limit_price": request.new_limit_price}
        asked = {name: format(value, "f") for name, value in terms.items() if value is not None}
        modification_id = await queue_venue_instruction(connection, leg.id, "modify", asked)
        await orders_repository.record_modification(
            connection, leg.id, modification_id, request.idempotency_key, request.new_quantity, request.new_limit_price
        )
        evidence = f"api:{principal.client_id}:{request.idempotency_key}"
        await _change_leg_state(
            connection,
            leg,
            LegState.MODIFYING,
            "api.modify_leg",
            evidence,
            principal.client_id,
            {"modification_id": str(modification_id)} | {f"new_{name}": value for name, value in asked.items()},
        )
        return LegResult(await _reread(connection, leg.id), replayed=False)

    return await in_transaction(database, budget, work)


async def close_leg(database: Database, principal: Principal, request: CloseLeg, budget: Budget) -> LegResult:
    async def work(connection: asyncpg.Connection) -> LegResult:
        leg = await _client_leg(connection, principal, request.order_id, request.leg_id)
        claimed = await claim_key(
            connection, principal.client_id, request.idempotency_key, CLOSE_LEG_OPERATION, request.fingerprint(), leg.id
        )
        if claimed.replayed:
            return LegResult(leg, replayed=True)
        await orders_repository.set_state_reason(connection, leg.id, request.reason)
        await orders_repository.end_modification(
            connection, leg.id, ModificationStatus.CANCELED, "the leg was closed before the venue answered"
        )
        evidence = f"api:{principal.client_id}:{request.idempotency_key}"
        await _change_leg_state(
            connection, leg, LegState.CLOSED, "api.close_leg", evidence, principal.client_id, {"reason": request.reason}
        )
        if leg.state is not LegState.REJECTED:  # a rejected leg has nothing at the venue to cancel
            await queue_venue_instruction(connection, leg.id, "cancel", {})
        return LegResult(await _reread(connection, leg.id), replayed=False)

    return await in_transaction(database, budget, work)


async def queue_venue_instruction(
    connection: asyncpg.Connection, leg_id: uuid.UUID, kind: str, body: dict[str, str]
) -> uuid.UUID:
    """Queue what the venue must be told, in the transaction that decided it: it cannot be lost, and it
    is sent (and resent) by the instruction sender under its own id as the venue's idempotency key."""
    return await venue_instructions_repository.queue(connection, leg_id, kind, body)


# --- the venue's side: the moves its evidence makes, in the caller's transaction ------------------------
# Called by venue_events.apply_venue_report only, which first holds each report to the leg (its ids,
# terms and fills) and turns a refusal into a case: webhooks, the leg resolver, the instruction sender
# and the tests all apply a venue's word through it.


async def venue_state_on(
    connection: asyncpg.Connection, leg_id: uuid.UUID, to_state: LegState, evidence_ref: str, reason: str = ""
) -> LegRecord:
    """The venue acknowledged (PENDING), rejected (REJECTED) or closed (CLOSED) the leg's order. Raises
    IllegalTransition or FillError before writing.

    A pending modification ends with the order (CANCELED): the venue will not answer it."""
    leg = await _reread(connection, leg_id)
    if leg.state is to_state:
        return leg  # the venue repeating itself
    check_venue_state(leg.state, to_state, subject=f"leg {leg.id}", filled=leg.filled_quantity)
    if reason:
        await orders_repository.set_state_reason(connection, leg.id, reason[:REASON_LENGTH_MAX])
    if leg.state is LegState.MODIFYING:
        why = f"the venue {'rejected' if to_state is LegState.REJECTED else 'closed'} the order before answering"
        await orders_repository.end_modification(connection, leg.id, ModificationStatus.CANCELED, why)
    await _change_leg_state(connection, leg, to_state, "venue", evidence_ref, "venue")
    return await _reread(connection, leg.id)


async def modification_answer_on(
    connection: asyncpg.Connection, leg_id: uuid.UUID, confirmed: bool, evidence_ref: str, reason: str = ""
) -> LegRecord:
    """The venue confirmed (`confirmed`) or refused the leg's pending modification: a confirmation puts the
    modification's terms in force, a refusal keeps the old ones; either way the leg leaves MODIFYING for
    what its fills say under the terms then in force. Raises FillError (no modification waiting, or a
    confirmed quantity below what has filled) before writing."""
    leg = await _reread(connection, leg_id)
    asked = leg.modification
    if asked is None or asked.status is not ModificationStatus.PENDING:
        raise FillError(f"leg {leg.id}: no modification is waiting for the venue's answer")
    quantity = leg.spec.quantity
    if confirmed and asked.quantity is not None:
        quantity = asked.quantity
    domain_leg = Leg(leg.spec.quantity, leg.state, leg.filled_quantity, leg.fill_notional)
    to_state = answer_modification(domain_leg, quantity, subject=f"leg {leg.id}")
    if confirmed:
        await orders_repository.confirm_modification(connection, leg.id)
    else:
        why = reason or "the venue refused the modification"
        await orders_repository.end_modification(connection, leg.id, ModificationStatus.REFUSED, why)
    outcome = ModificationStatus.CONFIRMED if confirmed else ModificationStatus.REFUSED
    cause = f"venue.modification_{outcome.value.lower()}"
    extra = {"modification_id": str(asked.id), "modification": outcome.value, "quantity": format(quantity, "f")}
    await _change_leg_state(connection, leg, to_state, cause, evidence_ref, "venue", extra)
    return await _reread(connection, leg.id)


async def fill_on(
    connection: asyncpg.Connection, leg_id: uuid.UUID, fill: Fill, fill_time: datetime, evidence_ref: str
) -> LegRecord:
    """A venue execution, applied once: a repeated execution id changes nothing. Raises IllegalTransition or
    FillError before writing."""
    leg = await _reread(connection, leg_id)
    if await orders_repository.has_fill(connection, leg.id, fill.execution_id):
        return leg
    domain_leg = Leg(leg.spec.quantity, leg.state, leg.filled_quantity, leg.fill_notional)
    after = apply_fill(domain_leg, fill, subject=f"leg {leg.id}")
    await orders_repository.insert_fill(
        connection, leg.id, fill.execution_id, fill.quantity, fill.price, fill_time, evidence_ref
    )
    await _change_leg_state(
        connection,
        leg,
        after.state,
        "venue.fill",
        evidence_ref,
        "venue",
        {
            "execution_id": fill.execution_id,
            "quantity": format(fill.quantity, "f"),
            "price": format(fill.price, "f"),
        },
    )
    return await _reread(connection, leg.id)
