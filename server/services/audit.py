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
    return [
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
