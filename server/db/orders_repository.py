"""SQL for orders, legs and fills (asyncpg). Orders are read with their legs and fills in two queries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from server.domain.order_legs import REASON_LENGTH_MAX, LegState, ModificationStatus
from server.domain.orders import LegSpec, OrderType, Side


@dataclass(frozen=True)
class FillRecord:
    execution_id: str
    quantity: Decimal
    price: Decimal
    fill_time: datetime


@dataclass(frozen=True)
class ModificationRecord:
    """A leg's latest modification: what it asked and what became of it."""

    #: its id: the venue instruction's, sent as the venue's idempotency key
    id: uuid.UUID
    #: the ModifyLeg key that asked it
    idempotency_key: str
    #: the new total quantity and limit price asked; None where the call kept the one in force
    quantity: Decimal | None
    limit_price: Decimal | None
    status: ModificationStatus
    reason: str


@dataclass(frozen=True)
class LegRecord:
    id: uuid.UUID
    order_id: uuid.UUID
    position: int
    spec: LegSpec
    state: LegState
    state_reason: str
    filled_quantity: Decimal
    fill_notional: Decimal
    created_at: datetime
    updated_at: datetime
    #: the latest FILLS_LISTED_MAX fills, oldest first
    fills: tuple[FillRecord, ...] = ()
    #: how many fills the leg has in all
    fill_count: int = 0
    #: the latest modification asked of the leg; None if none was
    modification: ModificationRecord | None = None


#: Fills read with an order, per leg: a venue may report thousands, and an answer must stay sendable.
FILLS_LISTED_MAX = 500


@dataclass(frozen=True)
class OrderRecord:
    id: uuid.UUID
    client_id: str
    idempotency_key: str
    client_order_reference: str
    created_at: datetime
    legs: tuple[LegRecord, ...]

    @property
    def updated_at(self) -> datetime:
        return max([self.created_at, *(leg.updated_at for leg in self.legs)])


_LEG_COLUMNS = (
    "l.id, l.order_id, l.position, l.instrument_symbol, l.side, l.order_type, l.quantity, l.limit_price,"
    " l.currency_code, l.state, l.state_reason, l.filled_quantity, l.fill_notional, l.created_at, l.updated_at,"
    " l.modification_id, l.modification_idempotency_key, l.requested_quantity, l.requested_limit_price,"
    " l.modification_status, l.modification_reason"
)


def _leg(row: asyncpg.Record, fills: tuple[FillRecord, ...] = (), fill_count: int = 0) -> LegRecord:
    return LegRecord(
        id=row["id"],
        order_id=row["order_id"],
        position=row["position"],
        spec=LegSpec(
            row["instrument_symbol"],
            Side(row["side"]),
            row["quantity"],
            OrderType(row["order_type"]),
            row["limit_price"],
            row["currency_code"],
        ),
        state=LegState(row["state"]),
        state_reason=row["state_reason"],
        filled_quantity=row["filled_quantity"],
        fill_notional=row["fill_notional"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        fills=fills,
        fill_count=fill_count,
        modification=None
        if row["modification_id"] is None
        else ModificationRecord(
            row["modification_id"],
            row["modification_idempotency_key"],
            row["requested_quantity"],
            row["requested_limit_price"],
            ModificationStatus(row["modification_status"]),
            row["modification_reason"],
        ),
    )


async def insert_order(
    connection: asyncpg.Connection,
    order_id: uuid.UUID,
    client_id: str,
    idempotency_key: str,
    client_order_reference: str,
    legs: tuple[LegSpec, ...],
) -> None:
    await connection.execute(
        "INSERT INTO orders (id, client_id, idempotency_key, client_order_reference) VALUES ($1, $2, $3, $4)",
        order_id,
        client_id,
        idempotency_key,
        client_order_reference,
    )
    await connection.execute(
        """
        INSERT INTO legs (id, order_id, position, instrument_symbol, side, order_type, quantity, limit_price,
                          currency_code, state)
        SELECT id, $1, position, symbol, side, order_type, quantity, limit_price, currency_code, 'SUBMITTED'
        FROM unnest($2::uuid[], $3::smallint[], $4::text[], $5::text[], $6::text[], $7::numeric[], $8::numeric[],
                    $9::text[])
             AS leg(id, position, symbol, side, order_type, quantity, limit_price, currency_code)
        """,
        order_id,
        [uuid.uuid4() for _ in legs],
        list(range(1, len(legs) + 1)),
        [leg.instrument_symbol for leg in legs],
        [leg.side.value for leg in legs],
        [leg.order_type.value for leg in legs],
        [leg.quantity for leg in legs],
        [leg.limit_price for leg in legs],
        [leg.currency_code for leg in legs],
    )


async def fetch_orders(connection: asyncpg.Connection, order_rows: list[asyncpg.Record]) -> list[OrderRecord]:
    """Attach legs and fills to order rows: two queries whatever the number of orders."""
    order_ids = [row["id"] for row in order_rows]
    leg_rows = await connection.fetch(
        f"SELECT {_LEG_COLUMNS} FROM legs l WHERE l.order_id = ANY($1) ORDER BY l.order_id, l.position", order_ids
    )
    fill_rows = await connection.fetch(
        """
        SELECT leg_id, execution_id, quantity, price, fill_time, fill_count FROM (
            SELECT f.leg_id, f.execution_id, f.quantity, f.price, f.fill_time, f.recorded_at,
                   row_number() OVER (PARTITION BY f.leg_id ORDER BY f.fill_time DESC, f.recorded_at DESC) AS newest,
                   count(*) OVER (PARTITION BY f.leg_id) AS fill_count
            FROM leg_fills f JOIN legs l ON l.id = f.leg_id WHERE l.order_id = ANY($1)
        ) AS ranked
        WHERE newest <= $2
        ORDER BY leg_id, fill_time, recorded_at
        """,
        order_ids,
        FILLS_LISTED_MAX,
    )
    fills: dict[uuid.UUID, list[FillRecord]] = {}
    fill_counts: dict[uuid.UUID, int] = {}
    for row in fill_rows:
        fills.setdefault(row["leg_id"], []).append(
            FillRecord(row["execution_id"], row["quantity"], row["price"], row["fill_time"])
        )
        fill_counts[row["leg_id"]] = row["fill_count"]
    legs: dict[uuid.UUID, list[LegRecord]] = {}
    for row in leg_rows:
        leg_id = row["id"]
        legs.setdefault(row["order_id"], []).append(_leg(row, tuple(fills.get(leg_id, ())), fill_counts.get(leg_id, 0)))
    return [
        OrderRecord(
            row["id"],
            row["client_id"],
            row["idempotency_key"],
            row["client_order_reference"],
            row["created_at"],
            tuple(legs.get(row["id"], ())),
        )
        for row in order_rows
    ]


_ORDER_COLUMNS = "id, client_id, idempotency_key, client_order_reference, created_at"


async def get_order(connection: asyncpg.Connection, client_id: str | None, order_id: uuid.UUID) -> OrderRecord | None:
    """The order, if it is `client_id`'s (None: whoever's it is)."""
    row = await connection.fetchrow(
        f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = $1 AND ($2::text IS NULL OR client_id = $2)",
        order_id,
        client_id,
    )
    return None if row is None else (await fetch_orders(connection, [row]))[0]


async def list_orders(
    connection: asyncpg.Connection, client_id: str | None, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[OrderRecord]:
    """A page of `client_id`'s orders (None: every client's), newest first."""
    after_time, after_id = after if after is not None else (None, None)
    # one statement per scope, each keeping a plan on its own index
    whose = "client_id = $1" if client_id is not None else "$1::text IS NULL"
    rows = await connection.fetch(
        f"""
        SELECT {_ORDER_COLUMNS} FROM orders
        WHERE {whose} AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
        ORDER BY created_at DESC, id DESC LIMIT $4
        """,
        client_id,
        after_time,
        after_id,
        limit,
    )
    return await fetch_orders(connection, list(rows))


async def lock_leg(
    connection: asyncpg.Connection,
    leg_id: uuid.UUID,
    *,
    client_id: str | None = None,
    order_id: uuid.UUID | None = None,
) -> LegRecord | None:
    """The leg, locked FOR UPDATE until the transaction ends; None unless it is of the client and order given."""
    row = await connection.fetchrow(
        f"""
        SELECT {_LEG_COLUMNS} FROM legs l JOIN orders o ON o.id = l.order_id
        WHERE l.id = $1 AND ($2::text IS NULL OR o.client_id = $2) AND ($3::uuid IS NULL OR o.id = $3)
        FOR UPDATE OF l
        """,
        leg_id,
        client_id,
        order_id,
    )
    return None if row is None else _leg(row)


async def insert_leg_transition(
    connection: asyncpg.Connection,
    leg_id: uuid.UUID,
    from_state: LegState,
    to_state: LegState,
    cause: str,
    evidence_ref: str,
) -> None:
    await connection.execute(
        "INSERT INTO leg_transitions (leg_id, from_state, to_state, cause, evidence_ref) VALUES ($1, $2, $3, $4, $5)",
        leg_id,
        from_state.value,
        to_state.value,
        cause,
        evidence_ref,
    )


async def set_state_reason(connection: asyncpg.Connection, leg_id: uuid.UUID, reason: str) -> None:
    """Why the leg is in its state (the reason it was closed for, the venue's for rejecting it)."""
    await connection.execute("UPDATE legs SET state_reason = $2 WHERE id = $1", leg_id, reason)


async def record_venue_order_id(connection: asyncpg.Connection, leg_id: uuid.UUID, venue_order_id: str) -> None:
    """The venue's id for the leg's order, kept the first time the venue names one."""
    await connection.execute("UPDATE legs SET venue_order_id = $2 WHERE id = $1", leg_id, venue_order_id)


async def leg_state(connection: asyncpg.Connection, leg_id: uuid.UUID) -> LegState | None:
    state = await connection.fetchval("SELECT state FROM legs WHERE id = $1", leg_id)
    return None if state is None else LegState(state)


async def has_fill(connection: asyncpg.Connection, leg_id: uuid.UUID, execution_id: str) -> bool:
    """Was this execution applied to the leg already?"""
    seen = await connection.fetchval(
        "SELECT true FROM leg_fills WHERE leg_id = $1 AND execution_id = $2", leg_id, execution_id
    )
    return bool(seen)


async def insert_fill(
    connection: asyncpg.Connection,
    leg_id: uuid.UUID,
    execution_id: str,
    quantity: Decimal,
    price: Decimal,
    fill_time: datetime,
    evidence_ref: str,
) -> None:
    """A venue execution, kept once per execution id (the legs' fill trigger adds it to the leg's totals)."""
    await connection.execute(
        "INSERT INTO leg_fills (leg_id, execution_id, quantity, price, fill_time, evidence_ref)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        leg_id,
        execution_id,
        quantity,
        price,
        fill_time,
        evidence_ref,
    )


@dataclass(frozen=True)
class LegTerms:
    """What a venue's report about a leg is held against: the terms of the leg's order at the venue, and
    the modification waiting for the venue's answer."""

    venue_order_id: str | None
    instrument_symbol: str
    side: str
    currency_code: str
    quantity: Decimal
    limit_price: Decimal | None
    #: the latest modification asked (None if none was), and whether it is still waiting for its answer
    modification_id: uuid.UUID | None
    modification_pending: bool
    #: the new quantity and limit price it asked; None where it kept the one in force
    requested_quantity: Decimal | None
    requested_limit_price: Decimal | None


_LOCK_LEG_TERMS = """
SELECT venue_order_id, instrument_symbol, side, currency_code, quantity, limit_price, modification_id,
       modification_status = 'PENDING' AS modification_pending, requested_quantity, requested_limit_price
FROM legs WHERE id = $1 FOR UPDATE
"""


async def lock_leg_terms(connection: asyncpg.Connection, leg_id: uuid.UUID) -> LegTerms | None:
    """The leg's terms, its row locked until the caller's transaction ends; None if there is no such leg."""
    row = await connection.fetchrow(_LOCK_LEG_TERMS, leg_id)
    if row is None:
        return None
    return LegTerms(
        row["venue_order_id"],
        row["instrument_symbol"],
        row["side"],
        row["currency_code"],
        row["quantity"],
        row["limit_price"],
        row["modification_id"],
        bool(row["modification_pending"]),
        row["requested_quantity"],
        row["requested_limit_price"],
    )


async def record_modification(
    connection: asyncpg.Connection,
    leg_id: uuid.UUID,
    modification_id: uuid.UUID,
    idempotency_key: str,
    quantity: Decimal | None,
    limit_price: Decimal | None,
) -> None:
    """The leg's latest modification, PENDING: asked, not yet answered by the venue."""
    await connection.execute(
        "UPDATE legs SET modification_id = $2, modification_idempotency_key = $3, requested_quantity = $4,"
        " requested_limit_price = $5, modification_status = 'PENDING', modification_reason = '' WHERE id = $1",
        leg_id,
        modification_id,
        idempotency_key,
        quantity,
        limit_price,
    )


async def confirm_modification(connection: asyncpg.Connection, leg_id: uuid.UUID) -> None:
    """The pending modification's terms are in force (legs_guard allows it while the leg is MODIFYING)."""
    await connection.execute(
        "UPDATE legs SET quantity = coalesce(requested_quantity, quantity),"
        " limit_price = coalesce(requested_limit_price, limit_price), modification_status = 'CONFIRMED'"
        " WHERE id = $1 AND modification_status = 'PENDING'",
        leg_id,
    )


async def end_modification(
    connection: asyncpg.Connection, leg_id: uuid.UUID, status: ModificationStatus, reason: str
) -> None:
    """The pending modification, if there is one, ended without changing the terms in force."""
    await connection.execute(
        "UPDATE legs SET modification_status = $2, modification_reason = $3"
        " WHERE id = $1 AND modification_status = 'PENDING'",
        leg_id,
        status.value,
        reason[:REASON_LENGTH_MAX],
    )
