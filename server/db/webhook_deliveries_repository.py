"""Webhook deliveries kept as evidence: every delivery as received (duplicates included), raw body and
the headers that say something about it. Append-only (a trigger refuses changes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

_INSERT_DELIVERY = "INSERT INTO webhook_deliveries (provider, event_id, headers, body) VALUES ($1, $2, $3, $4)"
#: Parameters from $3 on: it runs in the same statement as the insert-first claim of the events.
INSERT_DELIVERIES = (
    "INSERT INTO webhook_deliveries (provider, event_id, headers, body)"
    " SELECT * FROM unnest($3::text[], $4::text[], $5::jsonb[], $6::bytea[])"
)


@dataclass(frozen=True)
class Kept:
    """One delivery as it is kept."""

    provider: str
    event_id: str | None
    headers: dict[str, str]
    body: bytes


async def keep_delivery(connection: asyncpg.Connection, delivery: Kept, *, timeout_s: float) -> None:
    """Keep one delivery alone (an unreadable one, or one about nothing Ballast keeps)."""
    await connection.execute(
        _INSERT_DELIVERY, delivery.provider, delivery.event_id, delivery.headers, delivery.body, timeout=timeout_s
    )


def deliveries_arguments(deliveries: Sequence[Kept]) -> list[list[Any]]:
    """INSERT_DELIVERIES's arguments ($3 to $6) for these deliveries."""
    return [
        [delivery.provider for delivery in deliveries],
        [delivery.event_id for delivery in deliveries],
        [delivery.headers for delivery in deliveries],
        [delivery.body for delivery in deliveries],
    ]
