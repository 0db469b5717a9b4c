"""How long to wait before trying again: one rule for every retry Ballast schedules (the relay's
publishes, the resolvers' checks of payments and legs, the case checks)."""

from __future__ import annotations


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """After `attempts` tries: base, 2 x base, 4 x base, ... never more than `max_s`."""
    return float(min(max_s, base_s * 2 ** max(attempts - 1, 0)))
