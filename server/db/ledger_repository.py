"""SQL for the ledger: write a posting's lines, read balances and entries. Balances are always summed
from the lines (no stored balance to drift)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from server.domain.ledger import Posting, check_balanced


@dataclass(frozen=True)
class EntryLine:
    account: str
    amount: Decimal
    currency_code: str


@dataclass(frozen=True)
class LedgerEntryRecord:
    id: uuid.UUID
    event_key: str
    payment_id: uuid.UUID | None
    description: str
    posted_at: datetime
    lines: tuple[EntryLine, ...]


_INSERT_ENTRY = "INSERT INTO ledger_entries (id, event_key, payment_id, description) VALUES ($1, $2, $3, $4)"
_INSERT_LINES = (
    "INSERT INTO ledger_lines (entry_id, line_number, account, currency_code, amount)"
    " SELECT $1, line_number, account, currency_code, amount"
    " FROM unnest($2::smallint[], $3::text[], $4::text[], $5::numeric[])"
    " AS line(line_number, account, currency_code, amount)"
)


async def insert_posting(connection: asyncpg.Connection, posting: Posting) -> uuid.UUID:
    """Write the entry and its lines (inside the caller's transaction). PostgreSQL checks the balance
    again at commit and refuses a second posting of the same event key."""
    check_balanced(posting)
    entry_id = uuid.uuid4()
    await connection.execute(_INSERT_ENTRY, entry_id, posting.event_key, posting.payment_id, posting.description)
    await connection.execute(
        _INSERT_LINES,
        entry_id,
        list(range(1, len(posting.lines) + 1)),
        [line.account for line in posting.lines],
        [line.currency_code for line in posting.lines],
        [line.amount for line in posting.lines],
    )
    return entry_id


async def balance(
    connection: asyncpg.Connection, account: str, currency_code: str, *, timeout_s: float
) -> tuple[Decimal, datetime | None, uuid.UUID | None]:
    """(sum of the account's lines in the currency, when the last of them was posted, its entry id)."""
    row = await connection.fetchrow(
        """
        SELECT coalesce(sum(l.amount), 0) AS total,
               max(e.posted_at) AS last_posted_at,
               (array_agg(e.id ORDER BY e.posted_at DESC, e.id DESC))[1] AS last_entry_id
        FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id
        WHERE l.account = $1 AND l.currency_code = $2
        """,
        account,
        currency_code,
        timeout=timeout_s,
    )
    return row["total"], row["last_posted_at"], row["last_entry_id"]


async def list_entries(
    connection: asyncpg.Connection,
    *,
    account: str | None,
    payment_id: uuid.UUID | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
    timeout_s: float,
) -> list[LedgerEntryRecord]:
    """Entries (oldest first) with at least one line on `account` and/or of `payment_id`."""
    after_time, after_id = after if after is not None else (None, None)
    rows = await connection.fetch(
        """
        SELECT e.id, e.event_key, e.payment_id, e.description, e.posted_at,
               array_agg(l.account ORDER BY l.line_number) AS accounts,
               array_agg(l.amount ORDER BY l.line_number) AS amounts,
               array_agg(l.currency_code ORDER BY l.line_number) AS currencies
        FROM ledger_entries e JOIN ledger_lines l ON l.entry_id = e.id
        WHERE ($1::text IS NULL OR e.id IN (SELECT entry_id FROM ledger_lines WHERE account = $1))
          AND ($2::uuid IS NULL OR e.payment_id = $2)
          AND ($3::timestamptz IS NULL OR (e.posted_at, e.id) > ($3, $4::uuid))
        GROUP BY e.id
        ORDER BY e.posted_at, e.id
        LIMIT $5
        """,
        account,
        payment_id,
        after_time,
        after_id,
        limit,
        timeout=timeout_s,
    )
    return [
        LedgerEntryRecord(
            id=row["id"],
            event_key=row["event_key"],
            payment_id=row["payment_id"],
            description=row["description"],
            posted_at=row["posted_at"],
            lines=tuple(
                EntryLine(account, amount, currency)
                for account, amount, currency in zip(row["accounts"], row["amounts"], row["currencies"], strict=True)
            ),
        )
        for row in rows
    ]
