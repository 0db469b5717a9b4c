"""process_if_new: the insert-first guard that makes a consumer apply each event once.

The processed-event row is inserted in the SAME transaction as the handler's writes (and any outbox
rows they produce): if the handler fails, everything rolls back, the row included, so a redelivery
can succeed. Never insert the row in a transaction of its own before the work: a failure after that
commit would leave the event marked done and never retried.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from server.domain.errors import Defect

Handler = Callable[[asyncpg.Connection], Awaitable[None]]


async def process_if_new(connection: asyncpg.Connection, event_id: str, consumer_group: str, handler: Handler) -> bool:
    """Run `handler` unless `consumer_group` already processed `event_id`; True if it ran.

    Must be called inside a transaction the caller commits after it returns. A concurrent delivery
    of the same event waits on the primary key until this transaction ends, then does nothing.
    """
    (new,) = await claim_new(connection, [(consumer_group, event_id)])
    if not new:
        return False
    await handler(connection)
    return True


#: Inserted in key order, so that two transactions claiming overlapping sets never deadlock.
_CLAIM = """
INSERT INTO processed_events (consumer_group, event_id)
SELECT consumer_group, event_id FROM unnest($1::text[], $2::text[]) AS c(consumer_group, event_id)
ORDER BY consumer_group, event_id
ON CONFLICT (consumer_group, event_id) DO NOTHING
RETURNING consumer_group, event_id
"""


@dataclass(frozen=True)
class Alongside:
    """A write made in the same statement as a claim, to save a round trip (the raw deliveries kept
    as evidence, say): one data-modifying statement whose parameters are numbered from $3 on."""

    statement: str
    arguments: Sequence[Any]


async def claim_new(
    connection: asyncpg.Connection, claims: Sequence[tuple[str, str]], alongside: Alongside | None = None
) -> list[bool]:
    """The insert-first guard for several (consumer group, event id) pairs at once, in one round trip.

    True for each pair this transaction is the first to process: its handler's work must follow in
    the same transaction. A pair already processed, or repeated earlier in `claims`, is False.
    """
    if not connection.is_in_transaction():
        raise Defect("the insert-first guard needs the caller's transaction around the work")
    statement, arguments = _CLAIM, [[group for group, _ in claims], [event_id for _, event_id in claims]]
    if alongside is not None:
        statement = f"WITH alongside AS ({alongside.statement}){_CLAIM}"
        arguments.extend(alongside.arguments)
    rows = await connection.fetch(statement, *arguments)
    claimed = {(row["consumer_group"], row["event_id"]) for row in rows}
    new = []
    for claim in claims:
        new.append(claim in claimed)
        claimed.discard(claim)  # a repeat within `claims` is not new
    return new
