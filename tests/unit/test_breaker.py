"""The breaker measures the provider, not its callers: timeouts count only when the provider had its
full time, declines are neutral, probes are bounded, and only calls of the current period count."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from server.providers.breaker import Breaker, BreakerOpen, BreakerSettings, BreakerState, Neutral


class ProviderDown(Exception):
    pass


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


async def _fail() -> str:
    raise ProviderDown("503")


async def _ok() -> str:
    return "ok"


async def _decline() -> str | Neutral[str]:
    return Neutral("declined")


async def _hang() -> str:
    await asyncio.Event().wait()  # never answers: only the call's time limit ends it
    return "late"


async def _trip(breaker: Breaker, failures: int) -> None:
    for _ in range(failures):
        with pytest.raises((ProviderDown, BreakerOpen)):
            await breaker.call(_fail, timeout_s=1)


def _recording(changes: list[str]) -> Callable[[str, BreakerState, BreakerState], None]:
    return lambda _, old, new: changes.append(f"{old.value}->{new.value}")


class Gate:
    """Calls that are in flight until the test releases them, then fail (or succeed) as told."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._entered = 0
        self._all_entered = asyncio.Event()
        self._expected = 0

    def calls(self, breaker: Breaker, count: int, answer: Callable[[], Awaitable[str]]) -> list[asyncio.Task[str]]:
        self._expected += count

        async def held() -> str:
            self._entered += 1
            if self._entered == self._expected:
                self._all_entered.set()
            await self._open.wait()
            return await answer()

        return [asyncio.create_task(breaker.call(held, timeout_s=30)) for _ in range(count)]

    async def all_in_flight(self) -> None:
        await asyncio.wait_for(self._all_entered.wait(), 5)

    def release(self) -> None:
        self._open.set()


async def test_timeouts_with_the_providers_full_time_count_as_failures_and_open_it() -> None:
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


async def test_timeouts_cut_short_by_the_callers_deadline_never_open_it_and_the_same_with_full_time_do() -> None:
    changes: list[str] = []
    breaker = Breaker("gateway", BreakerSettings(failures_max=3, open_s=60), on_change=_recording(changes))
    for _ in range(10):  # a slow but healthy provider, asked by callers in a hurry
        with pytest.raises(TimeoutError):  # the caller still learns its call timed out
            await breaker.call(_hang, timeout_s=0.01, full_time=False)
    assert breaker.state is BreakerState.CLOSED
    assert changes == []
    assert await breaker.call(_ok, timeout_s=1) == "ok"

    for _ in range(3):  # the same calls, with all the time the provider is allowed
        with pytest.raises(TimeoutError):
            await breaker.call(_hang, timeout_s=0.01, full_time=True)
    assert breaker.state is BreakerState.OPEN
    assert changes == ["closed->open"]


async def test_a_timeout_cut_short_by_its_caller_does_not_reset_the_failure_count_either() -> None:
    breaker = Breaker("gateway", BreakerSettings(failures_max=3, open_s=60))
    await _trip(breaker, 2)
    with pytest.raises(TimeoutError):
        await breaker.call(_hang, timeout_s=0.01, full_time=False)
    await _trip(breaker, 1)  # the third failure: the cut-short call counted neither way
    assert breaker.state is BreakerState.OPEN


async def test_an_error_raised_within_a_short_deadline_still_counts() -> None:
    breaker = Breaker("gateway", BreakerSettings(failures_max=2, open_s=60))
    for _ in range(2):  # a 503 is the provider's own answer, however little time the caller had
        with pytest.raises(ProviderDown):
            await breaker.call(_fail, timeout_s=0.5, full_time=False)
    assert breaker.state is BreakerState.OPEN


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


async def test_while_open_calls_are_refused_with_the_time_left_until_a_probe_may_go() -> None:
    clock = Clock()
    breaker = Breaker("gateway", BreakerSettings(failures_max=1, open_s=10), clock=clock)
    await _trip(breaker, 1)
    clock.now_s += 4
    with pytest.raises(BreakerOpen) as refused:
        await breaker.call(_ok, timeout_s=1)
    assert refused.value.retry_after_s == pytest.approx(6)
    clock.now_s += 6
    assert await breaker.call(_ok, timeout_s=1) == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_half_open_admits_a_bounded_number_of_probes_and_a_good_one_closes_it() -> None:
    changes: list[str] = []
    clock = Clock()
    breaker = Breaker(
        "gateway", BreakerSettings(failures_max=1, open_s=10, probes_max=1), _recording(changes), clock=clock
    )
    await _trip(breaker, 1)
    clock.now_s += 10
    entered = 0
    answer = asyncio.Event()

    async def slow_ok() -> str:
        nonlocal entered
        entered += 1
        await answer.wait()
        return "ok"

    calls = [asyncio.create_task(breaker.call(slow_ok, timeout_s=5)) for _ in range(10)]
    await asyncio.sleep(0)  # every call has been admitted or refused
    answer.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert entered == 1
    assert sum(outcome == "ok" for outcome in outcomes) == 1
    assert all(isinstance(outcome, BreakerOpen) for outcome in outcomes if outcome != "ok")
    assert breaker.state is BreakerState.CLOSED
    assert changes == ["closed->open", "open->half_open", "half_open->closed"]


async def test_a_failed_probe_opens_it_again_for_a_fresh_window() -> None:
    clock = Clock()
    breaker = Breaker("gateway", BreakerSettings(failures_max=1, open_s=10), clock=clock)
    await _trip(breaker, 1)
    clock.now_s += 11
    with pytest.raises(ProviderDown):
        await breaker.call(_fail, timeout_s=1)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(BreakerOpen) as refused:
        await breaker.call(_ok, timeout_s=1)
    assert refused.value.retry_after_s == pytest.approx(10)


async def test_while_a_probe_is_out_a_refused_call_is_told_the_probes_remaining_time_limit() -> None:
    clock = Clock()
    breaker = Breaker("gateway", BreakerSettings(failures_max=1, open_s=10, probes_max=1), clock=clock)
    await _trip(breaker, 1)
    clock.now_s += 10
    answer = asyncio.Event()

    async def probe_answer() -> str:
        await answer.wait()
        return "ok"

    probe = asyncio.create_task(breaker.call(probe_answer, timeout_s=4))
    await asyncio.sleep(0)
    assert breaker.state is BreakerState.HALF_OPEN
    clock.now_s += 1.5
    with pytest.raises(BreakerOpen) as refused:
        await breaker.call(_ok, timeout_s=1)
    assert refused.value.retry_after_s == pytest.approx(2.5)  # the probe may take 4 s, 1.5 s have gone
    clock.now_s += 2
    with pytest.raises(BreakerOpen) as refused:
        await breaker.call(_ok, timeout_s=1)
    assert refused.value.retry_after_s == pytest.approx(0.5)
    answer.set()
    assert await probe == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_a_probe_cut_short_by_its_caller_or_declined_leaves_it_half_open_for_the_next_probe() -> None:
    changes: list[str] = []
    clock = Clock()
    breaker = Breaker("gateway", BreakerSettings(failures_max=1, open_s=10), _recording(changes), clock=clock)
    await _trip(breaker, 1)
    clock.now_s += 10
    with pytest.raises(TimeoutError):
        await breaker.call(_hang, timeout_s=0.01, full_time=False)
    assert breaker.state is BreakerState.HALF_OPEN
    assert await breaker.call(_decline, timeout_s=1) == "declined"
    assert breaker.state is BreakerState.HALF_OPEN
    assert await breaker.call(_ok, timeout_s=1) == "ok"  # the slot was freed each time
    assert changes == ["closed->open", "open->half_open", "half_open->closed"]


async def test_failures_of_calls_started_before_it_opened_neither_reopen_it_nor_extend_its_window() -> None:
    changes: list[str] = []
    clock = Clock()
    breaker = Breaker("gateway", BreakerSettings(failures_max=2, open_s=10), _recording(changes), clock=clock)
    early, late = Gate(), Gate()
    early_calls = early.calls(breaker, 6, _fail) + early.calls(breaker, 1, _ok)
    late_calls = late.calls(breaker, 4, _fail)
    await early.all_in_flight()
    await late.all_in_flight()

    await _trip(breaker, 2)
    assert changes == ["closed->open"]
    clock.now_s += 3
    early.release()  # stragglers of the outage it already knows of, and one slow success
    outcomes = await asyncio.gather(*early_calls, return_exceptions=True)
    assert sum(isinstance(outcome, ProviderDown) for outcome in outcomes) == 6
    assert outcomes[-1] == "ok"
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(BreakerOpen) as refused:
        await breaker.call(_ok, timeout_s=1)
    assert refused.value.retry_after_s == pytest.approx(7)  # not pushed out, not cut short

    clock.now_s += 7
    answer = asyncio.Event()

    async def probe_answer() -> str:
        await answer.wait()
        return "ok"

    probe = asyncio.create_task(breaker.call(probe_answer, timeout_s=5))
    await asyncio.sleep(0)
    late.release()  # more stragglers fail while the probe is out: it stays half-open
    await asyncio.gather(*late_calls, return_exceptions=True)
    assert breaker.state is BreakerState.HALF_OPEN
    answer.set()
    assert await probe == "ok"
    assert breaker.state is BreakerState.CLOSED
    assert changes == ["closed->open", "open->half_open", "half_open->closed"]


async def test_a_straggler_failing_after_it_closed_again_does_not_count_in_the_new_period() -> None:
    clock = Clock()
    breaker = Breaker("gateway", BreakerSettings(failures_max=2, open_s=10), clock=clock)
    gate = Gate()
    stragglers = gate.calls(breaker, 1, _fail)
    await gate.all_in_flight()
    await _trip(breaker, 2)
    clock.now_s += 10
    assert await breaker.call(_ok, timeout_s=1) == "ok"
    gate.release()
    await asyncio.gather(*stragglers, return_exceptions=True)
    await _trip(breaker, 1)  # one failure of this period: the straggler's did not add to it
    assert breaker.state is BreakerState.CLOSED


async def test_a_probe_of_a_finished_half_open_period_holds_no_slot_in_the_next() -> None:
    clock = Clock()
    breaker = Breaker("gateway", BreakerSettings(failures_max=1, open_s=10, probes_max=2), clock=clock)
    await _trip(breaker, 1)
    clock.now_s += 10
    gate = Gate()
    slow_probe = gate.calls(breaker, 1, _fail)
    await gate.all_in_flight()
    await _trip(breaker, 1)  # the other probe fails: open again, with the slow probe still out
    assert breaker.state is BreakerState.OPEN
    clock.now_s += 10
    held = Gate()
    probes = held.calls(breaker, 2, _ok)  # both slots are free in the new period
    await held.all_in_flight()
    with pytest.raises(BreakerOpen):
        await breaker.call(_ok, timeout_s=1)
    gate.release()  # the old probe fails now: it belongs to a finished period
    await asyncio.gather(*slow_probe, return_exceptions=True)
    assert breaker.state is BreakerState.HALF_OPEN
    held.release()
    assert await asyncio.gather(*probes) == ["ok", "ok"]
    assert breaker.state is BreakerState.CLOSED


async def test_a_failing_listener_changes_neither_the_state_nor_what_the_caller_is_told() -> None:
    def broken(name: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("listener down")

    breaker = Breaker("gateway", BreakerSettings(failures_max=1, open_s=60), on_change=broken)
    with pytest.raises(ProviderDown):
        await breaker.call(_fail, timeout_s=1)
    assert breaker.state is BreakerState.OPEN
