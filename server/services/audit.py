"""Verifying the audit chains: recompute every entry's hash and link, report the first broken one."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from server.db import audit_repository


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
    broken = await audit_repository.first_broken_entries(connection)
    truncated = await audit_repository.truncated_chains(connection)
    return [
        BrokenLink(
            chain.aggregate_type,
            chain.aggregate_id,
            chain.last_sequence + 1,
            0,
            f"the chain ends at sequence {chain.last_sequence} but {chain.recorded} changes were recorded",
        )
        for chain in truncated
    ] + [
        BrokenLink(
            entry.aggregate_type,
            entry.aggregate_id,
            entry.sequence,
            entry.audit_id,
            "content does not match its hash"
            if entry.hash_mismatch
            else "previous hash does not match the entry before it"
            if entry.link_mismatch
            else "an entry before it is missing",
        )
        for entry in broken
    ]


async def count_entries(connection: asyncpg.Connection) -> int:
    return await audit_repository.count_entries(connection)
