"""The exposure projection: per account and currency, money in flight (payments not yet decided)
and settled (the account's ledger balance), kept from events by an idempotent consumer.

At every quiet moment (all events consumed) `settled` equals the ledger's balance of the account.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg

from server.domain import events
from server.domain.ledger import merchant_payable

CONSUMER_GROUP = "exposures"
#: States in which a payment's money is in flight: asked for, not yet decided.
OPEN_STATES = frozenset({"RECORDED", "PENDING", "UNKNOWN"})

_ADD = """
INSERT INTO exposures (account, currency_code, in_flight, settled) VALUES ($1, $2, $3, $4)
ON CONFLICT (account, currency_code) DO UPDATE
SET in_flight = exposures.in_flight + EXCLUDED.in_flight,
    settled = exposures.settled + EXCLUDED.settled,
    updated_at = now()
"""


async def _add(
    connection: asyncpg.Connection, account: str, currency: str, in_flight: Decimal, settled: Decimal
) -> None:
    await connection.execute(_ADD, account, currency, in_flight, settled)


async def apply_event(connection: asyncpg.Connection, subject: str, payload: dict[str, Any]) -> None:
    """One event's effect on the projection (inside process_if_new's transaction)."""
    kind = payload.get("type")
    if kind == events.PAYMENT_RECORDED:
        account = merchant_payable(payload["client_id"])
        await _add(connection, account, payload["currency_code"], Decimal(payload["amount"]), Decimal(0))
    elif kind == events.PAYMENT_STATE_CHANGED:
        if payload["from_state"] not in OPEN_STATES and payload["to_state"] in OPEN_STATES:
            # a correction reopened it (an expired payment the provider did take, approved by a person)
            await _add(
                connection,
                merchant_payable(payload["client_id"]),
                payload["currency_code"],
                Decimal(payload["amount"]),
                Decimal(0),
            )
        elif payload["from_state"] in OPEN_STATES and payload["to_state"] not in OPEN_STATES:
            # An update, not an upsert: the payment's recorded event (same aggregate, published first)
            # created the row; a CHECK would refuse a negative row before ON CONFLICT is considered.
            updated = await connection.fetchval(
                "UPDATE exposures SET in_flight = in_flight - $3, updated_at = now()"
                " WHERE account = $1 AND currency_code = $2 RETURNING true",
                merchant_payable(payload["client_id"]),
                payload["currency_code"],
                Decimal(payload["amount"]),
            )
            if not updated:
                raise LookupError(f"payment {payload['payment_id']} decided before it was recorded here; redeliver")
    elif kind == events.LEDGER_POSTED:
        for line in payload["lines"]:
            await _add(connection, line["account"], line["currency_code"], Decimal(0), Decimal(line["amount"]))
