"""SQL for the audit chains: every entry's hash and link recomputed, and every chain's length held
against the changes the database recorded for its payment or leg."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# The hash is recomputed by the same SQL function that made it (audit_entry_hash), so the check and
# the chain can never disagree on the encoding. The first broken entry of each broken chain.
_FIRST_BROKEN_ENTRIES = """
SELECT DISTINCT ON (aggregate_type, aggregate_id) * FROM (
    SELECT aggregate_type, aggregate_id, sequence, id,
           hash <> audit_entry_hash(prev_hash, aggregate_type, aggregate_id, sequence, action, actor, payload,
                                     created_at)
               AS hash_mismatch,
           prev_hash <> coalesce(lag(hash) OVER chain, '\\x'::bytea) AS link_mismatch,
           sequence <> row_number() OVER chain AS sequence_gap
    FROM audit_log
    WINDOW chain AS (PARTITION BY aggregate_type, aggregate_id ORDER BY sequence)
) AS checked
WHERE hash_mismatch OR link_mismatch OR sequence_gap
ORDER BY aggregate_type, aggregate_id, sequence
"""

# A chain cut short at its end leaves no broken link behind it, so each chain of a payment or a leg is
# also held against the changes the database recorded for it: one entry for the payment's creation
# plus one per transition, one per leg transition.
_TRUNCATED_CHAINS = """
SELECT 'payment' AS aggregate_type, chain.aggregate_id, chain.last_sequence, 1 + count(t.id) AS recorded
FROM (SELECT aggregate_id, max(sequence) AS last_sequence FROM audit_log
      WHERE aggregate_type = 'payment' GROUP BY aggregate_id) AS chain
JOIN payments p ON p.id::text = chain.aggregate_id
LEFT JOIN payment_transitions t ON t.payment_id = p.id
GROUP BY chain.aggregate_id, chain.last_sequence HAVING chain.last_sequence < 1 + count(t.id)
UNION ALL
SELECT 'leg', chain.aggregate_id, chain.last_sequence, count(t.id)
FROM (SELECT aggregate_id, max(sequence) AS last_sequence FROM audit_log
      WHERE aggregate_type = 'leg' GROUP BY aggregate_id) AS chain
JOIN leg_transitions t ON t.leg_id::text = chain.aggregate_id
GROUP BY chain.aggregate_id, chain.last_sequence HAVING chain.last_sequence < count(t.id)
"""


@dataclass(frozen=True)
class BrokenEntry:
    """The first entry of a chain that does not verify, and what is wrong with it."""

    aggregate_type: str
    aggregate_id: str
    sequence: int
    audit_id: int
    #: its content does not match its hash
    hash_mismatch: bool
    #: its previous hash is not the hash of the entry before it
    link_mismatch: bool
    #: an entry before it is missing
    sequence_gap: bool


@dataclass(frozen=True)
class TruncatedChain:
    """A chain that ends before the changes recorded for its payment or leg do."""

    aggregate_type: str
    aggregate_id: str
    last_sequence: int
    recorded: int


async def first_broken_entries(connection: asyncpg.Connection) -> list[BrokenEntry]:
    rows = await connection.fetch(_FIRST_BROKEN_ENTRIES)
    return [
        BrokenEntry(
            row["aggregate_type"],
            row["aggregate_id"],
            row["sequence"],
            row["id"],
            row["hash_mismatch"],
            row["link_mismatch"],
            row["sequence_gap"],
        )
        for row in rows
    ]


async def truncated_chains(connection: asyncpg.Connection) -> list[TruncatedChain]:
    rows = await connection.fetch(_TRUNCATED_CHAINS)
    return [
        TruncatedChain(row["aggregate_type"], row["aggregate_id"], row["last_sequence"], row["recorded"])
        for row in rows
    ]


async def count_entries(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval("SELECT count(*) FROM audit_log"))
