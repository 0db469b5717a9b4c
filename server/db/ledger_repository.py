"""SQL for the ledger: write a posting's lines, read balances and entries. Balances are always summed
from the lines (no stored balance to drift)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from server.domain import events
from server.domain.ledger import Posting, check_balanced


@dataclass(frozen=True)
class PostingRows:
    """Postings as the column arrays one statement unnests (`ledger_entries` then `ledger_lines`, in
    the order of `arguments`), with the `ledger.posted` events announcing them, in posting order."""

    arguments: tuple[list[object], ...]
    #: (topic, message key, payload) of each posting's outbox event
    announced: list[tuple[str, str, dict[str, object]]]


def posting_rows(entries: list[tuple[uuid.UUID, Posting]]) -> PostingRows:
    """The rows of these postings under their entry ids; each is checked to balance first (PostgreSQL
    checks again at commit)."""
    for _, posting in entries:
        check_balanced(posting)
    lines = [
        (entry_id, number, line.account, line.currency_code, line.amount)
        for entry_id, posting in entries
        for number, line in enumerate(posting.lines, start=1)
    ]
    announced: list[tuple[str, str, dict[str, object]]] = [
        (
            events.LEDGER_POSTED,
            posting.event_key,
            events.ledger_posted(
                entry_id, posting.event_key, [(line.account, line.amount, line.currency_code) for line in posting.lines]
            ),
        )
        for entry_id, posting in entries
    ]
    line_columns: list[list[object]] = [[line[column] for line in lines] for column in range(5)]
    arguments: tuple[list[object], ...] = (
        [entry_id for entry_id, _ in entries],
        [posting.event_key for _, posting in entries],
        [posting.payment_id for _, posting in entries],
        [posting.description for _, posting in entries],
        *line_columns,
    )
    return PostingRows(arguments, announced)


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


@dataclass(frozen=True)
class AccountBalance:
    #: sum of the account's lines in the currency (signed: debits minus credits); 0 without lines
    total: Decimal
    #: the moment the balance is read as of: the statement's time, or the last included entry's if later
    as_of: datetime
    #: the last entry (in posting order) with a line included in the total; None without lines
    last_entry_id: uuid.UUID | None


# One statement, so the sum, the last entry and the time all come from the same snapshot.
_BALANCE = """
WITH account_lines AS (
    SELECT l.amount, e.id AS entry_id, e.posted_at
    FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id
    WHERE l.account = $1 AND l.currency_code = $2
), last_entry AS (
    SELECT entry_id, posted_at FROM account_lines ORDER BY posted_at DESC, entry_id DESC LIMIT 1
)
SELECT (SELECT coalesce(sum(amount), 0) FROM account_lines) AS total,
       (SELECT entry_id FROM last_entry) AS last_entry_id,
       greatest(statement_timestamp(), (SELECT posted_at FROM last_entry)) AS as_of
"""


async def balance(
    connection: asyncpg.Connection, account: str, currency_code: str, *, timeout_s: float
) -> AccountBalance:
    """The account's balance in one currency, summed from its lines."""
    row = await connection.fetchrow(_BALANCE, account, currency_code, timeout=timeout_s)
    return AccountBalance(total=row["total"], as_of=row["as_of"], last_entry_id=row["last_entry_id"])


# Keyset pagination in posting order: (posted_at, id) strictly after the cursor. The page of entries
# is chosen first and only its lines are read, so a page costs the same wherever it starts.
_LIST_ENTRIES = """
SELECT e.id, e.event_key, e.payment_id, e.description, e.posted_at,
       lines.accounts, lines.amounts, lines.currencies
FROM (
    SELECT id, event_key, payment_id, description, posted_at
    FROM ledger_entries
    WHERE ($1::text IS NULL OR id IN (SELECT entry_id FROM ledger_lines WHERE account = $1))
      AND ($2::text IS NULL OR id IN (SELECT entry_id FROM ledger_lines WHERE account = $2))
      AND ($3::uuid IS NULL OR payment_id = $3)
      AND ($4::timestamptz IS NULL OR (posted_at, id) > ($4, $5::uuid))
    ORDER BY posted_at, id
    LIMIT $6
) AS e
CROSS JOIN LATERAL (
    SELECT array_agg(account ORDER BY line_number) AS accounts,
           array_agg(amount ORDER BY line_number) AS amounts,
           array_agg(currency_code ORDER BY line_number) AS currencies
    FROM ledger_lines WHERE entry_id = e.id
) AS lines
ORDER BY e.posted_at, e.id
"""


async def list_entries(
    connection: asyncpg.Connection,
    *,
    account: str | None,
    payment_id: uuid.UUID | None,
    readable_account: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
    timeout_s: float,
) -> list[LedgerEntryRecord]:
    """Entries (oldest first) with at least one line on `account` and/or of `payment_id`.

    `readable_account`, when set, confines the list to entries with a line in that account (what a
    caller without access to the whole ledger may see); the entries are still returned whole.
    """
    after_time, after_id = after if after is not None else (None, None)
    rows = await connection.fetch(
        _LIST_ENTRIES,
        account,
        readable_account,
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
                for account, amount, currency in zip(
                    row["accounts"] or (), row["amounts"] or (), row["currencies"] or (), strict=True
                )
            ),
        )
        for row in rows
    ]


async def post_entries(connection: asyncpg.Connection, postings: list[Posting]) -> int:
    """Post the entries not posted before (by their event keys: a payout's, a case's), in one round trip;
    how many."""
    posted = {
        row["event_key"]
        for row in await connection.fetch(
            "SELECT event_key FROM ledger_entries WHERE event_key = ANY($1::text[])", [p.event_key for p in postings]
        )
    }
    fresh = [posting for posting in postings if posting.event_key not in posted]
    if not fresh:
        return 0
    rows = posting_rows([(uuid.uuid4(), posting) for posting in fresh])
    event_ids = [uuid.uuid4() for _ in rows.announced]
    await connection.execute(
        """
        WITH entries AS (
            INSERT INTO ledger_entries (id, event_key, payment_id, description)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[])
        ), lines AS (
            INSERT INTO ledger_lines (entry_id, line_number, account, currency_code, amount)
            SELECT * FROM unnest($5::uuid[], $6::smallint[], $7::text[], $8::text[], $9::numeric[])
        )
        INSERT INTO outbox (id, topic, message_key, payload)
        SELECT * FROM unnest($10::uuid[], $11::text[], $12::text[], $13::jsonb[])
        """,
        *rows.arguments,
        event_ids,
        [topic for topic, _, _ in rows.announced],
        [key for _, key, _ in rows.announced],
        [
            payload | {"event_id": str(event_id)}
            for event_id, (_, _, payload) in zip(event_ids, rows.announced, strict=True)
        ],
    )
    return len(fresh)
