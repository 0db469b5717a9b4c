"""process_if_new: the insert-first guard that makes a consumer apply each event once.

The processed-event row is inserted in the SAME transaction as the handler's writes (and any outbox
rows they produce): if the handler fails, everything rolls back, the row included, so a redelivery
can succeed. Never insert the row in a transaction of its own before the work: a failure after that
commit would leave the event marked done and never retried.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

Handler = Callable[[asyncpg.Connection], Awaitable[None]]


async def process_if_new(connection: asyncpg.Connection, event_id: str, consumer_group: str, handler: Handler) -> bool:
    """Run `handler` unless `consumer_group` already processed `event_id`; True if it ran.

    Must be called inside a transaction the caller commits after it returns. A concurrent delivery
    of the same event waits on the primary key until this transaction ends, then does nothing.
    """
    if not connection.is_in_transaction():
        raise RuntimeError("process_if_new needs the caller's transaction around the work")
    inserted = await connection.fetchval(
        "INSERT INTO processed_events (consumer_group, event_id) VALUES ($1, $2)"
        " ON CONFLICT (consumer_group, event_id) DO NOTHING RETURNING true",
        consumer_group,
        event_id,
    )
    if not inserted:
        return False
    await handler(connection)
    return True
