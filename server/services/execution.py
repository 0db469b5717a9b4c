"""Order use cases: submit, read, modify and close legs (from the API), and the venue's answers
(acknowledge, reject, fill, confirm a modification) that later arrive as evidence.

Every change runs in one transaction under the leg's row lock and writes the leg transition, the
outbox event and the audit entry with it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from server.db import orders_repository
from server.db.database import Budget, Database, in_transaction
from server.db.idempotency_repository import claim_key
from server.db.orders_repository import LegRecord, OrderRecord
from server.domain.errors import FieldViolation, InvalidArgument, NotFound
from server.domain.identity import Principal
from server.domain.order_legs import LEG_MACHINE, Fill, Leg, LegState, apply_fill, check_venue_state
from server.domain.orders import (
    CLOSE_LEG_OPERATION,
    MODIFY_LEG_OPERATION,
    SUBMIT_ORDER_OPERATION,
    CloseLeg,
    ModifyLeg,
    OrderType,
    SubmitOrder,
)
from server.outbox.writer import append_audit, write_event
from server.services.paging import decode_cursor, encode_cursor
from server.services.payments import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX

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
        order = await orders_repository.get_order(connection, principal.client_id, order_id)
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
    if not 0 <= page_size <= PAGE_SIZE_MAX:
        raise InvalidArgument(
            [FieldViolation("page_size", f"must be from 0 to {PAGE_SIZE_MAX}; 0 means {PAGE_SIZE_DEFAULT}")]
        )
    limit = page_size or PAGE_SIZE_DEFAULT
    after = decode_cursor(page_token, "ListOrders") if page_token else None
    async with database.connection(budget) as connection:
        orders = await orders_repository.list_orders(connection, principal.client_id, after, limit + 1)
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


def _check_modification_fits(request: ModifyLeg, leg: LegRecord) -> None:
    violations = []
    if request.new_limit_price is not None and leg.spec.order_type is not OrderType.LIMIT:
        violations.append(FieldViolation("new_limit_price", "only a LIMIT leg has a limit price"))
    filled = leg.filled_quantity
    if request.new_quantity is not None and request.new_quantity < filled:
        violations.append(FieldViolation("new_quantity", f"must be at least the filled quantity, {filled}"))
    elif request.new_quantity is not None and leg.state is LegState.FILLED and request.new_quantity != filled:
        # FILLED -> MODIFYING -> FILLED is the only path: a filled leg cannot grow back into a working one.
        violations.append(FieldViolation("new_quantity", f"a filled leg's quantity is what filled, {filled}"))
    if violations:
        raise InvalidArgument(violations)


async def modify_leg(database: Database, principal: Principal, request: ModifyLeg, budget: Budget) -> LegResult:
    """FILLED -> MODIFYING, recording what is asked of the venue; the venue's answer comes later.

    Checks run in the order a caller can act on: the request against the leg (INVALID_ARGUMENT), the
    key (a replay, or FAILED_PRECONDITION for a reused key), then the leg's state (FAILED_PRECONDITION).
    """

    async def work(connection: asyncpg.Connection) -> LegResult:
        leg = await _client_leg(connection, principal, request.order_id, request.leg_id)
        _check_modification_fits(request, leg)
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
        await connection.execute(
            "UPDATE legs SET requested_quantity = $2, requested_limit_price = $3 WHERE id = $1",
            leg.id,
            request.new_quantity,
            request.new_limit_price,
        )
        evidence = f"api:{principal.client_id}:{request.idempotency_key}"
        await _change_leg_state(connection, leg, LegState.MODIFYING, "api.modify_leg", evidence, principal.client_id)
        terms = {"quantity": request.new_quantity, "limit_price": request.new_limit_price}
        await queue_venue_instruction(connection, leg.id, "modify", {k: format(v, "f") for k, v in terms.items() if v})
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
        await connection.execute("UPDATE legs SET state_reason = $2 WHERE id = $1", leg.id, request.reason)
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
    instruction_id = uuid.uuid4()
    await connection.execute(
        "INSERT INTO venue_instructions (id, leg_id, kind, body) VALUES ($1, $2, $3, $4)",
        instruction_id,
        leg_id,
        kind,
        body,
    )
    return instruction_id


# --- the venue's side: evidence applied to legs (called by provider adapters and tests) -----------------


async def apply_venue_state(
    database: Database, leg_id: uuid.UUID, to_state: LegState, evidence_ref: str, budget: Budget, reason: str = ""
) -> LegRecord:
    """The venue acknowledged (PENDING), rejected (REJECTED), closed (CLOSED) or confirmed a modification (FILLED)."""

    async def work(connection: asyncpg.Connection) -> LegRecord:
        return await venue_state_on(connection, leg_id, to_state, evidence_ref, reason)

    return await in_transaction(database, budget, work)


async def venue_state_on(
    connection: asyncpg.Connection, leg_id: uuid.UUID, to_state: LegState, evidence_ref: str, reason: str = ""
) -> LegRecord:
    """apply_venue_state in the caller's transaction. Raises IllegalTransition or FillError before writing."""
    leg = await _reread(connection, leg_id)
    if leg.state is to_state:
        return leg  # the venue repeating itself
    check_venue_state(leg.state, to_state, subject=f"leg {leg.id}")
    if leg.state is LegState.MODIFYING and to_state is LegState.FILLED:
        await connection.execute(
            "UPDATE legs SET quantity = coalesce(requested_quantity, quantity),"
            " limit_price = coalesce(requested_limit_price, limit_price),"
            " requested_quantity = NULL, requested_limit_price = NULL WHERE id = $1",
            leg.id,
        )
    if reason:
        await connection.execute("UPDATE legs SET state_reason = $2 WHERE id = $1", leg.id, reason[:500])
    await _change_leg_state(connection, leg, to_state, "venue", evidence_ref, "venue")
    return await _reread(connection, leg.id)


async def record_fill(
    database: Database, leg_id: uuid.UUID, fill: Fill, fill_time: datetime, evidence_ref: str, budget: Budget
) -> LegRecord:
    """Apply a venue execution once: a repeated execution id changes nothing."""

    async def work(connection: asyncpg.Connection) -> LegRecord:
        return await fill_on(connection, leg_id, fill, fill_time, evidence_ref)

    return await in_transaction(database, budget, work)


async def fill_on(
    connection: asyncpg.Connection, leg_id: uuid.UUID, fill: Fill, fill_time: datetime, evidence_ref: str
) -> LegRecord:
    """record_fill in the caller's transaction. Raises IllegalTransition or FillError before writing."""
    leg = await _reread(connection, leg_id)
    seen = await connection.fetchval(
        "SELECT true FROM leg_fills WHERE leg_id = $1 AND execution_id = $2", leg.id, fill.execution_id
    )
    if seen:
        return leg
    domain_leg = Leg(leg.spec.quantity, leg.state, leg.filled_quantity, leg.fill_notional)
    after = apply_fill(domain_leg, fill, subject=f"leg {leg.id}")
    await connection.execute(
        "INSERT INTO leg_fills (leg_id, execution_id, quantity, price, fill_time, evidence_ref)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        leg.id,
        fill.execution_id,
        fill.quantity,
        fill.price,
        fill_time,
        evidence_ref,
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
