"""Verifying the audit chains: recompute every entry's hash and link, report the first broken one."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# The hash is recomputed by the same SQL function that made it (audit_entry_hash), so the check and
# the chain can never disagree on the encoding.
_BROKEN_LINKS = """
SELECT aggregate_type, aggregate_id, sequence, id,
       hash <> audit_entry_hash(prev_hash, aggregate_type, aggregate_id, sequence, action, actor, payload,
                                 created_at)
           AS hash_mismatch,
       prev_hash <> coalesce(lag(hash) OVER chain, '\\x'::bytea) AS link_mismatch,
       sequence <> row_number() OVER chain AS sequence_gap
FROM audit_log
WINDOW chain AS (PARTITION BY aggregate_type, aggregate_id ORDER BY sequence)
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
class BrokenLink:
    aggregate_type: str
    aggregate_id: str
    sequence: int
    audit_id: int
    reason: str

    def describe(self) -> str:
        return (
            f"audit chain {self.aggregate_type}/{self.aggregate_id} broken at sequence {self.sequence}"
            f" (audit_log.id {self.audit_id}): {self.reason}"
        )


async def find_broken_links(connection: asyncpg.Connection) -> list[BrokenLink]:
    """The first broken link of every broken chain (an empty list: every chain verifies)."""
    rows = await connection.fetch(
        f"""
        SELECT DISTINCT ON (aggregate_type, aggregate_id) * FROM ({_BROKEN_LINKS}) AS checked
        WHERE hash_mismatch OR link_mismatch OR sequence_gap
        ORDER BY aggregate_type, aggregate_id, sequence
        """
    )
    truncated = await connection.fetch(_TRUNCATED_CHAINS)
    return [
        BrokenLink(
            row["aggregate_type"],
            row["aggregate_id"],
            row["last_sequence"] + 1,
            0,
            f"the chain ends at sequence {row['last_sequence']} but {row['recorded']} changes were recorded",
        )
        for row in truncated
    ] + [
        BrokenLink(
            row["aggregate_type"],
            row["aggregate_id"],
            row["sequence"],
            row["id"],
            "content does not match its hash"
            if row["hash_mismatch"]
            else "previous hash does not match the entry before it"
            if row["link_mismatch"]
            else "an entry before it is missing",
        )
        for row in rows
    ]


async def count_entries(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval("SELECT count(*) FROM audit_log"))
