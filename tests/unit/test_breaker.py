"""The breaker wrapper closes aiobreaker's gaps: timeouts count, declines are neutral, probes are bounded."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.providers.breaker import Breaker, BreakerOpen, BreakerSettings, BreakerState, Neutral


class ProviderDown(Exception):
    pass


async def _fail() -> str:
    raise ProviderDown("503")


async def _ok() -> str:
    return "ok"


async def _decline() -> str | Neutral[str]:
    return Neutral("declined")


async def _hang() -> str:
    await asyncio.sleep(10)
    return "late"


async def _trip(breaker: Breaker, failures: int) -> None:
    for _ in range(failures):
        with pytest.raises((ProviderDown, BreakerOpen)):
            await breaker.call(_fail, timeout_s=1)


async def test_timeouts_inside_the_call_count_as_failures_and_open_it() -> None:
    breaker = Breaker("gateway", BreakerSettings(failures_max=3, open_s=60))
    for _ in range(3):
        with pytest.raises(TimeoutError):  # the call that trips it still reports its own timeout
            await breaker.call(_hang, timeout_s=0.01)
    assert breaker.state is BreakerState.OPEN
    started = time.perf_counter()
    with pytest.raises(BreakerOpen) as refused:
        await breaker.call(_ok, timeout_s=1)
    assert time.perf_counter() - started < 0.001
    assert 0 < refused.value.retry_after_s <= 60


async def test_a_decline_neither_counts_as_a_failure_nor_resets_the_count() -> None:
    breaker = Breaker("gateway", BreakerSettings(failures_max=3, open_s=60))
    await _trip(breaker, 2)
    assert await breaker.call(_decline, timeout_s=1) == "declined"
    assert breaker.state is BreakerState.CLOSED
    await _trip(breaker, 1)  # the third failure, declines in between or not
    assert breaker.state is BreakerState.OPEN


async def test_a_success_resets_the_count() -> None:
    breaker = Breaker("gateway", BreakerSettings(failures_max=3, open_s=60))
    await _trip(breaker, 2)
    assert await breaker.call(_ok, timeout_s=1) == "ok"
    await _trip(breaker, 2)
    assert breaker.state is BreakerState.CLOSED


async def test_half_open_admits_a_bounded_number_of_probes_and_a_good_one_closes_it() -> None:
    changes: list[tuple[str, str]] = []
    breaker = Breaker(
        "gateway",
        BreakerSettings(failures_max=1, open_s=0.05, probes_max=1),
        on_change=lambda _, old, new: changes.append((old.value, new.value)),
    )
    await _trip(breaker, 1)
    await asyncio.sleep(0.06)
    entered = 0

    async def slow_ok() -> str:
        nonlocal entered
        entered += 1
        await asyncio.sleep(0.05)
        return "ok"

    outcomes = await asyncio.gather(*(breaker.call(slow_ok, timeout_s=1) for _ in range(10)), return_exceptions=True)
    assert entered == 1
    assert sum(outcome == "ok" for outcome in outcomes) == 1
    assert all(isinstance(outcome, BreakerOpen) for outcome in outcomes if outcome != "ok")
    assert breaker.state is BreakerState.CLOSED
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_a_failed_probe_opens_it_again() -> None:
    breaker = Breaker("gateway", BreakerSettings(failures_max=1, open_s=0.05))
    await _trip(breaker, 1)
    await asyncio.sleep(0.06)
    with pytest.raises(ProviderDown):
        await breaker.call(_fail, timeout_s=1)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(BreakerOpen):
        await breaker.call(_ok, timeout_s=1)
