"""SQL for the exposure projection: per account and currency, the money in flight and settled."""

from __future__ import annotations

from decimal import Decimal

import asyncpg

_ADD = """
INSERT INTO exposures (account, currency_code, in_flight, settled) VALUES ($1, $2, $3, $4)
ON CONFLICT (account, currency_code) DO UPDATE
SET in_flight = exposures.in_flight + EXCLUDED.in_flight,
    settled = exposures.settled + EXCLUDED.settled,
    updated_at = now()
"""

# An update, not an upsert: a CHECK would refuse a negative new row before ON CONFLICT is considered.
# It takes only what is there: with less in flight than `amount`, the payment's recorded event has not
# been applied yet (redelivery does not keep an aggregate's order), and the caller is told so instead of
# ck_exposures_in_flight_nonnegative refusing the row (the CHECK stays the database's guarantee).
_TAKE_IN_FLIGHT = (
    "UPDATE exposures SET in_flight = in_flight - $3, updated_at = now()"
    " WHERE account = $1 AND currency_code = $2 AND in_flight >= $3 RETURNING true"
)


async def add(
    connection: asyncpg.Connection, account: str, currency_code: str, in_flight: Decimal, settled: Decimal
) -> None:
    """Add to the account's amounts in the currency, creating its row at zero first if there is none."""
    await connection.execute(_ADD, account, currency_code, in_flight, settled)


async def take_in_flight(connection: asyncpg.Connection, account: str, currency_code: str, amount: Decimal) -> bool:
    """Take `amount` off the money in flight; False, taking nothing, when the account has no row in the
    currency yet or less than `amount` in flight."""
    return bool(await connection.fetchval(_TAKE_IN_FLIGHT, account, currency_code, amount))
