"""Every resolver's loop: at most `batch_size` checks in flight, and a slow check never holds up the rest."""

from __future__ import annotations

import asyncio
from collections import deque

import asyncpg

from server.db.database import Database
from server.services.check_loop import CheckLoop


class _Loop(CheckLoop[str]):
    """Due items from a queue; the item "slow" hangs until released."""

    def __init__(self, database: Database, items: list[str], batch_size: int) -> None:
        self._database = database
        self._batch_size = batch_size
        self._poll_interval_s = 0.05
        self.due = deque(items)
        self.checked: list[str] = []
        self.in_flight = 0
        self.in_flight_max = 0
        self.release = asyncio.Event()
        self.all_fast_checked = asyncio.Event()
        self.fast = {item for item in items if item != "slow"}

    async def _claim(self, connection: asyncpg.Connection, limit: int) -> list[str]:
        assert limit <= self._batch_size
        return [self.due.popleft() for _ in range(min(limit, len(self.due)))]

    async def _check(self, item: str) -> None:
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            if item == "slow":
                await self.release.wait()
            else:
                await asyncio.sleep(0)
            self.checked.append(item)
            if self.fast <= set(self.checked):
                self.all_fast_checked.set()
        finally:
            self.in_flight -= 1


async def test_a_slow_check_never_holds_up_the_others_and_the_bound_holds(database: Database) -> None:
    loop = _Loop(database, ["slow", *(f"item-{n}" for n in range(30))], batch_size=4)
    stopping = asyncio.Event()
    running = asyncio.create_task(loop.run(stopping))
    # every other item is checked while the slow one is still out
    await asyncio.wait_for(loop.all_fast_checked.wait(), 10)
    assert "slow" not in loop.checked
    assert loop.in_flight_max <= 4
    loop.release.set()
    stopping.set()
    await asyncio.wait_for(running, 10)
    assert loop.checked[-1] == "slow"  # stopping lets the checks in flight finish
    assert sorted(loop.checked) == sorted(["slow", *(f"item-{n}" for n in range(30))])


async def test_run_once_checks_one_batch_to_the_end(database: Database) -> None:
    loop = _Loop(database, [f"item-{n}" for n in range(10)], batch_size=4)
    assert await loop.run_once() == 4
    assert len(loop.checked) == 4 and len(loop.due) == 6
