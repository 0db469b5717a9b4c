"""SQL for the resolver's schedule of payment checks: claims with a lease, reschedules that respect
the lease (a check sets the next one only if no webhook asked for one meanwhile and the payment did
not move), and the expiry of abandoned RECORDED payments."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

# Due payments, claimed with a lease. Those given a check time wait for it; the rest follow their
# state's default schedule.
_CLAIM = """
WITH due AS (
    SELECT id FROM payments
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
UPDATE payments p SET next_check_at = now() + make_interval(secs => $4::float8), check_attempts = check_attempts + 1
FROM due WHERE p.id = due.id
RETURNING p.id, p.state, p.amount, p.currency_code, p.check_attempts, p.next_check_at
"""

# The claim's lease is still this check's own (no webhook asked for a check meanwhile, the payment did
# not move): only then does the check set the next one.
_LATER = "UPDATE payments SET next_check_at = $3 WHERE id = $1 AND next_check_at = $2"
_LATER_BY = (
    "UPDATE payments SET next_check_at = now() + make_interval(secs => $3::float8) WHERE id = $1 AND next_check_at = $2"
)

# A check that could not ask the provider gives back its attempt and waits for the provider.
_NOT_ASKED = """
UPDATE payments
SET next_check_at = now() + make_interval(secs => $3::float8), check_attempts = greatest(check_attempts - 1, 0)
WHERE id = $1 AND next_check_at = $2
"""

# A RECORDED payment expires only if it still is, and no submission attempt began since `expiry_s` ago:
# a retry that stamped one meanwhile wins, and it is sent.
_EXPIRABLE = """
SELECT 1 FROM payments
WHERE id = $1 AND state = 'RECORDED' AND coalesce(submitted_at, created_at) <= now() - make_interval(secs => $2::float8)
FOR UPDATE
"""

# When a RECORDED payment unknown to the provider expires, unless a submission attempt begins first.
_EXPIRES_AT = (
    "SELECT coalesce(submitted_at, created_at) + make_interval(secs => $2::float8) FROM payments WHERE id = $1"
)

_GIVE_UP = "UPDATE payments SET next_check_at = 'infinity' WHERE id = $1 AND next_check_at = $2 RETURNING true"


async def claim_due(
    connection: asyncpg.Connection,
    *,
    limit: int,
    unknown_grace_s: float,
    pending_overdue_s: float,
    lease_s: float,
    recorded_quiet_s: float,
) -> list[asyncpg.Record]:
    """At most `limit` due payments, each leased for `lease_s` and its attempts counted."""
    rows: list[asyncpg.Record] = await connection.fetch(
        _CLAIM, limit, unknown_grace_s, pending_overdue_s, lease_s, recorded_quiet_s
    )
    return rows


async def reschedule_at(
    connection: asyncpg.Connection, payment_id: uuid.UUID, lease: datetime, at: datetime | None
) -> None:
    """The next check at `at` (None: no more checks), if the lease is still this check's."""
    await connection.execute(_LATER, payment_id, lease, at)


async def reschedule_in(connection: asyncpg.Connection, payment_id: uuid.UUID, lease: datetime, delay_s: float) -> None:
    await connection.execute(_LATER_BY, payment_id, lease, delay_s)


async def give_back(connection: asyncpg.Connection, payment_id: uuid.UUID, lease: datetime, delay_s: float) -> None:
    """A check that could not ask: its attempt given back, the next one after `delay_s`."""
    await connection.execute(_NOT_ASKED, payment_id, lease, delay_s)


async def give_up(connection: asyncpg.Connection, payment_id: uuid.UUID, lease: datetime) -> bool:
    """No more checks, if the lease is still this check's; False when the payment moved or is due again."""
    return bool(await connection.fetchval(_GIVE_UP, payment_id, lease))


async def lock_if_expirable(connection: asyncpg.Connection, payment_id: uuid.UUID, expiry_s: float) -> bool:
    return await connection.fetchval(_EXPIRABLE, payment_id, expiry_s) is not None


async def expires_at(connection: asyncpg.Connection, payment_id: uuid.UUID, expiry_s: float) -> datetime | None:
    at: datetime | None = await connection.fetchval(_EXPIRES_AT, payment_id, expiry_s)
    return at
