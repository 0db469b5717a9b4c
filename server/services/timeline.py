"""A payment's timeline, a page at a time: its state transitions, the provider statuses observed for it
and its ledger lines, merged in the order they happened (server/db/timeline_repository.py reads them).

The payment's creation comes first, as a transition into its initial state with the idempotency key
as its evidence. A page token is the position of the last entry listed, so a page never repeats or
skips an entry, whatever is written meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from server.db import payments_repository, timeline_repository
from server.db.database import Budget, Database
from server.db.timeline_repository import Position

# results of these use cases, as the handlers read them
from server.db.timeline_repository import ProviderStatus as ProviderStatus
from server.db.timeline_repository import RefundStep as RefundStep
from server.db.timeline_repository import TimelineEntry as TimelineEntry
from server.db.timeline_repository import Transition as Transition
from server.domain.errors import FieldViolation, InvalidArgument, NotFound
from server.domain.identifiers import UUID_PATTERN
from server.domain.identity import Principal, readable_client
from server.services.paging import PAGE_TOKEN_LENGTH_MAX, TIMELINE_PAGE


@dataclass(frozen=True)
class Timeline:
    payment_id: uuid.UUID
    entries: list[TimelineEntry]
    has_more: bool

    @staticmethod
    def token_after(entry: TimelineEntry) -> str:
        occurred_at, kind, row_key, entry_key, line_number = entry.position
        cursor = [occurred_at.isoformat(), kind, row_key, str(entry_key), line_number]
        return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode()

    @property
    def next_page_token(self) -> str:
        return self.token_after(self.entries[-1]) if self.has_more else ""


def _decode_position(token: str) -> Position:
    invalid = InvalidArgument(
        [FieldViolation("page_token", "is not a token from a previous GetPaymentTimeline response")]
    )
    if len(token) > PAGE_TOKEN_LENGTH_MAX:
        raise invalid
    try:
        occurred, kind, row_key, entry_key, line_number = json.loads(base64.urlsafe_b64decode(token.encode()))
        occurred_at = datetime.fromisoformat(occurred)
        numbers_ok = all(type(n) is int and 0 <= n < 2**62 for n in (kind, row_key, line_number))
        if occurred_at.tzinfo is None or not numbers_ok or not UUID_PATTERN.fullmatch(entry_key):
            raise invalid
        return occurred_at.astimezone(UTC), kind, row_key, uuid.UUID(entry_key), line_number
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError, binascii.Error):
        raise invalid from None


async def get_payment_timeline(
    database: Database,
    principal: Principal,
    payment_id: uuid.UUID,
    budget: Budget,
    *,
    page_size: int = 0,
    page_token: str = "",
) -> Timeline:
    """A page of the timeline of a payment the caller may read (readable_client); another is NotFound."""
    limit = TIMELINE_PAGE.limit(page_size)
    after = _decode_position(page_token) if page_token else None
    async with database.connection(budget) as connection:
        payment = await payments_repository.get_payment(
            connection, readable_client(principal), payment_id, timeout_s=budget.remaining_s()
        )
        if payment is None:
            raise NotFound("payment", str(payment_id))
        entries = await timeline_repository.read_entries(
            connection, payment_id, after, limit + 1, timeout_s=budget.remaining_s()
        )
    return Timeline(payment_id, entries[:limit], has_more=len(entries) > limit)
