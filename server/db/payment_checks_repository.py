"""SQL for the resolvers' schedule of payment and refund checks: claims with a lease, reschedules that
respect the lease (a check sets the next one only if no webhook asked for one meanwhile and the payment
or refund did not move), and the expiry of abandoned RECORDED ones. Payments and refunds share the
schedule's columns (next_check_at, check_attempts, submitted_at) and its undecided states, so every
statement takes the table (`Checked`) it works on."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

import asyncpg


class Checked(enum.StrEnum):
    """The tables whose rows the resolvers check (the payment resolver, the refund resolver)."""

    PAYMENTS = "payments"
    REFUNDS = "refunds"


# Due payments, claimed with a lease. Those given a check time wait for it; the rest follow their
# state's default schedule.
_CLAIM = """
WITH due AS (
    SELECT id FROM {table}
    WHERE next_check_at <= now()
       OR (next_check_at IS NULL AND state IN ('RECORDED', 'UNKNOWN', 'PENDING') AND CASE state
              WHEN 'UNKNOWN' THEN updated_at + make_interval(secs => $2::float8)
              WHEN 'PENDING' THEN updated_at + make_interval(secs => $3::float8)
              ELSE coalesce(submitted_at, created_at) + make_interval(secs => $5::float8)
           END <= now())
    ORDER BY coalesce(next_check_at, updated_at)
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE {table} p SET next_check_at = now() + make_interval(secs => $4::float8), check_attempts = check_attempts + 1
FROM due WHERE p.id = due.id
RETURNING p.id, p.state, p.amount, p.currency_code, p.check_attempts, p.next_check_at
"""

# The claim's lease is still this check's own (no webhook asked for a check meanwhile, the payment did
# not move): only then does the check set the next one.
_LATER = "UPDATE {table} SET next_check_at = $3 WHERE id = $1 AND next_check_at = $2"
_LATER_BY = (
    "UPDATE {table} SET next_check_at = now() + make_interval(secs => $3::float8) WHERE id = $1 AND next_check_at = $2"
)

# A check that could not ask the provider gives back its attempt and waits for the provider.
_NOT_ASKED = """
UPDATE {table}
SET next_check_at = now() + make_interval(secs => $3::float8), check_attempts = greatest(check_attempts - 1, 0)
WHERE id = $1 AND next_check_at = $2
"""

# A RECORDED payment expires only if it still is, and no submission attempt began since `expiry_s` ago:
# a retry that stamped one meanwhile wins, and it is sent.
_EXPIRABLE = """
SELECT 1 FROM {table}
WHERE id = $1 AND state = 'RECORDED' AND coalesce(submitted_at, created_at) <= now() - make_interval(secs => $2::float8)
FOR UPDATE
"""

# When a RECORDED payment unknown to the provider expires, unless a submission attempt begins first.
_EXPIRES_AT = "SELECT coalesce(submitted_at, created_at) + make_interval(secs => $2::float8) FROM {table} WHERE id = $1"

_GIVE_UP = "UPDATE {table} SET next_check_at = 'infinity' WHERE id = $1 AND next_check_at = $2 RETURNING true"


async def claim_due(
    connection: asyncpg.Connection,
    table: Checked,
    *,
    limit: int,
    unknown_grace_s: float,
    pending_overdue_s: float,
    lease_s: float,
    recorded_quiet_s: float,
) -> list[asyncpg.Record]:
    """At most `limit` due payments, each leased for `lease_s` and its attempts counted."""
    rows: list[asyncpg.Record] = await connection.fetch(
        _CLAIM.format(table=table), limit, unknown_grace_s, pending_overdue_s, lease_s, recorded_quiet_s
    )
    return rows


async def reschedule_at(
    connection: asyncpg.Connection, table: Checked, payment_id: uuid.UUID, lease: datetime, at: datetime | None
) -> None:
    """The next check at `at` (None: no more checks), if the lease is still this check's."""
    await connection.execute(_LATER.format(table=table), payment_id, lease, at)


async def reschedule_in(
    connection: asyncpg.Connection, table: Checked, payment_id: uuid.UUID, lease: datetime, delay_s: float
) -> None:
    await connection.execute(_LATER_BY.format(table=table), payment_id, lease, delay_s)


async def give_back(
    connection: asyncpg.Connection, table: Checked, payment_id: uuid.UUID, lease: datetime, delay_s: float
) -> None:
    """A check that could not ask: its attempt given back, the next one after `delay_s`."""
    await connection.execute(_NOT_ASKED.format(table=table), payment_id, lease, delay_s)


async def give_up(connection: asyncpg.Connection, table: Checked, payment_id: uuid.UUID, lease: datetime) -> bool:
    """No more checks, if the lease is still this check's; False when the payment moved or is due again."""
    return bool(await connection.fetchval(_GIVE_UP.format(table=table), payment_id, lease))


async def lock_if_expirable(
    connection: asyncpg.Connection, table: Checked, payment_id: uuid.UUID, expiry_s: float
) -> bool:
    return await connection.fetchval(_EXPIRABLE.format(table=table), payment_id, expiry_s) is not None


async def expires_at(
    connection: asyncpg.Connection, table: Checked, payment_id: uuid.UUID, expiry_s: float
) -> datetime | None:
    at: datetime | None = await connection.fetchval(_EXPIRES_AT.format(table=table), payment_id, expiry_s)
    return at
