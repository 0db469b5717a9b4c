"""Circuit breakers around provider calls: a three-state machine that measures the provider, not its callers.

- CLOSED: calls go through. `failures_max` consecutive failures open it; a success resets the count.
  A `Neutral` result (a decline, a 4xx, a 429: an answer about the request, not about the provider's
  health) leaves the count where it was, so an outage served between declines is not hidden.
- OPEN: for `open_s`, every call fails before any I/O, in microseconds, with `BreakerOpen` and the time left.
- HALF_OPEN: then at most `probes_max` calls go through at once, as probes; the others are refused with
  how long the soonest probe may still take (its time limit remaining). A probe's success closes it, its
  failure opens it for a fresh `open_s`; a neutral or uncounted probe leaves it half-open for the next one.

A failure is an error raised by the call, or a timeout when the provider had its full time (`full_time`:
the call's limit was all the provider is allowed). A timeout cut short by the caller's own deadline says
nothing of the provider (a healthy provider answering in 200 ms times out every 0.1 s caller), so it counts
neither as a failure nor as a success; the caller still gets its TimeoutError (the request may have arrived).

Only calls that started in the breaker's current period count: every state change starts a new
generation, and the outcome of a call from an older one is dropped. Calls in flight when it opened
(stragglers of the outage it already knows of) neither re-open it nor push its window out, and a slow
success from before it opened does not close it.

There is one breaker per provider operation kind (`simulator.payments`, `simulator.orders`), shared by
client calls, the resolvers and the case checks: it measures the provider's health, and every call that
had the provider's full time is evidence of it, whoever made it. Background checks ask with that same full
provider timeout (the server builds their settings from BALLAST_PROVIDER_TIMEOUT_MS), so their timeouts
count like anyone's; and while the breaker is open they are refused like anyone, instead of adding load
to a provider that is down.

This replaces aiobreaker, which counts every timeout whoever cut it short, has no notion of a period (a
straggler failing while open re-opened it and restarted its window), lets every call through while
half-open, counts excluded errors as successes, and could only be bent towards these rules through its
private storage. The clock is injectable so the specs (tests/unit/test_breaker.py) need no sleeps.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: A refusal always asks for some wait: a zero delay would invite a retry refused again at once.
RETRY_AFTER_MIN_S = 0.01


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpen(Exception):
    """The call was not attempted: the provider's breaker is open (or its probes are all out)."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"the circuit breaker for {name} is open")
        self.name = name
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Neutral(Generic[T]):
    """A call's result that says nothing about the provider's health (a decline): wrap it in this."""

    value: T


@dataclass(frozen=True)
class BreakerSettings:
    #: consecutive failures that open the breaker
    failures_max: int = 5
    #: how long it stays open before probes are let through
    open_s: float = 10.0
    #: concurrent probes while half-open
    probes_max: int = 1


StateListener = Callable[[str, BreakerState, BreakerState], None]
Clock = Callable[[], float]


class Breaker:
    """One provider's (or one provider operation's) breaker."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        on_change: StateListener | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self._settings = settings
        self._on_change = on_change
        self._clock = clock
        self._state = BreakerState.CLOSED
        # bumped by every state change: an outcome counts only in the generation its call started in
        self._generation = 0
        self._failures = 0
        self._opened_at = 0.0
        # the probes out in the current half-open period, each with the time its limit runs out
        self._probes: dict[object, float] = {}

    @property
    def state(self) -> BreakerState:
        """The state as last changed; an open breaker whose time is up turns half-open on the next call."""
        return self._state

    def refuses_for_s(self) -> float:
        """How long a call now would be refused without being tried (0 when one would be let through):
        what a background worker waits before it claims work that needs the provider."""
        now = self._clock()
        if self._state is BreakerState.OPEN:
            return max(self._opened_at + self._settings.open_s - now, 0.0)
        if self._state is BreakerState.HALF_OPEN and len(self._probes) >= self._settings.probes_max:
            return max(min(self._probes.values()) - now, 0.0)
        return 0.0

    async def call(
        self, operation: Callable[[], Awaitable[T | Neutral[T]]], timeout_s: float, *, full_time: bool = True
    ) -> T:
        """Run `operation` within `timeout_s` under the breaker.

        `full_time` says whether `timeout_s` is all the time the provider is allowed; only then does a
        timeout count against it. Raises BreakerOpen without calling `operation` while open (or while
        the probes are all out); otherwise returns its value or raises its error (a TimeoutError when it
        ran out of time), having counted the outcome if its call started in the current period.
        """
        probe = self._admit(timeout_s)
        generation = self._generation
        try:
            async with asyncio.timeout(timeout_s) as limit:
                result = await operation()
        except TimeoutError:
            if full_time or not limit.expired():
                self._failed(generation)
            raise
        except Exception:
            self._failed(generation)
            raise
        finally:
            if probe is not None:
                self._probes.pop(probe, None)
        if isinstance(result, Neutral):
            return result.value
        self._succeeded(generation)
        return result

    def _admit(self, timeout_s: float) -> object | None:
        """Let a call through (a probe's token when half-open), or raise BreakerOpen before any I/O."""
        if self._state is BreakerState.CLOSED:
            return None
        now = self._clock()
        if self._state is BreakerState.OPEN:
            left_s = self._opened_at + self._settings.open_s - now
            if left_s > 0:
                raise BreakerOpen(self.name, max(left_s, RETRY_AFTER_MIN_S))
            self._change(BreakerState.HALF_OPEN)
        if len(self._probes) >= self._settings.probes_max:
            raise BreakerOpen(self.name, max(min(self._probes.values()) - now, RETRY_AFTER_MIN_S))
        probe = object()
        self._probes[probe] = now + timeout_s
        return probe

    def _failed(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._settings.failures_max:
            self._opened_at = self._clock()
            self._change(BreakerState.OPEN)

    def _succeeded(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._failures = 0
        if self._state is BreakerState.HALF_OPEN:
            self._change(BreakerState.CLOSED)

    def _change(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        self._generation += 1
        self._failures = 0
        self._probes.clear()  # a probe still out belongs to a finished period: it holds no slot in the next
        log.warning("provider.breaker_state_changed", breaker=self.name, old=old.value, new=new.value)
        if self._on_change is None:
            return
        try:
            self._on_change(self.name, old, new)
        except Exception as error:  # what the caller is told must not depend on a listener
            log.error("provider.breaker_listener_failed", breaker=self.name, error=repr(error)[:300])
