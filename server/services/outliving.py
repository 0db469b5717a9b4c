"""Work that must outlive the call that started it: what a provider said is written even after the caller
gave up (its deadline ran out, it cancelled, Ballast answered it already).

`outlive` runs the work as a task of its own and waits for it; cancelling the waiter leaves the work
running. Each such task is bounded by its own time limit (the use case gives it one), and the server
waits for those still running (`finish`) before it closes the database pool when it stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

_running: set[asyncio.Task[Any]] = set()


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("outliving.failed", task=task.get_name(), error=repr(task.exception()))


async def outlive(work: Coroutine[Any, Any, T], name: str) -> T:
    """The work's result; if the caller is cancelled meanwhile, the work goes on to its end regardless."""
    task = asyncio.ensure_future(work)
    task.set_name(name)
    _running.add(task)
    task.add_done_callback(_finished)
    return await asyncio.shield(task)


def running() -> int:
    return len(_running)


async def finish(timeout_s: float) -> int:
    """Wait (up to `timeout_s`) for the outliving work still running; how many did not finish in time."""
    if not _running:
        return 0
    log.info("outliving.finishing", tasks=len(_running), timeout_s=timeout_s)
    _, pending = await asyncio.wait(set(_running), timeout=timeout_s)
    if pending:
        log.warning("outliving.unfinished", tasks=len(pending), hint="the resolver settles their payments")
    return len(pending)
