"""SQL for the leg resolver's schedule of leg checks: due legs claimed with a lease, and each one's next check.

A leg still SUBMITTED is due a grace period after its last change; a working one (PENDING,
PARTIALLY_FILLED, MODIFYING) a longer while after it; a leg given a check time waits for it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from server.domain.order_legs import AWAITING_VENUE_STATES, LegState

#: The states of the legs the claim takes (those awaiting the venue), in their declared order.
_AWAITING_VENUE = ", ".join(f"'{state.value}'" for state in LegState if state in AWAITING_VENUE_STATES)

_CLAIM = f"""
WITH due AS (
    SELECT id FROM legs
    WHERE state IN ({_AWAITING_VENUE})
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
class DueLeg:
    """A leg claimed for a check, leased to the worker that claimed it."""

    id: uuid.UUID
    state: LegState
    #: checks so far, this one included
    attempts: int


async def claim_due(
    connection: asyncpg.Connection, *, limit: int, submitted_grace_s: float, working_check_s: float, lease_s: float
) -> list[DueLeg]:
    """At most `limit` due legs, each leased for `lease_s` and its attempts counted."""
    rows = await connection.fetch(_CLAIM, limit, submitted_grace_s, working_check_s, lease_s)
    return [DueLeg(row["id"], LegState(row["state"]), row["check_attempts"]) for row in rows]


async def check_in(connection: asyncpg.Connection, leg_id: uuid.UUID, delay_s: float) -> None:
    """The leg's next check, `delay_s` from now."""
    await connection.execute(
        "UPDATE legs SET next_check_at = now() + make_interval(secs => $2::float8) WHERE id = $1", leg_id, delay_s
    )


async def give_back(connection: asyncpg.Connection, leg_id: uuid.UUID, delay_s: float) -> None:
    """A check that could not ask the venue: its attempt given back, the next one `delay_s` from now."""
    await connection.execute(
        "UPDATE legs SET next_check_at = now() + make_interval(secs => $2::float8),"
        " check_attempts = greatest(check_attempts - 1, 0) WHERE id = $1",
        leg_id,
        delay_s,
    )


async def give_up(connection: asyncpg.Connection, leg_id: uuid.UUID) -> None:
    """No more checks of the leg."""
    await connection.execute("UPDATE legs SET next_check_at = 'infinity' WHERE id = $1", leg_id)
