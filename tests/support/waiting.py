"""Waiting for something to happen: a poll under a deadline, never a sleep and a hope."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

#: How often a condition is looked at again: short, so a test waits little past the moment it holds.
POLL_INTERVAL_S = 0.005


async def until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    what: str,
    timeout_s: float = 10,
    interval_s: float = POLL_INTERVAL_S,
) -> None:
    """Return once `condition()` is true (it may be a coroutine function); fail naming `what` when it is
    still false after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        holds = condition()
        if inspect.isawaitable(holds):
            holds = await holds
        if holds:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting until {what}")
        await asyncio.sleep(interval_s)
